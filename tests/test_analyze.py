"""``mergebench analyze``: numbers against an independent numpy computation, clean CLI errors, and the
report rendered in a real headless browser (Debian's chromium through selenium).

The models are tiny Llama-named safetensors checkpoints written here (no transformers: fast), built so
every definition is exercised: exact zeros in task vectors (entries with no sign), magnitude ties (the
trim's tie rule), a bfloat16 finetune of a float32 base, a sharded base, an integer buffer (skipped).
The numpy reference reads the files with safetensors and shares no code with mergebench.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.browser import assert_renders, chromium_driver
from tests.conftest import assert_clean_failure, run_cli

ROOT = Path(__file__).resolve().parents[1]
DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
LAYERS = 2
CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": LAYERS}
SHAPES = {"model.embed_tokens.weight": (12, 4)}
for _layer in range(LAYERS):
    SHAPES[f"model.layers.{_layer}.self_attn.q_proj.weight"] = (4, 4)
    SHAPES[f"model.layers.{_layer}.mlp.up_proj.weight"] = (6, 4)
    SHAPES[f"model.layers.{_layer}.input_layernorm.weight"] = (4,)
SHAPES["model.norm.weight"] = (4,)
SHAPES["lm_head.weight"] = (12, 4)
BUFFER = "model.layers.0.self_attn.position_ids"  # integer: not analyzed


# ---------------------------------------------------------------------------------------------------
# tiny models


def write_model(path: Path, tensors: dict[str, torch.Tensor], shards: int = 1) -> Path:
    """A model directory: model.safetensors, or ``shards`` files with an index; and config.json."""
    path.mkdir(parents=True)
    names = list(tensors)
    if shards == 1:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    else:
        weight_map = {}
        for index in range(shards):
            file_name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
            part = names[index::shards]
            save_file({k: tensors[k].contiguous() for k in part}, str(path / file_name))
            weight_map.update(dict.fromkeys(part, file_name))
        index_data = {"metadata": {}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index_data))
    (path / "config.json").write_text(json.dumps(CONFIG))
    return path


def finetune(base: dict, seed: int, shared: dict, mix: float, dtype=torch.float32) -> dict:
    """base + mix·shared + own noise, with about a third of the entries left exactly unchanged."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in base.items():
        if not value.is_floating_point():
            out[name] = value.clone()
            continue
        delta = mix * shared[name] + 0.02 * torch.randn(value.shape, generator=generator)
        delta[torch.rand(value.shape, generator=generator) < 0.3] = 0.0
        if name.endswith("layers.0.input_layernorm.weight"):
            delta = torch.tensor([0.25, -0.25, 0.25, 0.25]) * (seed % 2 * 2 - 1)  # four tied magnitudes
        out[name] = (value + delta).to(dtype)
    return out


@dataclass
class Models:
    base: Path
    ft1: Path
    ft2: Path
    ft3: Path
    root: Path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    root = tmp_path_factory.mktemp("analyze_models")
    generator = torch.Generator().manual_seed(0)
    base = {name: torch.randn(shape, generator=generator) * 0.5 for name, shape in SHAPES.items()}
    base[BUFFER] = torch.arange(8)
    shared = {name: 0.03 * torch.randn(shape, generator=generator) for name, shape in SHAPES.items()}
    return Models(
        write_model(root / "base", base, shards=2),
        write_model(root / "ft1", finetune(base, 1, shared, 1.0)),
        write_model(root / "ft2", finetune(base, 2, shared, 0.7)),
        write_model(root / "ft3", finetune(base, 3, shared, -0.4, torch.bfloat16)),
        root,
    )


# ---------------------------------------------------------------------------------------------------
# independent numpy reference


def load_any(path: Path) -> dict[str, np.ndarray]:
    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        for name, value in load_file(str(file)).items():
            if value.is_floating_point():
                tensors[name] = value.double().numpy().ravel()
    return tensors


def np_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / math.sqrt((a @ a) * (b @ b)))


def np_pair_conflict(a: np.ndarray, b: np.ndarray) -> float:
    both = (a != 0) & (b != 0)
    return float(np.mean(np.sign(a[both]) != np.sign(b[both])))


def np_all_conflict(task: list[np.ndarray]) -> float:
    stacked = np.stack(task)
    several = (stacked != 0).sum(0) >= 2
    mixed = (stacked > 0).any(0) & (stacked < 0).any(0)
    return float(mixed[several].mean())


def np_kept(task: np.ndarray, density: float) -> float:
    """Energy of the k largest |τ| entries, k = max(1, ⌊density·n⌋)."""
    k = max(1, math.floor(density * task.size + 1e-9))
    return float(np.sum(np.sort(task**2)[::-1][:k]))


def np_angle(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, np_cosine(a, b)))))


def expected_group(names: list[str], base: dict, fts: list[dict]) -> dict:
    """The reference numbers of a group of tensors: concatenated for norms, cosines and conflicts;
    the trim per tensor, energies summed (the definition: tensors weigh by their energy)."""
    cat = lambda model: np.concatenate([model[n] for n in names])  # noqa: E731
    b = cat(base)
    weights = [cat(ft) for ft in fts]
    task = [w - b for w in weights]
    pairs = list(combinations(range(len(fts)), 2))
    kept = []
    for ft in fts:
        energy = sum(float(np.sum((ft[n] - base[n]) ** 2)) for n in names)
        kept.append([sum(np_kept(ft[n] - base[n], d) for n in names) / energy for d in DENSITIES])
    return {
        "base_norm": float(np.linalg.norm(b)),
        "weight_norm": [float(np.linalg.norm(w)) for w in weights],
        "weight_cosine": [np_cosine(weights[i], weights[j]) for i, j in pairs],
        "task_norm": [float(np.linalg.norm(t)) for t in task],
        "task_relative_norm": [float(np.linalg.norm(t) / np.linalg.norm(b)) for t in task],
        "task_cosine": [np_cosine(task[i], task[j]) for i, j in pairs],
        "conflict_pairs": [np_pair_conflict(task[i], task[j]) for i, j in pairs],
        "conflict_all": np_all_conflict(task),
        "energy_kept": kept,
        "numel": b.size,
    }


def assert_group(actual: dict, expected: dict, where: str) -> None:
    close = lambda a, e, rel=1e-9: np.testing.assert_allclose(a, e, rtol=rel, atol=1e-12, err_msg=where)  # noqa: E731
    assert actual["numel"] == expected["numel"], where
    for key in (
        "base_norm",
        "weight_norm",
        "weight_cosine",
        "task_norm",
        "task_relative_norm",
        "task_cosine",
    ):
        close(actual[key], expected[key])
    close(actual["sign_conflict"]["pairs"], expected["conflict_pairs"], 0)
    close(actual["sign_conflict"]["all"], expected["conflict_all"], 0)
    close(actual["energy_kept"], expected["energy_kept"], 1e-6)  # magnitudes are ranked in float32


# ---------------------------------------------------------------------------------------------------
# numbers


def test_task_vector_numbers_match_numpy_per_tensor_layer_module_and_overall(models):
    from mergebench.analyze import analyze

    result = analyze([str(models.ft1), str(models.ft2), str(models.ft3)], str(models.base), DENSITIES)
    base = load_any(models.base)
    fts = [load_any(p) for p in (models.ft1, models.ft2, models.ft3)]
    assert result["task_vectors"] and result["labels"] == ["ft1", "ft2", "ft3"]
    assert [p["label"] for p in result["pairs"]] == ["ft1 ~ ft2", "ft1 ~ ft3", "ft2 ~ ft3"]
    assert result["skipped"] == [{"name": BUFFER, "reason": "not floating point (int64)"}]

    assert [t["name"] for t in result["tensors"]][:1] == ["model.embed_tokens.weight"]
    for tensor in result["tensors"]:
        assert_group(tensor, expected_group([tensor["name"]], base, fts), tensor["name"])

    groups = {"embed": ["model.embed_tokens.weight"], "head": ["model.norm.weight", "lm_head.weight"]}
    for layer in range(LAYERS):
        groups[f"layer {layer}"] = [n for n in SHAPES if f"layers.{layer}." in n]
    assert [g["group"] for g in result["layers"]] == ["embed", "layer 0", "layer 1", "head"]
    for group in result["layers"]:
        assert_group(group, expected_group(groups[group["group"]], base, fts), group["group"])
        assert group["tensors"] == len(groups[group["group"]])

    modules = {m["module"]: m for m in result["modules"]}
    assert set(modules) == {
        "model.embed_tokens.weight",
        "self_attn.q_proj.weight",
        "mlp.up_proj.weight",
        "input_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    }
    for module in ("self_attn.q_proj.weight", "input_layernorm.weight"):
        names = [f"model.layers.{layer}.{module}" for layer in range(LAYERS)]
        assert_group(modules[module], expected_group(names, base, fts), module)

    assert_group(result["overall"], expected_group(list(SHAPES), base, fts), "overall")
    assert "slerp_angle_deg" not in result["overall"]  # three models: no SLERP


def test_two_models_slerp_angles_and_no_base_mode(models):
    from mergebench.analyze import analyze

    base = load_any(models.base)
    ft1, ft2 = load_any(models.ft1), load_any(models.ft2)
    with_base = analyze([str(models.ft1), str(models.ft2)], str(models.base), DENSITIES)
    without = analyze([str(models.ft1), str(models.ft2)])
    assert not without["task_vectors"] and without["densities"] == []
    for tensor in without["tensors"]:
        assert set(tensor) >= {"weight_norm", "weight_cosine", "slerp_angle_deg"}
        assert not {"task_norm", "task_cosine", "sign_conflict", "energy_kept"} & set(tensor)
    by_name = {tensor["name"]: tensor for tensor in without["tensors"]}
    assert set(by_name) == {tensor["name"] for tensor in with_base["tensors"]}
    for a in with_base["tensors"]:
        name = a["name"]
        b = by_name[name]
        angle = np_angle(ft1[name], ft2[name])
        assert a["slerp_angle_deg"] == pytest.approx(angle, rel=1e-9, abs=1e-9)
        assert b["slerp_angle_deg"] == pytest.approx(angle, rel=1e-9, abs=1e-9)
        task_angle = np_angle(ft1[name] - base[name], ft2[name] - base[name])
        assert a["task_angle_deg"] == pytest.approx(task_angle, rel=1e-9)
        assert b["weight_cosine"][0] == pytest.approx(np_cosine(ft1[name], ft2[name]), rel=1e-12)
    for group in without["layers"]:
        names = [t["name"] for t in without["tensors"] if t["group"] == group["group"]]
        cat = lambda model: np.concatenate([model[n] for n in names])  # noqa: E731, B023
        assert group["slerp_angle_deg"] == pytest.approx(np_angle(cat(ft1), cat(ft2)), rel=1e-9)
        assert group["weight_norm"][1] == pytest.approx(float(np.linalg.norm(cat(ft2))), rel=1e-12)


def test_sign_conflict_and_trim_definitions_on_hand_computed_vectors():
    """The documented definitions, on vectors small enough to count by hand."""
    from mergebench.analyze import summarize, tensor_sums

    base = torch.zeros(6)
    t1 = torch.tensor([1.0, -1.0, 0.0, 2.0, 0.0, 3.0])
    t2 = torch.tensor([1.0, 1.0, 3.0, 0.0, 0.0, -1.0])
    t3 = torch.tensor([-1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    sums = tensor_sums([base, t1, t2, t3], True, (0.5, 1.0))
    out = summarize(sums, [(0, 1), (0, 2), (1, 2)], has_base=True)
    # t1~t2: both non-zero at 0, 1, 5; signs differ at 1, 5 → 2/3. t1~t3: at 0, 1 → both differ → 1.
    # t2~t3: at 0, 1, 2 → differ at 0 → 1/3. All: ≥2 non-zero at 0, 1, 2, 5; mixed at 0, 1, 5 → 3/4.
    assert out["sign_conflict"]["pairs"] == pytest.approx([2 / 3, 1.0, 1 / 3])
    assert out["sign_conflict"]["all"] == pytest.approx(3 / 4)
    assert out["sign_conflict"]["all_entries"] == 4
    # t1 at density 0.5 keeps 3 of 6 entries: 3, 2 and one of the tied 1s → (9+4+1)/15.
    assert out["energy_kept"][0] == pytest.approx([14 / 15, 1.0])
    # t3: |t3| = 1, 1, 1, 0, 0, 0 → 3 tied entries kept of 3 → everything.
    assert out["energy_kept"][2] == pytest.approx([1.0, 1.0])


def test_reads_one_tensor_of_every_model_at_a_time(models, monkeypatch):
    """Streaming: the reads of each tensor name are consecutive, once per model, never a whole model."""
    from mergebench.analyze import analyze
    from mergebench.io.checkpoint import Checkpoint

    reads: list[str] = []
    original = Checkpoint.read

    def recording(self, name, *args):
        reads.append(name)
        return original(self, name, *args)

    monkeypatch.setattr(Checkpoint, "read", recording)
    analyze([str(models.ft1), str(models.ft2)], str(models.base))
    runs = [reads[i : i + 3] for i in range(0, len(reads), 3)]
    assert all(len(set(run)) == 1 for run in runs), reads
    assert sorted(run[0] for run in runs) == sorted(SHAPES)


# ---------------------------------------------------------------------------------------------------
# command line


@pytest.fixture(scope="module")
def reports(models, tmp_path_factory) -> dict[str, Path]:
    """Report directories of a 3-model run with a base and a 2-model run without one, by the CLI."""
    out = tmp_path_factory.mktemp("analyze_out")
    three = run_cli(
        "analyze", "--base", models.base, models.ft1, models.ft2, models.ft3, "--out", out / "three"
    )
    assert three.exit_code == 0, three.output
    two = run_cli("analyze", models.ft1, models.ft3, "--out", out / "two", "--no-progress")
    assert two.exit_code == 0, two.output
    return {
        "three": out / "three",
        "two": out / "two",
        "three_output": three.output,
        "two_output": two.output,
    }


def test_cli_writes_json_report_and_summary(reports):
    def no_nan(value):
        raise AssertionError(f"{value} in analysis.json")

    analysis = json.loads((reports["three"] / "analysis.json").read_text(), parse_constant=no_nan)
    assert analysis["schema"] == "mergebench.analyze/1" and analysis["densities"] == list(DENSITIES)
    assert len(analysis["tensors"]) == len(SHAPES)
    lines = reports["three_output"].splitlines()
    assert any(line.startswith("analyzed 3 models against base base: 9 tensors, 1 skipped") for line in lines)
    for fragment in (
        "cosine of task vectors: ft1 ~ ft2 ",
        "sign conflicts (where ≥2 task vectors are non-zero): ",
        "all models ",
        "energy kept by top-k at density 0.2: ft1 ",
        "energy kept by top-k at density 0.5: ",
        "most similar layers (mean over pairs): ",
        "wrote ",
    ):
        assert any(fragment in line for line in lines), (fragment, lines)
    two = reports["two_output"]
    assert "no --base: no task vectors" in two and "SLERP angle: weights " in two
    assert "analyze:" not in two  # --no-progress

    for directory in (reports["three"], reports["two"]):
        page = (directory / "report.html").read_text()
        assert "<script" not in page.lower()
        sources = [part.split('"', 1)[0] for part in page.split('src="')[1:]]
        assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
        assert "http://" not in page and "https://" not in page
        assert len(page) < 1_000_000


@pytest.mark.parametrize(
    ("args", "fragments", "code"),
    [
        (["{ft1}"], ["without --base", "at least two models", "{ft1}"], 2),
        ([], ["at least one MODEL"], 2),
        (["--base", "{base}", "{root}/missing"], ["missing", "not found"], 3),
        (["--base", "{root}/nobase", "{ft1}"], ["nobase"], 3),
        (
            ["--base", "{base}", "{ft1}", "{shape}"],
            ["model.layers.1.self_attn.q_proj.weight", "shape", "[4, 5]"],
            4,
        ),
        (["--base", "{base}", "{ft1}", "{nohead}"], ["nohead", "no tensor 'lm_head.weight'"], 4),
        (["--base", "{base}", "{ft1}", "--densities", "0.2,abc"], ["--densities", "'abc'"], 2),
        (["--base", "{base}", "{ft1}", "--densities", "0.2,1.5"], ["--densities", "1.5", "(0, 1]"], 2),
        (["--base", "{base}", "{ft1}", "--out", "{file}"], ["--out", "not a directory"], 5),
    ],
)
def test_cli_errors_are_one_line(models, args, fragments, code):
    root = models.root
    if not (root / "shape").exists():
        tensors = load_file(str(models.ft1 / "model.safetensors"))
        write_model(root / "shape", tensors | {"model.layers.1.self_attn.q_proj.weight": torch.zeros(4, 5)})
        write_model(root / "nohead", {k: v for k, v in tensors.items() if k != "lm_head.weight"})
        (root / "a-file").write_text("x")
    names = {"base": models.base, "ft1": models.ft1, "root": root, "shape": root / "shape"}
    names |= {"nohead": root / "nohead", "file": root / "a-file"}
    result = run_cli("analyze", "--no-progress", *(arg.format(**names) for arg in args))
    assert_clean_failure(result, *(fragment.format(**names) for fragment in fragments))
    assert result.exit_code == code
    assert len([line for line in result.output.splitlines() if line.startswith("error: ")]) == 1


def test_missing_matplotlib_is_a_one_line_error_before_any_work(models, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib…` raise ImportError
    monkeypatch.delitem(sys.modules, "mergebench.report_html", raising=False)
    result = run_cli("analyze", "--base", models.base, models.ft1, "--out", models.root / "never")
    assert_clean_failure(result, "needs matplotlib", "pip install 'mergebench[workbench]'")
    assert not (models.root / "never").exists()


def test_command_module_imports_no_torch_or_matplotlib():
    """``mergebench --help`` must not pay for torch/matplotlib through the analyze command."""
    tree = ast.parse((ROOT / "mergebench" / "analyze_cli.py").read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)]
    heavy = ("torch", "matplotlib", "numpy", "mergebench.analyze", "mergebench.report_html")
    assert not [name for name in names if name in heavy or name.startswith(("torch.", "matplotlib."))]


# ---------------------------------------------------------------------------------------------------
# the report in a real browser


def test_report_renders_in_headless_chromium(reports, tmp_path):
    driver = chromium_driver(tmp_path / "chromium-profile")
    try:
        for name, expected_images in (("three", 4), ("two", 3)):
            assert_renders(driver, reports[name] / "report.html", "mergebench analyze", expected_images)
    finally:
        driver.quit()
