"""End to end through the CLI on real sharded tiny Llama checkpoints: the merged model that
transformers loads must equal a model merged in memory by the independent reference."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mergebench import __version__
from mergebench.methods.sparsify import keep_mask
from tests import reference as ref
from tests.conftest import assert_clean_failure, run_cli, save_model, tiny_llama_config, write_config

INPUT_IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 64, 80]])


def load_state(model_dir: Path) -> dict[str, np.ndarray]:
    state = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        state.update({k: v.double().numpy() for k, v in load_file(shard).items()})
    return state


def logits_of_dir(model_dir: Path) -> torch.Tensor:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


def logits_of_state(state: dict[str, np.ndarray], config_dir: Path) -> torch.Tensor:
    import transformers

    config = transformers.AutoConfig.from_pretrained(config_dir)
    model = transformers.LlamaForCausalLM(config).float()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)).float() for k, v in state.items()}, strict=True)
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


def position(name: str, num_layers: int = 3) -> float:
    match = re.search(r"\.layers\.(\d+)\.", name)
    return int(match.group(1)) / (num_layers - 1) if match else 0.0


def gradient(points, name):
    return float(np.interp(position(name), np.linspace(0, 1, len(points)), points))


def merge(tmp_path: Path, data: dict, *extra: str, out_name: str = "out") -> Path:
    config = write_config(tmp_path / "merge.yaml", data)
    out = tmp_path / out_name
    result = run_cli("merge", config, out, "--no-progress", "--max-shard-size", "20KB", *extra)
    assert result.exit_code == 0, result.output
    return out


def reference_merge(family, method: str) -> tuple[dict, dict]:
    """(config, in-memory reference state) for each method, with gradients and filters in play."""
    b, f1, f2, f3 = (load_state(p) for p in (family.base, family.ft1, family.ft2, family.ft3))
    paths = dict(base=str(family.base), ft1=str(family.ft1), ft2=str(family.ft2), ft3=str(family.ft3))
    out: dict[str, np.ndarray] = {}
    if method == "linear":
        config = {
            "merge_method": "linear",
            "models": [
                {"model": paths["ft1"], "parameters": {"weight": 0.5}},
                {"model": paths["ft2"], "parameters": {"weight": [0.2, 0.8]}},
                {"model": paths["ft3"], "parameters": {"weight": 0.3}},
            ],
            "dtype": "float32",
        }
        for k in b:
            out[k] = ref.linear([f1[k], f2[k], f3[k]], [0.5, gradient([0.2, 0.8], k), 0.3])
    elif method == "task_arithmetic":
        config = {
            "merge_method": "task_arithmetic",
            "base_model": paths["base"],
            "models": [
                {"model": paths["ft1"], "parameters": {"weight": 1.0}},
                {"model": paths["ft2"], "parameters": {"weight": -0.5}},
            ],
            "parameters": {"lambda": 0.8},
            "dtype": "float32",
        }
        for k in b:
            out[k] = ref.task_arithmetic(b[k], [f1[k], f2[k]], [1.0, -0.5], lam=0.8)
    elif method == "ties":
        density2 = [{"filter": "mlp", "value": 0.3}, {"value": 0.7}]
        config = {
            "merge_method": "ties",
            "base_model": paths["base"],
            "models": [
                {"model": paths["ft1"], "parameters": {"weight": 1.0, "density": 0.5}},
                {"model": paths["ft2"], "parameters": {"weight": 0.5, "density": density2}},
                {"model": paths["ft3"], "parameters": {"weight": -0.2}},
            ],
            "parameters": {"density": 0.9, "lambda": 1.1},
            "dtype": "float32",
        }
        for k in b:
            d2 = 0.3 if "mlp" in k else 0.7
            out[k] = ref.ties(b[k], [f1[k], f2[k], f3[k]], [1.0, 0.5, -0.2], [0.5, d2, 0.9], lam=1.1)
    elif method in ("dare_linear", "dare_ties"):
        config = {
            "merge_method": method,
            "base_model": paths["base"],
            "models": [
                {"model": paths["ft1"], "parameters": {"weight": 0.6, "density": 0.4}},
                {"model": paths["ft2"], "parameters": {"weight": 0.8, "density": 0.7}},
            ],
            "dtype": "float32",
            "seed": 7,
        }
        reference = ref.dare_linear if method == "dare_linear" else ref.dare_ties
        for k in b:
            # The documented seeding contract: keep-mask i of tensor k is hashed from (seed, k, i, position).
            masks = [
                keep_mask(b[k].size, d, (7, k), i).reshape(b[k].shape).numpy()
                for i, d in enumerate((0.4, 0.7))
            ]
            out[k] = reference(b[k], [f1[k], f2[k]], [0.6, 0.8], [0.4, 0.7], masks)
    elif method == "slerp":
        t = [{"filter": "self_attn", "value": [0.0, 0.5, 1.0]}, {"value": 0.3}]
        config = {
            "merge_method": "slerp",
            "base_model": paths["ft1"],
            "models": [{"model": paths["ft1"]}, {"model": paths["ft2"]}],
            "parameters": {"t": t},
            "dtype": "float32",
        }
        for k in b:
            tk = gradient([0.0, 0.5, 1.0], k) if "self_attn" in k else 0.3
            out[k] = ref.slerp(f1[k], f2[k], tk)
    else:
        raise AssertionError(method)
    return config, out


METHODS = ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp"]


@pytest.mark.parametrize("method", METHODS)
def test_merge_equals_reference(llama_family, tmp_path, method):
    config, expected = reference_merge(llama_family, method)
    out = merge(tmp_path, config)
    merged = load_state(out)
    assert merged.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(merged[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    torch.testing.assert_close(
        logits_of_dir(out), logits_of_state(expected, llama_family.base), rtol=1e-4, atol=1e-5
    )


def test_output_directory_is_a_complete_hf_model(llama_family, tmp_path):
    config, _ = reference_merge(llama_family, "ties")
    out = merge(tmp_path, {**config, "dtype": "bfloat16"})
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and {p.name for p in shards} == set(index["weight_map"].values())
    tensors = {k: v for p in shards for k, v in load_file(p).items()}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (out / "generation_config.json").is_file()
    card = (out / "README.md").read_text()
    assert (tmp_path / "merge.yaml").read_text().strip() in card
    assert __version__ in card
    assert not list(tmp_path.glob(".out.partial-*"))


def test_subtracting_a_behaviour_is_exact(llama_family, tmp_path):
    config = {
        "merge_method": "task_arithmetic",
        "base_model": str(llama_family.base),
        "models": [
            {"model": str(llama_family.ft1), "parameters": {"weight": 1.0}},
            {"model": str(llama_family.ft3), "parameters": {"weight": -1.0}},
        ],
        "dtype": "float32",
    }
    out = load_state(merge(tmp_path, config))
    b, f1, f3 = (load_state(p) for p in (llama_family.base, llama_family.ft1, llama_family.ft3))
    for k in b:  # θ_base + τ_1 − τ_3
        np.testing.assert_allclose(out[k], b[k] + (f1[k] - b[k]) - (f3[k] - b[k]), atol=1e-6)


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_reruns_are_byte_identical_and_seed_changes_dare(llama_family, tmp_path):
    config, _ = reference_merge(llama_family, "dare_ties")
    first = digest(merge(tmp_path, config, out_name="a"))
    second = digest(merge(tmp_path, config, out_name="b"))
    assert first == second
    reseeded = digest(merge(tmp_path, config, "--seed", "8", out_name="c"))
    shard_names = [n for n in first if n.endswith(".safetensors")]
    assert any(first[n] != reseeded[n] for n in shard_names)


# ---- bad input: one-line error naming the culprit, non-zero exit, nothing written ----------------


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def drop_tensor(model_dir: Path, name: str) -> None:
    index_path = model_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = model_dir / index["weight_map"].pop(name)
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    index_path.write_text(json.dumps(index))


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


def ta_config(base: Path, *models: Path, **extra) -> dict:
    return {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": [{"model": str(m), "parameters": {"weight": 0.5}} for m in models],
        **extra,
    }


def fails(tmp_path: Path, config: dict, *fragments: str, extra=()) -> str:
    result = run_cli(
        "merge", write_config(tmp_path / "merge.yaml", config), tmp_path / "out", "--no-progress", *extra
    )
    line = assert_clean_failure(result, *fragments)
    assert_nothing_written(tmp_path)
    return line


def test_missing_model_path(llama_family, tmp_path):
    fails(tmp_path, ta_config(llama_family.base, tmp_path / "nope"), str(tmp_path / "nope"), "not found")


def test_tensor_missing_in_one_model(llama_family, tmp_path):
    broken = copy_model(llama_family.ft1, tmp_path / "ft1")
    drop_tensor(broken, "model.layers.1.mlp.up_proj.weight")
    fails(tmp_path, ta_config(llama_family.base, broken), "model.layers.1.mlp.up_proj.weight", str(broken))


def test_shape_mismatch_from_different_vocab(llama_family, tmp_path):
    import transformers

    other = save_model(transformers.LlamaForCausalLM(tiny_llama_config(vocab_size=97)), tmp_path / "vocab97")
    line = fails(tmp_path, ta_config(llama_family.base, other), "[97, 32]", "[96, 32]", "vocabulary")
    assert str(other) in line


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"merge_method": "task_arithmatic"}, "unknown method 'task_arithmatic'"),
        ({"parameters": {"lamda": 1.0}}, "parameters.lamda: unknown parameter"),
        ({"merge_method": "ties", "parameters": {"density": 1.2}}, "parameters.density: must be in (0, 1]"),
    ],
)
def test_config_mistakes(llama_family, tmp_path, change, fragment):
    fails(tmp_path, {**ta_config(llama_family.base, llama_family.ft1), **change}, fragment)


def test_truncated_shard(llama_family, tmp_path):
    broken = copy_model(llama_family.ft1, tmp_path / "ft1")
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    fails(tmp_path, ta_config(llama_family.base, broken), shard.name, "truncated")


def test_corrupt_shard_header(llama_family, tmp_path):
    broken = copy_model(llama_family.ft1, tmp_path / "ft1")
    shard = sorted(broken.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[8:12] = b"\xff\xfe{["
    shard.write_bytes(bytes(data))
    fails(tmp_path, ta_config(llama_family.base, broken), shard.name, "corrupt")


def test_index_pointing_outside_the_model_directory(llama_family, tmp_path):
    broken = copy_model(llama_family.ft1, tmp_path / "ft1")
    index_path = broken / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../ft2/" + index["weight_map"][name]
    index_path.write_text(json.dumps(index))
    fails(tmp_path, ta_config(llama_family.base, broken), "model.safetensors.index.json", "outside")


def test_pickled_weights_need_explicit_permission(llama_family, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(llama_family.ft1 / "config.json", pickled)
    state = {k: torch.from_numpy(v).float() for k, v in load_state(llama_family.ft1).items()}
    torch.save(state, pickled / "pytorch_model.bin")  # the legacy format transformers wrote
    fails(tmp_path, ta_config(llama_family.base, pickled), "pytorch_model.bin", "--allow-pickle")
    out = merge(tmp_path, ta_config(llama_family.base, pickled, dtype="float32"), "--allow-pickle")
    b, f1 = load_state(llama_family.base), load_state(llama_family.ft1)
    merged = load_state(out)
    for k in b:
        np.testing.assert_allclose(merged[k], b[k] + 0.5 * (f1[k] - b[k]), atol=1e-6)


def test_output_that_exists_or_overlaps_an_input_is_refused(llama_family, tmp_path):
    config = write_config(tmp_path / "merge.yaml", ta_config(llama_family.base, llama_family.ft1))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("precious")
    assert_clean_failure(run_cli("merge", config, taken, "--no-progress"), "not empty", "--overwrite")
    assert (taken / "keep.txt").read_text() == "precious"
    inside = llama_family.base / "merged"
    assert_clean_failure(run_cli("merge", config, inside, "--no-progress"), "inside input model")
    assert_clean_failure(
        run_cli("merge", config, llama_family.base, "--no-progress", "--overwrite"), "inside input model"
    )
    assert not inside.exists()
    result = run_cli("merge", config, taken, "--no-progress", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (taken / "keep.txt").exists() and (taken / "config.json").is_file()


def test_validate_reports_every_problem_without_reading_data(llama_family, tmp_path):
    broken = copy_model(llama_family.ft1, tmp_path / "ft1")
    drop_tensor(broken, "model.layers.0.self_attn.q_proj.weight")
    drop_tensor(broken, "model.norm.weight")
    result = run_cli("validate", write_config(tmp_path / "merge.yaml", ta_config(llama_family.base, broken)))
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "q_proj" in errors[0] and "model.norm.weight" in errors[1]
    ok = run_cli(
        "validate", write_config(tmp_path / "merge.yaml", ta_config(llama_family.base, llama_family.ft1))
    )
    assert ok.exit_code == 0 and ok.output.startswith("ok: 30 output tensors")


def test_hub_id_resolves_from_local_cache_offline(llama_family, tmp_path):
    """A hub id is looked up in the Hugging Face cache layout (as snapshot_download would leave it)."""
    repo = tmp_path / "hub" / "models--acme--tiny-base"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(llama_family.base, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    config = write_config(
        tmp_path / "merge.yaml", ta_config("acme/tiny-base", llama_family.ft1, dtype="float32")
    )
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    command = [
        sys.executable,
        "-m",
        "mergebench",
        "merge",
        str(config),
        str(tmp_path / "out"),
        "--no-progress",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    merged, b, f1 = load_state(tmp_path / "out"), load_state(llama_family.base), load_state(llama_family.ft1)
    np.testing.assert_allclose(
        merged["model.norm.weight"],
        b["model.norm.weight"] + 0.5 * (f1["model.norm.weight"] - b["model.norm.weight"]),
        atol=1e-6,
    )
    missing = write_config(tmp_path / "merge.yaml", ta_config("acme/not-cached", llama_family.ft1))
    done = subprocess.run(
        command[:4] + [str(missing), str(tmp_path / "out2"), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "acme/not-cached" in done.stderr.strip().splitlines()[-1]


def test_inspect_summarises_headers(llama_family):
    result = run_cli("inspect", llama_family.base, "--tensors")
    assert result.exit_code == 0, result.output
    first, layers, dtypes = result.output.splitlines()[:3]
    assert "LlamaForCausalLM, 30 tensors" in first
    params = sum(v.size for v in load_state(llama_family.base).values())
    assert f"{params / 1e6:.1f}M parameters" in first
    assert "layers: 3" in layers and "float32 ×30" in dtypes
    assert "model.layers.2.mlp.down_proj.weight  [32, 64]  float32" in result.output
    assert_clean_failure(run_cli("inspect", llama_family.base / "nope"), "not found")
