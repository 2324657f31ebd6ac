"""Byte-level regression pins: sha256 of every merge output file, produced by the code at pin time.

Why: the merge core (planner, executor, writer, LoRA folding) gets refactored, and a refactor must not
change a single output byte. The reference tests (test_merge_e2e.py, test_lora.py, …) check numbers
within a tolerance; these pins catch what tolerances let through (a changed rounding order, a bf16 cast
in another place, a different TIES tie-break, shard layout, header or index formatting).

Inputs are written directly as safetensors from seeded ``torch.randn`` — no transformers init, whose
random init changes between versions (CI installs transformers unpinned). Merges run through the CLI
exactly as users run them. README.md is not pinned (it holds the mergebench version and input paths).

Re-pinning: when an output change is deliberate (e.g. a TIES numerics fix), regenerate with
``python tests/test_regression_pins.py --print`` (with the new code on PYTHONPATH), paste both dicts
over the ones below, run ``ruff format``, and say in the commit message *why* the bytes changed and
which cases moved. A re-pin without a reason defeats the point of the pins.

Pinned from commit a13b0bb with torch 2.13.0+cpu on x86-64; identical with 1 or 2 torch threads.
Caveat: reductions (TIES thresholds, SLERP angles, LoRA B·A products) may round differently on
another CPU kind or torch version; a failure there names the tensors, so compare before re-pinning.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file

VOCAB, HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 96, 32, 64, 3, 4, 2
HEAD_DIM = HIDDEN // HEADS
SHARD_SIZE = "20KB"  # small enough that bf16 (~68 KB) and float32 (~136 KB) outputs are multi-shard


# ---------------------------------------------------------------------------------------------------
# deterministic inputs


def llama_shapes() -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a tiny Llama, in the order transformers saves them."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        prefix = f"model.layers.{i}."
        shapes[prefix + "input_layernorm.weight"] = (HIDDEN,)
        shapes[prefix + "self_attn.q_proj.weight"] = (HEADS * HEAD_DIM, HIDDEN)
        shapes[prefix + "self_attn.k_proj.weight"] = (KV_HEADS * HEAD_DIM, HIDDEN)
        shapes[prefix + "self_attn.v_proj.weight"] = (KV_HEADS * HEAD_DIM, HIDDEN)
        shapes[prefix + "self_attn.o_proj.weight"] = (HIDDEN, HEADS * HEAD_DIM)
        shapes[prefix + "post_attention_layernorm.weight"] = (HIDDEN,)
        shapes[prefix + "mlp.gate_proj.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[prefix + "mlp.up_proj.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[prefix + "mlp.down_proj.weight"] = (HIDDEN, INTERMEDIATE)
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return shapes


def random_state(seed: int, scale: float, norm_offset: float) -> dict[str, torch.Tensor]:
    """float32 tensors from one seeded generator, drawn in a fixed order; norms sit around ``norm_offset``."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in llama_shapes().items():
        noise = torch.randn(shape, generator=generator, dtype=torch.float32) * scale
        state[name] = noise + norm_offset if name.endswith("norm.weight") else noise
    return state


def shard_of(name: str) -> int:
    """Three shards: embeddings + layer 0, layer 1, layer 2 + final norm + head."""
    if name.startswith("model.layers."):
        return int(name.split(".")[2])
    return 0 if name == "model.embed_tokens.weight" else 2


def write_checkpoint(path: Path, state: dict[str, torch.Tensor], dtype: torch.dtype) -> Path:
    """A hub-style sharded checkpoint: config.json, three safetensors shards and the index."""
    path.mkdir(parents=True)
    dtype_name = str(dtype).removeprefix("torch.")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": dtype_name,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    names = [f"model-{i + 1:05d}-of-00003.safetensors" for i in range(3)]
    shards: list[dict[str, torch.Tensor]] = [{}, {}, {}]
    for name, tensor in state.items():
        shards[shard_of(name)][name] = tensor.to(dtype).contiguous()
    for file_name, tensors in zip(names, shards, strict=True):
        save_file(tensors, str(path / file_name), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for shard in shards for t in shard.values())
    weight_map = {name: names[shard_of(name)] for name in state}
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return path


def write_family(root: Path, dtype: torch.dtype, seed: int, finetunes: int) -> list[Path]:
    """A base and ``finetunes`` models that each moved a little (seeded) from it."""
    base = random_state(seed, scale=0.05, norm_offset=1.0)
    paths = [write_checkpoint(root / "base", base, dtype)]
    for k in range(1, finetunes + 1):
        delta = random_state(seed + 100 * k, scale=0.01, norm_offset=0.0)
        finetune = {name: base[name] + delta[name] for name in base}
        paths.append(write_checkpoint(root / f"ft{k}", finetune, dtype))
    return paths


def write_adapter(path: Path, seed: int) -> Path:
    """A PEFT LoRA adapter (r 4, alpha 8 on q_proj/v_proj), written by hand with non-zero A and B."""
    path.mkdir(parents=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "fan_in_fan_out": False,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "base_model_name_or_path": None,
        "inference_mode": True,
    }
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    generator = torch.Generator().manual_seed(seed)
    out_features = {"q_proj": HEADS * HEAD_DIM, "v_proj": KV_HEADS * HEAD_DIM}
    tensors = {}
    for i in range(LAYERS):
        for module, out in out_features.items():
            key = f"base_model.model.model.layers.{i}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn((4, HIDDEN), generator=generator) * 0.1
            tensors[f"{key}.lora_B.weight"] = torch.randn((out, 4), generator=generator) * 0.1
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    return path


@dataclass(frozen=True)
class Inputs:
    """bf16 family (base + 3 finetunes), float32 family (base + 2 finetunes), one float32 LoRA adapter."""

    bf16: list[Path]
    fp32: list[Path]
    adapter: Path


def build_inputs(root: Path) -> Inputs:
    """Every input model, from fixed seeds only: byte-identical on every run."""
    return Inputs(
        bf16=write_family(root / "bf16", torch.bfloat16, seed=1, finetunes=3),
        fp32=write_family(root / "fp32", torch.float32, seed=2, finetunes=2),
        adapter=write_adapter(root / "adapter", seed=3),
    )


# ---------------------------------------------------------------------------------------------------
# cases: a merge config (+ extra CLI args), or the arguments of ``lora merge``


@dataclass(frozen=True)
class Case:
    """``config`` set: ``mergebench merge``; otherwise ``lora`` holds ``lora merge`` args before --out."""

    config: dict | None = None
    lora: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()


def _m(path: Path | str, **parameters) -> dict:
    return {"model": str(path), "parameters": parameters} if parameters else {"model": str(path)}


def _src(path: Path, start: int, end: int) -> dict:
    return {"model": str(path), "layer_range": [start, end]}


def cases(x: Inputs) -> dict[str, Case]:
    """Every pinned case; names are stable keys of PINNED."""
    b, b1, b2, b3 = (str(p) for p in x.bf16)
    f, f1, f2 = (str(p) for p in x.fp32)
    shard = ("--max-shard-size", SHARD_SIZE)
    attn_filter = [{"filter": "self_attn", "value": 0.7}, {"value": 0.3}]
    linear = [_m(b1, weight=0.5), _m(b2, weight=[0.2, 0.8]), _m(b3, weight=attn_filter)]
    dare = [_m(b1, weight=0.6, density=0.6), _m(b2, weight=0.8, density=0.6)]
    return {
        "linear_bf16": Case({"merge_method": "linear", "models": linear, "dtype": "bfloat16"}, extra=shard),
        "linear_fp32": Case(
            {"merge_method": "linear", "models": [_m(f1, weight=0.5), _m(f2, weight=[0.2, 0.8])]}
        ),
        "task_arithmetic_bf16": Case(
            {
                "merge_method": "task_arithmetic",
                "base_model": b,
                "models": [_m(b1, weight=1.0), _m(b2, weight=-0.5)],
                "parameters": {"lambda": 0.8},
            },
            extra=shard,
        ),
        "task_arithmetic_fp32": Case(
            {
                "merge_method": "task_arithmetic",
                "base_model": f,
                "models": [_m(f1, weight=1.0), _m(f2, weight=-0.5)],
                "parameters": {"lambda": 0.8},
            },
            extra=shard,
        ),
        "task_arithmetic_fp32_out_bf16": Case(
            {
                "merge_method": "task_arithmetic",
                "base_model": f,
                "models": [_m(f1, weight=0.7), _m(f2, weight=0.3)],
                "dtype": "float32",
                "out_dtype": "bfloat16",
            },
            extra=shard,
        ),
        "ties_bf16": Case(
            {
                "merge_method": "ties",
                "base_model": b,
                "models": [
                    _m(b1, weight=1.0, density=0.5),
                    _m(b2, weight=0.6, density=0.7),
                    _m(b3, weight=0.4),
                ],
                "parameters": {"density": 0.5, "normalize": True},
                "dtype": "bfloat16",
            },
            extra=shard,
        ),
        "ties_fp32": Case(
            {
                "merge_method": "ties",
                "base_model": f,
                "models": [_m(f1, weight=1.0, density=0.5), _m(f2, weight=0.6, density=0.7)],
                "parameters": {"normalize": True, "lambda": 1.2},
            }
        ),
        "dare_linear_bf16": Case(
            {"merge_method": "dare_linear", "base_model": b, "models": dare, "seed": 7}, extra=shard
        ),
        "dare_ties_bf16": Case(
            {"merge_method": "dare_ties", "base_model": b, "models": dare, "seed": 7, "dtype": "bfloat16"},
            extra=shard,
        ),
        "slerp_bf16": Case(
            {
                "merge_method": "slerp",
                "base_model": b1,
                "models": [_m(b1), _m(b2)],
                "parameters": {"t": [0.0, 0.5, 1.0]},
                "dtype": "bfloat16",
            },
            extra=shard,
        ),
        "slerp_fp32": Case(
            {
                "merge_method": "slerp",
                "base_model": f1,
                "models": [_m(f1), _m(f2)],
                "parameters": {"t": [0.0, 0.5, 1.0]},
            }
        ),
        "passthrough_models_bf16": Case({"merge_method": "passthrough", "models": [_m(b2)]}, extra=shard),
        "frankenmerge_bf16": Case(
            {
                "merge_method": "passthrough",
                "slices": [{"sources": [_src(x.bf16[0], 0, 2)]}, {"sources": [_src(x.bf16[1], 1, 3)]}],
                "dtype": "bfloat16",
            },
            extra=shard,
        ),
        "slices_ties_bf16": Case(
            {
                "merge_method": "ties",
                "base_model": b,
                "parameters": {"weight": 0.8, "density": 0.5},
                "slices": [
                    {"sources": [_src(x.bf16[0], 0, 2), _src(x.bf16[1], 0, 2)]},
                    {
                        "sources": [_src(x.bf16[0], 1, 3), _src(x.bf16[2], 1, 3)],
                        "parameters": {"density": [0.3, 0.9]},
                    },
                ],
                "dtype": "bfloat16",
            },
            extra=shard,
        ),
        "base_plus_adapter_bf16": Case(
            {
                "merge_method": "task_arithmetic",
                "base_model": b,
                "models": [_m(f"{b}+{x.adapter}", weight=1.0), _m(b1, weight=0.5)],
                "dtype": "bfloat16",
            },
            extra=shard,
        ),
        "lora_merge_bf16": Case(lora=(b, str(x.adapter)), extra=shard),
        "lora_merge_bf16_to_fp32": Case(lora=(b, str(x.adapter)), extra=("--dtype", "float32")),
        "lora_merge_fp32_weight_half": Case(lora=(f, str(x.adapter)), extra=("--weights", "0.5", *shard)),
    }


def run_case(case: Case, work: Path) -> Path:
    """Run one case through the CLI, as a user would; returns the output directory."""
    from mergebench.cli import main

    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    if case.config is not None:
        config = work / "merge.yaml"
        config.write_text(yaml.safe_dump(case.config, sort_keys=False))
        args = ["merge", str(config), str(out), "--no-progress", *case.extra]
    else:
        args = ["lora", "merge", *case.lora, "--out", str(out), "--no-progress", *case.extra]
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    if result.exit_code != 0:
        raise AssertionError(f"mergebench {' '.join(args)} failed:\n{result.output}\n{result.exception!r}")
    return out


# ---------------------------------------------------------------------------------------------------
# digests


def pinned_files(out: Path) -> list[Path]:
    """Shards, index and config.json (byte-stable: written with sorted keys); not README.md."""
    files = sorted(out.glob("*.safetensors"))
    files += [p for p in (out / "model.safetensors.index.json", out / "config.json") if p.is_file()]
    return files


def file_digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in pinned_files(out)}


def safetensors_entries(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """name → (dtype, shape, raw bytes), parsed from the file itself (no loader code involved)."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header.pop("__metadata__", None)
    body = data[8 + length :]
    return {
        name: (info["dtype"], info["shape"], body[info["data_offsets"][0] : info["data_offsets"][1]])
        for name, info in header.items()
    }


def tensor_digests(out: Path) -> dict[str, str]:
    """Per-tensor digest (dtype, shape and bytes; 16 hex digits): names what changed when a file does."""
    digests = {}
    for shard in sorted(out.glob("*.safetensors")):
        for name, (dtype, shape, raw) in safetensors_entries(shard).items():
            digests[name] = hashlib.sha256(f"{dtype}{shape}".encode() + raw).hexdigest()[:16]
    return dict(sorted(digests.items()))


def case_digests(inputs: Inputs, work: Path) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """(file digests, tensor digests) of every case, each case in its own directory under ``work``."""
    files, tensors = {}, {}
    for name, case in cases(inputs).items():
        out = run_case(case, work / name)
        files[name], tensors[name] = file_digests(out), tensor_digests(out)
    return files, tensors


def describe_mismatch(case: str, out: Path) -> str:
    """Which files differ and, inside the shards, which tensors (by per-tensor pins) or only the layout."""
    got, want = file_digests(out), PINNED[case]
    lines = [f"case {case!r}: output bytes differ from the pins ({out})"]
    for name in sorted(set(got) | set(want)):
        if name not in got:
            lines.append(f"  {name}: missing (pinned {want[name][:16]}…)")
        elif name not in want:
            lines.append(f"  {name}: not pinned (new file)")
        elif got[name] != want[name]:
            lines.append(f"  {name}: sha256 {got[name][:16]}… != pinned {want[name][:16]}…")
    got_t, want_t = tensor_digests(out), PINNED_TENSORS.get(case, {})
    changed = [n for n in sorted(set(got_t) | set(want_t)) if got_t.get(n) != want_t.get(n)]
    if changed:
        lines.append(f"  tensors that differ ({len(changed)} of {len(want_t)}):")
        for name in changed:
            lines.append(f"    {name}: {got_t.get(name, 'missing')} != pinned {want_t.get(name, 'absent')}")
    else:
        lines.append(
            "  no tensor changed (dtype, shape, bytes): the layout moved (order, sharding, headers) "
            "or the index / config.json did"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# tests


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return build_inputs(tmp_path_factory.mktemp("pin_inputs"))


def placeholder_inputs() -> Inputs:
    """Placeholder paths: enough to list the case names without writing any model."""
    return Inputs(
        bf16=[Path(f"b{i}") for i in range(4)], fp32=[Path(f"f{i}") for i in range(3)], adapter=Path("a")
    )


CASE_NAMES = sorted(cases(placeholder_inputs()))


def test_every_case_is_pinned() -> None:
    """A new case without pins, or a pin for a removed case, is a mistake, not a pass."""
    assert set(CASE_NAMES) == set(PINNED) == set(PINNED_TENSORS)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_output_bytes_match_pins(inputs: Inputs, tmp_path: Path, case: str) -> None:
    """The merge of ``case`` writes exactly the pinned bytes."""
    out = run_case(cases(inputs)[case], tmp_path)
    if file_digests(out) != PINNED.get(case):
        pytest.fail(describe_mismatch(case, out), pytrace=False)


def print_pins() -> None:
    """Regenerate both dicts from the code on the import path, ready to paste over the ones below."""
    import mergebench

    print(
        f"# generated by {Path(mergebench.__file__).parent} (mergebench {mergebench.__version__})",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files, tensors = case_digests(build_inputs(root / "inputs"), root / "cases")
    for title, table in (("PINNED", files), ("PINNED_TENSORS", tensors)):
        print(f"{title}: dict[str, dict[str, str]] = {{")
        for case, digests in table.items():
            print(f'    "{case}": {{')
            for name, digest in digests.items():
                print(f'        "{name}": "{digest}",')
            print("    },")
        print("}")
        print()


# ---------------------------------------------------------------------------------------------------
# pins, generated by ``python tests/test_regression_pins.py --print``: change only with a stated reason

PINNED: dict[str, dict[str, str]] = {
    "linear_bf16": {
        "model-00001-of-00004.safetensors": "f7b020c326e3796e7dc0aead7f4aee153653f1cfda2d8089ea0123199b0a0b1e",
        "model-00002-of-00004.safetensors": "90303f92e923bdc106d5e112cf5e1d371b555eb3af2149c2bc072ed00379f0fa",
        "model-00003-of-00004.safetensors": "0325f3e5ad5f20b21d7ade2adeae99932f772b24147989d4bdc609c70a8418ec",
        "model-00004-of-00004.safetensors": "debcc3d0fa7a20e3e243c72f5301a4f4c263cda958856ed1b1094de0c5061bce",
        "model.safetensors.index.json": "117966a15b5fc154e4fc455664305fdcb2fe663f97e966190d0520cdd73203eb",
        "config.json": "1400e52c53ca93cf423b84355350d5d0f5eb74f0624af4d96e06487632424f94",
    },
    "linear_fp32": {
        "model-00001-of-00001.safetensors": "8ef4970c59c200e78d2fb267f80b1fbb457c133f121c17cbfb9c7349d7d4148f",
        "model.safetensors.index.json": "ec4ffbf3e22615cfb88710a8183632c50bf401fda3d5eeea5fd29821bf9af71c",
        "config.json": "8168d68c131c0b0dd155ade7f766ca06e746a04263e9602b1941dd3dcaabb9c2",
    },
    "task_arithmetic_bf16": {
        "model-00001-of-00004.safetensors": "deaf376a41d7ed4ae1a50266cc6bdfb33892e65868af1cef2ca803d448e4287e",
        "model-00002-of-00004.safetensors": "f1c89850638b3a63eb77fc597ee4e95c0fac009da95efe02a431fd85ce5aeaa0",
        "model-00003-of-00004.safetensors": "d3181aa235e6f0e75e1c98c5bbf10d9da98ec5b256e2b69171d70bc7d231a1b0",
        "model-00004-of-00004.safetensors": "51b58956cd115ae309ad2f1444fe472073ff4b50c85e891d8df0645d08be65fc",
        "model.safetensors.index.json": "117966a15b5fc154e4fc455664305fdcb2fe663f97e966190d0520cdd73203eb",
        "config.json": "1400e52c53ca93cf423b84355350d5d0f5eb74f0624af4d96e06487632424f94",
    },
    "task_arithmetic_fp32": {
        "model-00001-of-00009.safetensors": "af171d9bf4d2860bdda709e5485d87bb4668d23287127dc383e1687e7398409e",
        "model-00002-of-00009.safetensors": "f3be1d69845ac73ec54ecc58386c696c169f54adeb8e29a7e21609806e43c324",
        "model-00003-of-00009.safetensors": "2e6b27a09028beb77c0b7e4775bb66a911bae74a7d9045eec348e7cdb90ce233",
        "model-00004-of-00009.safetensors": "6fd7a8625e86abe5d4f09401cb8e764bf4109873dc68a63d08bdbccb36f96b0c",
        "model-00005-of-00009.safetensors": "28c9389afcceff2fe512cb465cd48652db209f7c8d3ea5a5bcafa00a2ef68118",
        "model-00006-of-00009.safetensors": "9240da8587d28c84d278fafa338d8ae35d2d704b0cf615528cc99c1fa7ec2f3a",
        "model-00007-of-00009.safetensors": "829c83d48a53229ef7dc1baf441640b0f0fd9952d1e379306a705a44ef909d4c",
        "model-00008-of-00009.safetensors": "1a922fa5491a3c6dbbc1e6e1a3412efb0366d472682931a3c1648421a71d5c9e",
        "model-00009-of-00009.safetensors": "77ca34d5a6cf27f47f1a6f48def74063f3f13f061ba0d2bb87f79d9aa6691705",
        "model.safetensors.index.json": "bb9c3ef2d5a18ad843e01d2f4fea0ba70975c5f95f4ef9e0b13a84a261f95882",
        "config.json": "8168d68c131c0b0dd155ade7f766ca06e746a04263e9602b1941dd3dcaabb9c2",
    },
    "task_arithmetic_fp32_out_bf16": {
        "model-00001-of-00004.safetensors": "5ca535d65e5e235e711d1e843e1477341c8061f107fcbe4f6fb66cd3105d0b84",
        "model-00002-of-00004.safetensors": "1d25a6638a119d213dc2cc67fcd766d70635d4edb080a417c912166344b83b29",
        "model-00003-of-00004.safetensors": "94526934b76b983101acc1f068b59d1cb997277b49140c4cace5fcb0e99baad3",
        "model-00004-of-00004.safetensors": "c3e7abe9a5a4e181172000eb332929d59ccbc49120317c20fe28883ffa2b09c8",
        "model.safetensors.index.json": "117966a15b5fc154e4fc455664305fdcb2fe663f97e966190d0520cdd73203eb",
        "config.json": "1400e52c53ca93cf423b84355350d5d0f5eb74f0624af4d96e06487632424f94",
    },
    "ties_bf16": {
        "model-00001-of-00004.safetensors": "77a8f38de18c5e0963ea3a5b38e9bf404d193ecc3e66c013319073922f0caa18",
        "model-00002-of-00004.safetensors": "16c047cb516d6a694702143992b7ad0802dd3f066b30eb9546502f2455c9533d",
        "model-00003-of-00004.safetensors": "71fde4769dfc525215dd9b516879a9cbced76f01eff7957584753a697e2b6ef8",
        "model-00004-of-00004.safetensors": "b404735b513cdeac9f150fa708bfd15f25044212bd5ec44fe06fbb057a0deacf",
        "model.safetensors.index.json": "117966a15b5fc154e4fc455664305fdcb2fe663f97e966190d0520cdd73203eb",
        "config.json": "1400e52c53ca93cf423b84355350d5d0f5eb74f0624af4d96e06487632424f94",
    },
    "ties_fp32": {
        "model-00001-of-00001.safetensors": "c202cc081c6b623d4aff6d9de825f4dc1caee9ee09856029e78fd5ec38946974",
        "model.safetensors.index.json": "ec4ffbf3e22615cfb88710a8183632c50bf401fda3d5eeea5fd29821bf9af71c",
        "config.json": "8168d68c131c0b0dd155ade7f766ca06e746a04263e9602b1941dd3dcaabb9c2",
    },
    "dare_linear_bf16": {
        "model-00001-of-00004.safetensors": "b358fe3e9dbc1bcb6da8bd06414c5ad1a3467bfbbc19263c301cc006815a38a3",
        "model-00002-of-00004.safetensors": "a545d88ac57853467cea16d5e34ef0041660e5118c2d79f8aa42b0150be6139d",
        "model-00003-of-00004.safetensors": "950ebd0275835fe9b2586acc4bb066bdd30df23c400db813e4ff903c734b3392",
        "model-00004-of-00004.safetensors": "2b959c4843a1fd92281d2655da1ec54c53ee5f69c8da933e4a3e4477dc3f7a2a",
        "model.safetensors.index.json": "117966a15b5fc154e4fc455664305fdcb2fe663f97e966190d0520cdd73203eb",
        "config.json": "1400e52c53ca93cf423b84355350d5d0f5eb74f0624af4d96e06487632424f94",
    },
    "dare_ties_bf16": {
        "model-00001-of-00004.safetensors": "ca46ccd186f887b1c5badbf5f37941809c41de5ba2ca5f2e9c6636b276e4dcc3",
        "model-00002-of-00004.safetensors": "343baa7b7535bd5243285606208f2c57a36ed52335706f21ba072cb40fe67e31",
        "model-00003-of-00004.safetensors": "2ace9ed1cf35d4d9dd857afceb0e2378a591f31f2fe9d07780ee295378efab7e",
        "model-00004-of-00004.safetensors": "cdf1aee64469deb4db6b6e5f3d7f580abce98a8eaf61bff657c3f285ac83a67e",
        "model.safetensors.index.json": "117966a15b5fc154e4fc455664305fdcb2fe663f97e966190d0520cdd73203eb",
        "config.json": "1400e52c53ca93cf423b84355350d5d0f5eb74f0624af4d96e06487632424f94",
    },
    "slerp_bf16": {
        "model-00001-of-00004.safetensors": "dc8cb4d82cc032970053ac83e5bfe72b1f8689c7d3d5c0b65b73ecbd8ae182f3",
        "model-00002-of-00004.safetensors": "bf0d8f66f80dd7838d7b0bea0d6814a5062088be60b4d3fc6394358368880819",
        "model-00003-of-00004.safetensors": "71ed4b62d54dcc6e1b568f12acb244a76af7bc8c626ed637a0b16173f6bfd2c0",
        "model-00004-of-00004.safetensors": "41fd2b42804620b44154500adc30429fb58546e200dade7c3b8286c6af8e207e",
        "model.safetensors.index.json": "117966a15b5fc154e4fc455664305fdcb2fe663f97e966190d0520cdd73203eb",
        "config.json": "1400e52c53ca93cf423b84355350d5d0f5eb74f0624af4d96e06487632424f94",
    },
    "slerp_fp32": {
        "model-00001-of-00001.safetensors": "61d35c8a4cb1222f9697433b8a70c8d88663371f5f658fb770d292aac4133b86",
        "model.safetensors.index.json": "ec4ffbf3e22615cfb88710a8183632c50bf401fda3d5eeea5fd29821bf9af71c",
        "config.json": "8168d68c131c0b0dd155ade7f766ca06e746a04263e9602b1941dd3dcaabb9c2",
    },
    "passthrough_models_bf16": {
        "model-00001-of-00004.safetensors": "e19d0eaa0405afa9f66ce288f168967a9a3aeffa8556af8dd7d8affbc1cfe79f",
        "model-00002-of-00004.safetensors": "6fa56b79da142a2466abcebe92a2d4e2dfc43bfdfdde51ae8ecf50b25ae2eae9",
        "model-00003-of-00004.safetensors": "695d594c18c08fb0a9a0f9d3825b4a7e16e6112450e4c1a698d58dd4d2ced6e6",
        "model-00004-of-00004.safetensors": "878de1138f3aeefff3f8eb5a780e1c3f41e425e3af6d6ee848689015ccf5f37b",
        "model.safetensors.index.json": "117966a15b5fc154e4fc455664305fdcb2fe663f97e966190d0520cdd73203eb",
        "config.json": "1400e52c53ca93cf423b84355350d5d0f5eb74f0624af4d96e06487632424f94",
    },
    "frankenmerge_bf16": {
        "model-00001-of-00005.safetensors": "e699117a4180be81c6396a815c31a10903bb0623db336abeb95c11fceea9e9df",
        "model-00002-of-00005.safetensors": "d860034cd0d3950ff25a4a466cbe94130da2dc6c0ee9b3574208c9a1fc598de7",
        "model-00003-of-00005.safetensors": "9ed640445396d77241484b5316a4853c3ca5b6942034755f2f7ae2c5afb6b457",
        "model-00004-of-00005.safetensors": "381f0c503b000da34c41b210f62c61692421ebf8dfa0a9e3c9ab92796813aceb",
        "model-00005-of-00005.safetensors": "f58b58b42d99a959af3e584bff8f91dd87cbc835be86ea65c7704ce211caf880",
        "model.safetensors.index.json": "2927a7ca10987d0b2149d949b25ab04617b01c826da53e8babe46dd256fa730d",
        "config.json": "082712166c3681d3f06933f76e4cdfad6106a30efcd6db7b83e2a0390722fd1c",
    },
    "slices_ties_bf16": {
        "model-00001-of-00005.safetensors": "6c2acf02b5b26e7b8c8613a91c69b1ab8976f09d1d7df34036b48f4c7f27d1f2",
        "model-00002-of-00005.safetensors": "b12f37eb8868e921007b025088cbda276b7812b73063de28f041b157c95a04e3",
        "model-00003-of-00005.safetensors": "345c3943177a5072308a21b61e7bc32578ddf654d4dc47adc8a81831f5b395ea",
        "model-00004-of-00005.safetensors": "3c922a78bef5470a8c9b0fd8bcf87b0f82c898958ea5b1a4c65277ca9cb8212e",
        "model-00005-of-00005.safetensors": "85215d3011647702b9605aeab6ec5fb9bdbe51c46474d781029132bd15a7507c",
        "model.safetensors.index.json": "2927a7ca10987d0b2149d949b25ab04617b01c826da53e8babe46dd256fa730d",
        "config.json": "082712166c3681d3f06933f76e4cdfad6106a30efcd6db7b83e2a0390722fd1c",
    },
    "base_plus_adapter_bf16": {
        "model-00001-of-00004.safetensors": "bfeefe0b6ab923b74b1e25a3b646ffb59e7768ddb27b731aa23c6f7979f1ddc6",
        "model-00002-of-00004.safetensors": "018d6abe7453ed922f9e4e377d675f023e3285ac2a71c1ccb44d715c27f77a83",
        "model-00003-of-00004.safetensors": "1b2b0de40c87ee224570cc8bced46dc822993c035037602bcf376e86dbd312c3",
        "model-00004-of-00004.safetensors": "32e1becaab62af07256f658dc834f96d2407e5d185202c623a417db5b9d9fd8b",
        "model.safetensors.index.json": "117966a15b5fc154e4fc455664305fdcb2fe663f97e966190d0520cdd73203eb",
        "config.json": "1400e52c53ca93cf423b84355350d5d0f5eb74f0624af4d96e06487632424f94",
    },
    "lora_merge_bf16": {
        "model-00001-of-00004.safetensors": "a3bfaebd7ba778e0d5d86411944ff1c1b1c92a8aa78fa459bd0cf669618cc1ef",
        "model-00002-of-00004.safetensors": "fed42dc22a462f41bbef1f3853f39006812fb098c20eedbf405ff368d8b766fa",
        "model-00003-of-00004.safetensors": "3090481e009b23c9574fa010d4b33e67ec79ab28e398a8b402421acdf9bc3dbd",
        "model-00004-of-00004.safetensors": "93a31779e1c27c365257d60833783f715ae3e0dd7a2f271a4adcd21b3076d82a",
        "model.safetensors.index.json": "117966a15b5fc154e4fc455664305fdcb2fe663f97e966190d0520cdd73203eb",
        "config.json": "1400e52c53ca93cf423b84355350d5d0f5eb74f0624af4d96e06487632424f94",
    },
    "lora_merge_bf16_to_fp32": {
        "model-00001-of-00001.safetensors": "637aa4a3b0a6c6dda0b6975c8f614de0eb03a8881cf01601c17993af4e3bae17",
        "model.safetensors.index.json": "ec4ffbf3e22615cfb88710a8183632c50bf401fda3d5eeea5fd29821bf9af71c",
        "config.json": "8168d68c131c0b0dd155ade7f766ca06e746a04263e9602b1941dd3dcaabb9c2",
    },
    "lora_merge_fp32_weight_half": {
        "model-00001-of-00009.safetensors": "b1a6ef3f09b71c2e03998798204c89956538e3ae04e7ced6deda65d08633857b",
        "model-00002-of-00009.safetensors": "6a6414b2a96a17ba9a0b85cea3a5d989cafac1dc02324a32dcd508c7c4074a71",
        "model-00003-of-00009.safetensors": "49bab5a04bb87ff2406a6e9cf0fa60278bdc6b4d2e8aa33462c7d841bdfe85d7",
        "model-00004-of-00009.safetensors": "c27139e0f9df69a3d379c5598d6279cbd68d452ba5e276df5dd6bc6d17a3c87d",
        "model-00005-of-00009.safetensors": "3f722dd0172269b0670851e6cbb6548c698c0ff520f982fa31c4e01ddc551df5",
        "model-00006-of-00009.safetensors": "e096d43e7241863ec9dda35b08e8e86565d9a059a60844ff780c5899914d88c8",
        "model-00007-of-00009.safetensors": "7079e5a532a5b8c3b761656ea9e41ec19208ea8a8c483fe792ea4ec66c2ace6f",
        "model-00008-of-00009.safetensors": "979a67975208c11f8ebe6f47dd857b02c751cd1df29bbeba7bbe8bf40988a9c7",
        "model-00009-of-00009.safetensors": "97c39d2e8d3115132b53bfcfbd7086908d588337254d2057310c1709d9497012",
        "model.safetensors.index.json": "bb9c3ef2d5a18ad843e01d2f4fea0ba70975c5f95f4ef9e0b13a84a261f95882",
        "config.json": "8168d68c131c0b0dd155ade7f766ca06e746a04263e9602b1941dd3dcaabb9c2",
    },
}

PINNED_TENSORS: dict[str, dict[str, str]] = {
    "linear_bf16": {
        "lm_head.weight": "895f13be13a808ec",
        "model.embed_tokens.weight": "43451d3e89369810",
        "model.layers.0.input_layernorm.weight": "3907e902b29dbdec",
        "model.layers.0.mlp.down_proj.weight": "0a2826928dc73194",
        "model.layers.0.mlp.gate_proj.weight": "7ee63f3a61736f72",
        "model.layers.0.mlp.up_proj.weight": "40a5bde1c003a9fd",
        "model.layers.0.post_attention_layernorm.weight": "c7e97d0e5d6d8eca",
        "model.layers.0.self_attn.k_proj.weight": "6c55f25f61c3f6b4",
        "model.layers.0.self_attn.o_proj.weight": "c7015f3ebea90711",
        "model.layers.0.self_attn.q_proj.weight": "998d84e662e6b136",
        "model.layers.0.self_attn.v_proj.weight": "22ee8a7f444ef343",
        "model.layers.1.input_layernorm.weight": "28b6370eadb6152e",
        "model.layers.1.mlp.down_proj.weight": "655e1ac2daf25c88",
        "model.layers.1.mlp.gate_proj.weight": "003dc4b26742c441",
        "model.layers.1.mlp.up_proj.weight": "956ed1316e734c67",
        "model.layers.1.post_attention_layernorm.weight": "e8c81b0df9b4244e",
        "model.layers.1.self_attn.k_proj.weight": "e19ceaf6688bcde9",
        "model.layers.1.self_attn.o_proj.weight": "f33d2fdd35cb1b94",
        "model.layers.1.self_attn.q_proj.weight": "003e782a8d136e02",
        "model.layers.1.self_attn.v_proj.weight": "b6bcbf1f40922aaf",
        "model.layers.2.input_layernorm.weight": "930b7b35ea07075c",
        "model.layers.2.mlp.down_proj.weight": "8413ef02ddfff79a",
        "model.layers.2.mlp.gate_proj.weight": "7ca29cead5f8c203",
        "model.layers.2.mlp.up_proj.weight": "247b88578f5d231f",
        "model.layers.2.post_attention_layernorm.weight": "4787595ca0ed8c50",
        "model.layers.2.self_attn.k_proj.weight": "f3398a218b9aaa12",
        "model.layers.2.self_attn.o_proj.weight": "1755b7d371a5ff03",
        "model.layers.2.self_attn.q_proj.weight": "42b467cc25bd73ed",
        "model.layers.2.self_attn.v_proj.weight": "a0ca376abf467c6f",
        "model.norm.weight": "c9684b459449ea9e",
    },
    "linear_fp32": {
        "lm_head.weight": "92c873d56877e333",
        "model.embed_tokens.weight": "5d945613f86d9511",
        "model.layers.0.input_layernorm.weight": "0f9525f5523d66b3",
        "model.layers.0.mlp.down_proj.weight": "6db65d3d60769b4c",
        "model.layers.0.mlp.gate_proj.weight": "9088cf65e5ea6b10",
        "model.layers.0.mlp.up_proj.weight": "9f95dd2006926648",
        "model.layers.0.post_attention_layernorm.weight": "fa786f851b65b155",
        "model.layers.0.self_attn.k_proj.weight": "12b5d3a410f97bfd",
        "model.layers.0.self_attn.o_proj.weight": "f8bb9c00d8dda363",
        "model.layers.0.self_attn.q_proj.weight": "3749ee28da6dcf80",
        "model.layers.0.self_attn.v_proj.weight": "153b5efe97b352d2",
        "model.layers.1.input_layernorm.weight": "ac8b721c81254739",
        "model.layers.1.mlp.down_proj.weight": "911e1f3c056e464b",
        "model.layers.1.mlp.gate_proj.weight": "dc85f1b12846ca4c",
        "model.layers.1.mlp.up_proj.weight": "561a28810cb44463",
        "model.layers.1.post_attention_layernorm.weight": "06a58dbb35f4e763",
        "model.layers.1.self_attn.k_proj.weight": "3ea3c5a567554b5a",
        "model.layers.1.self_attn.o_proj.weight": "1c8a6db568342acb",
        "model.layers.1.self_attn.q_proj.weight": "842111a023d25af7",
        "model.layers.1.self_attn.v_proj.weight": "06d4814dbb3c2b8f",
        "model.layers.2.input_layernorm.weight": "7cef72774bc10064",
        "model.layers.2.mlp.down_proj.weight": "83fa74b82ce5d73b",
        "model.layers.2.mlp.gate_proj.weight": "b5307b9b643768a4",
        "model.layers.2.mlp.up_proj.weight": "12e490b85330affb",
        "model.layers.2.post_attention_layernorm.weight": "26392ecb3fd7ca42",
        "model.layers.2.self_attn.k_proj.weight": "6a623b7bab5343ea",
        "model.layers.2.self_attn.o_proj.weight": "b4964d9f71976db6",
        "model.layers.2.self_attn.q_proj.weight": "c19631cfc1430cb8",
        "model.layers.2.self_attn.v_proj.weight": "830b0bd2b21c8f3e",
        "model.norm.weight": "b4e33dc9c50d14bc",
    },
    "task_arithmetic_bf16": {
        "lm_head.weight": "208bc111b507e231",
        "model.embed_tokens.weight": "3dd92f38ef244660",
        "model.layers.0.input_layernorm.weight": "61e5a974fe705002",
        "model.layers.0.mlp.down_proj.weight": "1d92ec7ecbc78406",
        "model.layers.0.mlp.gate_proj.weight": "abd3cc0374a4eb41",
        "model.layers.0.mlp.up_proj.weight": "e6877ba98a2099d4",
        "model.layers.0.post_attention_layernorm.weight": "0c17fdf70edcbf97",
        "model.layers.0.self_attn.k_proj.weight": "4448d762f1e0e466",
        "model.layers.0.self_attn.o_proj.weight": "b5a6e612510f8e6b",
        "model.layers.0.self_attn.q_proj.weight": "2fa1514cf12d2c64",
        "model.layers.0.self_attn.v_proj.weight": "2376b27075eff119",
        "model.layers.1.input_layernorm.weight": "2e5a27ebc1be1616",
        "model.layers.1.mlp.down_proj.weight": "9a3aea7c91c143bf",
        "model.layers.1.mlp.gate_proj.weight": "2fe0b60d8430eeee",
        "model.layers.1.mlp.up_proj.weight": "a5fe37a0c14e5c6a",
        "model.layers.1.post_attention_layernorm.weight": "ebfdcf275a08be1e",
        "model.layers.1.self_attn.k_proj.weight": "496657d0d6940f27",
        "model.layers.1.self_attn.o_proj.weight": "6781e3678d7b1c0c",
        "model.layers.1.self_attn.q_proj.weight": "df8861405b6a11bb",
        "model.layers.1.self_attn.v_proj.weight": "7a86d7eb960eada2",
        "model.layers.2.input_layernorm.weight": "3fcbe9ed4de07267",
        "model.layers.2.mlp.down_proj.weight": "49cf94def57bb916",
        "model.layers.2.mlp.gate_proj.weight": "75a59597ebf16d73",
        "model.layers.2.mlp.up_proj.weight": "82c383f85063cbb4",
        "model.layers.2.post_attention_layernorm.weight": "ebfe1ded59c2593b",
        "model.layers.2.self_attn.k_proj.weight": "e459a327cc6aa23f",
        "model.layers.2.self_attn.o_proj.weight": "69058250a564f163",
        "model.layers.2.self_attn.q_proj.weight": "5a45f06feb94c23b",
        "model.layers.2.self_attn.v_proj.weight": "2e5c0f7c0d9488d1",
        "model.norm.weight": "6d7b0a5ee867597a",
    },
    "task_arithmetic_fp32": {
        "lm_head.weight": "212cda5e7896c901",
        "model.embed_tokens.weight": "f79e1c8c3c5a53dc",
        "model.layers.0.input_layernorm.weight": "751f31cb9f4ae441",
        "model.layers.0.mlp.down_proj.weight": "38f83119433f8d06",
        "model.layers.0.mlp.gate_proj.weight": "8d218f751adeacb3",
        "model.layers.0.mlp.up_proj.weight": "f6b93f90f1bf8fa9",
        "model.layers.0.post_attention_layernorm.weight": "aa95f74d80f03aa3",
        "model.layers.0.self_attn.k_proj.weight": "d3167aa85573c60c",
        "model.layers.0.self_attn.o_proj.weight": "0f29711dd5061667",
        "model.layers.0.self_attn.q_proj.weight": "ba2e5e409b8a5cc7",
        "model.layers.0.self_attn.v_proj.weight": "ec8edfe065f5e52b",
        "model.layers.1.input_layernorm.weight": "b7e1b287e8a6ee25",
        "model.layers.1.mlp.down_proj.weight": "2c9dda46e4e19d47",
        "model.layers.1.mlp.gate_proj.weight": "094608ea11d2834d",
        "model.layers.1.mlp.up_proj.weight": "39221f86e4243c43",
        "model.layers.1.post_attention_layernorm.weight": "85ba594bc61fedd3",
        "model.layers.1.self_attn.k_proj.weight": "b3c3e33fbece5677",
        "model.layers.1.self_attn.o_proj.weight": "e99babaa2a6b023d",
        "model.layers.1.self_attn.q_proj.weight": "e948543e854fccf4",
        "model.layers.1.self_attn.v_proj.weight": "ee557d84e39b2c47",
        "model.layers.2.input_layernorm.weight": "a9ab29e6a650e08f",
        "model.layers.2.mlp.down_proj.weight": "83b0753428508c61",
        "model.layers.2.mlp.gate_proj.weight": "55bd6a3ab4ab0ab9",
        "model.layers.2.mlp.up_proj.weight": "6163de7843beb8c2",
        "model.layers.2.post_attention_layernorm.weight": "0e022a2348596371",
        "model.layers.2.self_attn.k_proj.weight": "eb1ba8750aecc531",
        "model.layers.2.self_attn.o_proj.weight": "61ca85c532f0a365",
        "model.layers.2.self_attn.q_proj.weight": "903f35be9c237825",
        "model.layers.2.self_attn.v_proj.weight": "4b676a9ca8e790f1",
        "model.norm.weight": "8f026a0cdbbe182b",
    },
    "task_arithmetic_fp32_out_bf16": {
        "lm_head.weight": "e4e61cc051e1c9a0",
        "model.embed_tokens.weight": "3873be1ad2c46008",
        "model.layers.0.input_layernorm.weight": "35f3b01572e3e1d9",
        "model.layers.0.mlp.down_proj.weight": "398afa564a0acd17",
        "model.layers.0.mlp.gate_proj.weight": "c6098675a3a95ea8",
        "model.layers.0.mlp.up_proj.weight": "12586d116ab530b4",
        "model.layers.0.post_attention_layernorm.weight": "bbc11aef172a783f",
        "model.layers.0.self_attn.k_proj.weight": "ab9c7257a64dc60c",
        "model.layers.0.self_attn.o_proj.weight": "83ec1739d4b9e476",
        "model.layers.0.self_attn.q_proj.weight": "4439ac88c3da2056",
        "model.layers.0.self_attn.v_proj.weight": "d13f91a5b331b7b8",
        "model.layers.1.input_layernorm.weight": "a6c8f98d0c7b9e5c",
        "model.layers.1.mlp.down_proj.weight": "7c19a1d8a365c7a5",
        "model.layers.1.mlp.gate_proj.weight": "d5bd029e33d3655c",
        "model.layers.1.mlp.up_proj.weight": "d7093dffda390a27",
        "model.layers.1.post_attention_layernorm.weight": "2b8ebddb67cd7fe6",
        "model.layers.1.self_attn.k_proj.weight": "afa7d0d2dc532ed4",
        "model.layers.1.self_attn.o_proj.weight": "73429ef0d3696f0f",
        "model.layers.1.self_attn.q_proj.weight": "fe7ed39ed17a27eb",
        "model.layers.1.self_attn.v_proj.weight": "fc1dd7cb03b8738d",
        "model.layers.2.input_layernorm.weight": "e11d1b168598df7b",
        "model.layers.2.mlp.down_proj.weight": "9e7e3c3d638f03a7",
        "model.layers.2.mlp.gate_proj.weight": "9e6f8010db35b964",
        "model.layers.2.mlp.up_proj.weight": "fccc887d4eedbdbd",
        "model.layers.2.post_attention_layernorm.weight": "5b48f0d9d82da37d",
        "model.layers.2.self_attn.k_proj.weight": "36f3dbb83f353450",
        "model.layers.2.self_attn.o_proj.weight": "b6599efe0e1cda15",
        "model.layers.2.self_attn.q_proj.weight": "c8a593fc72f264e4",
        "model.layers.2.self_attn.v_proj.weight": "21d6c53d7791f4bd",
        "model.norm.weight": "e435c00ec13bd538",
    },
    "ties_bf16": {
        "lm_head.weight": "dcbbc86dacda6d6f",
        "model.embed_tokens.weight": "35584c98015fad71",
        "model.layers.0.input_layernorm.weight": "f1dd43babd1441e3",
        "model.layers.0.mlp.down_proj.weight": "c5f6438468004f6b",
        "model.layers.0.mlp.gate_proj.weight": "55aa46629896971b",
        "model.layers.0.mlp.up_proj.weight": "4bfec76f4ed3f12b",
        "model.layers.0.post_attention_layernorm.weight": "a676a1df319f7dec",
        "model.layers.0.self_attn.k_proj.weight": "dd880db6932ecff8",
        "model.layers.0.self_attn.o_proj.weight": "7f15e0fa63f26f06",
        "model.layers.0.self_attn.q_proj.weight": "af96d334b5a4c421",
        "model.layers.0.self_attn.v_proj.weight": "a09d88065fae095c",
        "model.layers.1.input_layernorm.weight": "43c783a026094822",
        "model.layers.1.mlp.down_proj.weight": "7962c99b66a39f8b",
        "model.layers.1.mlp.gate_proj.weight": "d2fedc80f1e73555",
        "model.layers.1.mlp.up_proj.weight": "1db346a1e5e8bc19",
        "model.layers.1.post_attention_layernorm.weight": "0b0d65bb15f2687e",
        "model.layers.1.self_attn.k_proj.weight": "ee82a8aa5dff7ce7",
        "model.layers.1.self_attn.o_proj.weight": "4114c7882860f7f5",
        "model.layers.1.self_attn.q_proj.weight": "d822f8a604b0c983",
        "model.layers.1.self_attn.v_proj.weight": "855e143c1523d8f8",
        "model.layers.2.input_layernorm.weight": "44b137c613bebac0",
        "model.layers.2.mlp.down_proj.weight": "578d1417adec9d9d",
        "model.layers.2.mlp.gate_proj.weight": "94959a0cc0a7d479",
        "model.layers.2.mlp.up_proj.weight": "3a007e368808e77a",
        "model.layers.2.post_attention_layernorm.weight": "b61f964c4990528a",
        "model.layers.2.self_attn.k_proj.weight": "e3168ecc9f696061",
        "model.layers.2.self_attn.o_proj.weight": "838345522bcd028f",
        "model.layers.2.self_attn.q_proj.weight": "989e2be4def7efbd",
        "model.layers.2.self_attn.v_proj.weight": "066a1a40a151afd6",
        "model.norm.weight": "86089c8484d600f4",
    },
    "ties_fp32": {
        "lm_head.weight": "9ac4119f29ce132b",
        "model.embed_tokens.weight": "a19c12f210b392bc",
        "model.layers.0.input_layernorm.weight": "be4a30d98b2ae8ed",
        "model.layers.0.mlp.down_proj.weight": "789812387cf474c9",
        "model.layers.0.mlp.gate_proj.weight": "7cb79c672dd3369e",
        "model.layers.0.mlp.up_proj.weight": "57ec77fe9dfdf264",
        "model.layers.0.post_attention_layernorm.weight": "c10ac2c4a31da099",
        "model.layers.0.self_attn.k_proj.weight": "9c9eccedb87b39ef",
        "model.layers.0.self_attn.o_proj.weight": "656232075efe7ed2",
        "model.layers.0.self_attn.q_proj.weight": "0ed3953fa3bad67b",
        "model.layers.0.self_attn.v_proj.weight": "a904dc7f16a50232",
        "model.layers.1.input_layernorm.weight": "b6eacb61f710fc0d",
        "model.layers.1.mlp.down_proj.weight": "9deb1f1ec1438166",
        "model.layers.1.mlp.gate_proj.weight": "247c95236f8af0ab",
        "model.layers.1.mlp.up_proj.weight": "d8924abcea48b862",
        "model.layers.1.post_attention_layernorm.weight": "cc686b6b7b3b5d47",
        "model.layers.1.self_attn.k_proj.weight": "db2ed885c593fa5e",
        "model.layers.1.self_attn.o_proj.weight": "6a98c0784662be6b",
        "model.layers.1.self_attn.q_proj.weight": "cb468ca01b4031a8",
        "model.layers.1.self_attn.v_proj.weight": "0d58610e47fdc374",
        "model.layers.2.input_layernorm.weight": "315f91b6230f9190",
        "model.layers.2.mlp.down_proj.weight": "c086ada3b17164ae",
        "model.layers.2.mlp.gate_proj.weight": "93bfcef24603a19a",
        "model.layers.2.mlp.up_proj.weight": "382760f2d1719c9b",
        "model.layers.2.post_attention_layernorm.weight": "aac4ec5c87af21cf",
        "model.layers.2.self_attn.k_proj.weight": "6335710519c39742",
        "model.layers.2.self_attn.o_proj.weight": "8a26cddfc6e47ffc",
        "model.layers.2.self_attn.q_proj.weight": "38d3fd68796e2333",
        "model.layers.2.self_attn.v_proj.weight": "47845682f10edf4c",
        "model.norm.weight": "a967e5bac9b6ffd8",
    },
    "dare_linear_bf16": {
        "lm_head.weight": "086e649150d0a481",
        "model.embed_tokens.weight": "1b8e1ac82eccbdef",
        "model.layers.0.input_layernorm.weight": "f9ba9dccbdbaa8b9",
        "model.layers.0.mlp.down_proj.weight": "1f995c6004f25803",
        "model.layers.0.mlp.gate_proj.weight": "4a913534bc940023",
        "model.layers.0.mlp.up_proj.weight": "4daf617465a68c24",
        "model.layers.0.post_attention_layernorm.weight": "d897b7ce070cbc9a",
        "model.layers.0.self_attn.k_proj.weight": "4e7b30cd8f88279c",
        "model.layers.0.self_attn.o_proj.weight": "45fe76d1b139e67a",
        "model.layers.0.self_attn.q_proj.weight": "2a1f726b20b47a53",
        "model.layers.0.self_attn.v_proj.weight": "1823546f66c10984",
        "model.layers.1.input_layernorm.weight": "02e6f47dd6c7c5d6",
        "model.layers.1.mlp.down_proj.weight": "5bbb2842c4dc4e69",
        "model.layers.1.mlp.gate_proj.weight": "9dcbad9d0f4910d5",
        "model.layers.1.mlp.up_proj.weight": "80556a414b6fb7b2",
        "model.layers.1.post_attention_layernorm.weight": "bb60130f49fc407c",
        "model.layers.1.self_attn.k_proj.weight": "7425e54dde5eb398",
        "model.layers.1.self_attn.o_proj.weight": "2dd76cdaece56cd5",
        "model.layers.1.self_attn.q_proj.weight": "f53a81d6ddd01b5b",
        "model.layers.1.self_attn.v_proj.weight": "8e754923e969227b",
        "model.layers.2.input_layernorm.weight": "4fad2ce2a0dc7f3d",
        "model.layers.2.mlp.down_proj.weight": "ff6aa37cad145ff2",
        "model.layers.2.mlp.gate_proj.weight": "d69b8007f81d34c9",
        "model.layers.2.mlp.up_proj.weight": "0a512fd2518c93e1",
        "model.layers.2.post_attention_layernorm.weight": "84a763a20ad351c6",
        "model.layers.2.self_attn.k_proj.weight": "1881cb0c0b2953ee",
        "model.layers.2.self_attn.o_proj.weight": "ee72c7a0766a4372",
        "model.layers.2.self_attn.q_proj.weight": "fdd7479312cbd6c1",
        "model.layers.2.self_attn.v_proj.weight": "a348fb9a2811423f",
        "model.norm.weight": "fbaf7a6a6eda45ed",
    },
    "dare_ties_bf16": {
        "lm_head.weight": "da8abc8992a10a7f",
        "model.embed_tokens.weight": "da7f9cb9a4b3838f",
        "model.layers.0.input_layernorm.weight": "48ed25f3610c9593",
        "model.layers.0.mlp.down_proj.weight": "1f4227624e1bdeae",
        "model.layers.0.mlp.gate_proj.weight": "b2d0a5dac97579ba",
        "model.layers.0.mlp.up_proj.weight": "890b2bc3a4be4879",
        "model.layers.0.post_attention_layernorm.weight": "5db9208350c6fa69",
        "model.layers.0.self_attn.k_proj.weight": "43caf1a6d5069867",
        "model.layers.0.self_attn.o_proj.weight": "4b739b01d89e146d",
        "model.layers.0.self_attn.q_proj.weight": "9c4fe75af0987bd6",
        "model.layers.0.self_attn.v_proj.weight": "62803af429138826",
        "model.layers.1.input_layernorm.weight": "bd083e64cb758443",
        "model.layers.1.mlp.down_proj.weight": "f182477644f5c88c",
        "model.layers.1.mlp.gate_proj.weight": "5131c9fd2d414d83",
        "model.layers.1.mlp.up_proj.weight": "e217065c5b04ca5b",
        "model.layers.1.post_attention_layernorm.weight": "bb60130f49fc407c",
        "model.layers.1.self_attn.k_proj.weight": "aeac7cabad55e547",
        "model.layers.1.self_attn.o_proj.weight": "53501dd9d8441666",
        "model.layers.1.self_attn.q_proj.weight": "10b1ecd9053080a1",
        "model.layers.1.self_attn.v_proj.weight": "5d86380df81c45ce",
        "model.layers.2.input_layernorm.weight": "c15f8bd8466f0707",
        "model.layers.2.mlp.down_proj.weight": "7f6fdae384142001",
        "model.layers.2.mlp.gate_proj.weight": "32794a4770a784ab",
        "model.layers.2.mlp.up_proj.weight": "cec0ca8bf0da7494",
        "model.layers.2.post_attention_layernorm.weight": "c4fb96f84f860009",
        "model.layers.2.self_attn.k_proj.weight": "212f1ea1aee19434",
        "model.layers.2.self_attn.o_proj.weight": "e6d97208bbc5abb0",
        "model.layers.2.self_attn.q_proj.weight": "4446165bdfafdfe3",
        "model.layers.2.self_attn.v_proj.weight": "d645317332a5eca2",
        "model.norm.weight": "afd8663ca2e02c1e",
    },
    "slerp_bf16": {
        "lm_head.weight": "4d4d35386f4eaf43",
        "model.embed_tokens.weight": "42917d2040b85788",
        "model.layers.0.input_layernorm.weight": "5d3ad3efd69c8e3d",
        "model.layers.0.mlp.down_proj.weight": "377de2c9aa89a2e6",
        "model.layers.0.mlp.gate_proj.weight": "c6feb85beabdb066",
        "model.layers.0.mlp.up_proj.weight": "31128b4f81935402",
        "model.layers.0.post_attention_layernorm.weight": "c8845c1639337618",
        "model.layers.0.self_attn.k_proj.weight": "de29f86fbb7157f3",
        "model.layers.0.self_attn.o_proj.weight": "86f4e4aa21ba461d",
        "model.layers.0.self_attn.q_proj.weight": "86609c9094477226",
        "model.layers.0.self_attn.v_proj.weight": "6d78ad724b0d48f1",
        "model.layers.1.input_layernorm.weight": "1b6a5ba7bf5e01be",
        "model.layers.1.mlp.down_proj.weight": "84516ce72512e5f0",
        "model.layers.1.mlp.gate_proj.weight": "49cd96453c074238",
        "model.layers.1.mlp.up_proj.weight": "a79627beb9a8048f",
        "model.layers.1.post_attention_layernorm.weight": "51b6ae86fd514e38",
        "model.layers.1.self_attn.k_proj.weight": "07054eae8b89d6ac",
        "model.layers.1.self_attn.o_proj.weight": "d1a7e4c6939b47f1",
        "model.layers.1.self_attn.q_proj.weight": "ef84cfe08d2f5cc3",
        "model.layers.1.self_attn.v_proj.weight": "7296835ab0deff85",
        "model.layers.2.input_layernorm.weight": "73e3c647343729d2",
        "model.layers.2.mlp.down_proj.weight": "84948818b143d3e7",
        "model.layers.2.mlp.gate_proj.weight": "189674f03dd9b18d",
        "model.layers.2.mlp.up_proj.weight": "8c6de2b39f5ed64b",
        "model.layers.2.post_attention_layernorm.weight": "3ec37b660ec323a1",
        "model.layers.2.self_attn.k_proj.weight": "7fcc455f46c45521",
        "model.layers.2.self_attn.o_proj.weight": "dcd46853f6dc9e87",
        "model.layers.2.self_attn.q_proj.weight": "2beff18a4f903863",
        "model.layers.2.self_attn.v_proj.weight": "ada0eaf7553196f0",
        "model.norm.weight": "e275839c22ccc8e2",
    },
    "slerp_fp32": {
        "lm_head.weight": "615abbb92f1cc74e",
        "model.embed_tokens.weight": "7960b1ba2cda33e1",
        "model.layers.0.input_layernorm.weight": "1edf97943944b04b",
        "model.layers.0.mlp.down_proj.weight": "f52a3507d80e3820",
        "model.layers.0.mlp.gate_proj.weight": "9aa1cb7cad39f484",
        "model.layers.0.mlp.up_proj.weight": "4c78c328adbebcf1",
        "model.layers.0.post_attention_layernorm.weight": "c023b3567a31dd96",
        "model.layers.0.self_attn.k_proj.weight": "8fb5488e1bd8f7e4",
        "model.layers.0.self_attn.o_proj.weight": "4db691fe24289286",
        "model.layers.0.self_attn.q_proj.weight": "56af7fecbb4a05fc",
        "model.layers.0.self_attn.v_proj.weight": "a267c1bc5c7756af",
        "model.layers.1.input_layernorm.weight": "ac8b721c81254739",
        "model.layers.1.mlp.down_proj.weight": "af2bfed1044abb4e",
        "model.layers.1.mlp.gate_proj.weight": "17b578ff3a1d00b9",
        "model.layers.1.mlp.up_proj.weight": "48c875abc4f858e7",
        "model.layers.1.post_attention_layernorm.weight": "06a58dbb35f4e763",
        "model.layers.1.self_attn.k_proj.weight": "7de2eacd07952d06",
        "model.layers.1.self_attn.o_proj.weight": "08dfa60a93ae48aa",
        "model.layers.1.self_attn.q_proj.weight": "fc6fd9da95e29809",
        "model.layers.1.self_attn.v_proj.weight": "f7f05d8be1b4ce95",
        "model.layers.2.input_layernorm.weight": "699c836d5de559bd",
        "model.layers.2.mlp.down_proj.weight": "cbc9a3b68ed3d320",
        "model.layers.2.mlp.gate_proj.weight": "2f5c8ac3562c08dd",
        "model.layers.2.mlp.up_proj.weight": "5ff31c8c1896ebcf",
        "model.layers.2.post_attention_layernorm.weight": "94d542f655b6b46f",
        "model.layers.2.self_attn.k_proj.weight": "f802ebf65cba0aed",
        "model.layers.2.self_attn.o_proj.weight": "65e84c6f46bd1e15",
        "model.layers.2.self_attn.q_proj.weight": "c76864b10f1f5d90",
        "model.layers.2.self_attn.v_proj.weight": "e74165606d570dd6",
        "model.norm.weight": "5e0dad4a40562f81",
    },
    "passthrough_models_bf16": {
        "lm_head.weight": "4d59042a802f140a",
        "model.embed_tokens.weight": "0a68242a488cbcb3",
        "model.layers.0.input_layernorm.weight": "f8e7f54622d250c0",
        "model.layers.0.mlp.down_proj.weight": "f64dc5f0f26419a4",
        "model.layers.0.mlp.gate_proj.weight": "bca944625b441ba6",
        "model.layers.0.mlp.up_proj.weight": "2099f91e2beac8fd",
        "model.layers.0.post_attention_layernorm.weight": "62437161032eaac9",
        "model.layers.0.self_attn.k_proj.weight": "9d5f8a330c219188",
        "model.layers.0.self_attn.o_proj.weight": "f651426dfcee7781",
        "model.layers.0.self_attn.q_proj.weight": "89d6542bdf28180d",
        "model.layers.0.self_attn.v_proj.weight": "ae7c674a785f27df",
        "model.layers.1.input_layernorm.weight": "abe7f17b105a8add",
        "model.layers.1.mlp.down_proj.weight": "2b4dfa9365fb738a",
        "model.layers.1.mlp.gate_proj.weight": "3e4758cfc3d299aa",
        "model.layers.1.mlp.up_proj.weight": "63fc0270143e75be",
        "model.layers.1.post_attention_layernorm.weight": "431d650aed87ce49",
        "model.layers.1.self_attn.k_proj.weight": "0d7fece7981a1955",
        "model.layers.1.self_attn.o_proj.weight": "06d0bca3e4ba31f5",
        "model.layers.1.self_attn.q_proj.weight": "5567db96e7d62554",
        "model.layers.1.self_attn.v_proj.weight": "af46005444d79088",
        "model.layers.2.input_layernorm.weight": "73e3c647343729d2",
        "model.layers.2.mlp.down_proj.weight": "84948818b143d3e7",
        "model.layers.2.mlp.gate_proj.weight": "189674f03dd9b18d",
        "model.layers.2.mlp.up_proj.weight": "8c6de2b39f5ed64b",
        "model.layers.2.post_attention_layernorm.weight": "3ec37b660ec323a1",
        "model.layers.2.self_attn.k_proj.weight": "7fcc455f46c45521",
        "model.layers.2.self_attn.o_proj.weight": "dcd46853f6dc9e87",
        "model.layers.2.self_attn.q_proj.weight": "2beff18a4f903863",
        "model.layers.2.self_attn.v_proj.weight": "ada0eaf7553196f0",
        "model.norm.weight": "6c28ead66869d5a3",
    },
    "frankenmerge_bf16": {
        "lm_head.weight": "4d4d35386f4eaf43",
        "model.embed_tokens.weight": "ddc8fea78b5d7549",
        "model.layers.0.input_layernorm.weight": "e8b1f3afc6fb26b3",
        "model.layers.0.mlp.down_proj.weight": "dbf97055442ce741",
        "model.layers.0.mlp.gate_proj.weight": "dabacbea8a9ad6fb",
        "model.layers.0.mlp.up_proj.weight": "0f87e48bc27c6fce",
        "model.layers.0.post_attention_layernorm.weight": "d0be9181ba5e1dfe",
        "model.layers.0.self_attn.k_proj.weight": "a8f32a1b1ae6ade3",
        "model.layers.0.self_attn.o_proj.weight": "d86147bff11c383f",
        "model.layers.0.self_attn.q_proj.weight": "1c0c46dc6b085882",
        "model.layers.0.self_attn.v_proj.weight": "9c9aca45dcb956ec",
        "model.layers.1.input_layernorm.weight": "6591e1a01ea43354",
        "model.layers.1.mlp.down_proj.weight": "5825d7b3b0ba70e9",
        "model.layers.1.mlp.gate_proj.weight": "42996e75b0743dd3",
        "model.layers.1.mlp.up_proj.weight": "df7f8586a3ab4ad8",
        "model.layers.1.post_attention_layernorm.weight": "306a5f28b0a3514b",
        "model.layers.1.self_attn.k_proj.weight": "ba85e434e9221b5d",
        "model.layers.1.self_attn.o_proj.weight": "b1f75c74c8f66754",
        "model.layers.1.self_attn.q_proj.weight": "19834b62b27667eb",
        "model.layers.1.self_attn.v_proj.weight": "f955d3af284193ed",
        "model.layers.2.input_layernorm.weight": "0297e02daa0b316e",
        "model.layers.2.mlp.down_proj.weight": "3e9fb324c0a68b7b",
        "model.layers.2.mlp.gate_proj.weight": "f0e46f30835479a6",
        "model.layers.2.mlp.up_proj.weight": "9c4919d2c642c311",
        "model.layers.2.post_attention_layernorm.weight": "705cb9d4c086bc4f",
        "model.layers.2.self_attn.k_proj.weight": "91a2397d2d4f6863",
        "model.layers.2.self_attn.o_proj.weight": "262d60814eefb0a6",
        "model.layers.2.self_attn.q_proj.weight": "3433f95efbafc19b",
        "model.layers.2.self_attn.v_proj.weight": "1a726e342a100cea",
        "model.layers.3.input_layernorm.weight": "fb781a2bd0cc8783",
        "model.layers.3.mlp.down_proj.weight": "cb5b661b207eaeff",
        "model.layers.3.mlp.gate_proj.weight": "8273f5b9fbe74bf7",
        "model.layers.3.mlp.up_proj.weight": "afa82691fa31750c",
        "model.layers.3.post_attention_layernorm.weight": "d4ba520f54a43c66",
        "model.layers.3.self_attn.k_proj.weight": "b67f8c0298b22033",
        "model.layers.3.self_attn.o_proj.weight": "e8b33796e59333d4",
        "model.layers.3.self_attn.q_proj.weight": "6ba6697b8a353df0",
        "model.layers.3.self_attn.v_proj.weight": "cf68ec707f564a46",
        "model.norm.weight": "e275839c22ccc8e2",
    },
    "slices_ties_bf16": {
        "lm_head.weight": "04eaf82b2ddf73b8",
        "model.embed_tokens.weight": "7711ccec1d5adb86",
        "model.layers.0.input_layernorm.weight": "3649e180fd3b972c",
        "model.layers.0.mlp.down_proj.weight": "70d1b9045e0506a7",
        "model.layers.0.mlp.gate_proj.weight": "6bf772d3de65cb16",
        "model.layers.0.mlp.up_proj.weight": "460aa76efd3c313c",
        "model.layers.0.post_attention_layernorm.weight": "aa60e64e00f5e369",
        "model.layers.0.self_attn.k_proj.weight": "2f8854432a0f8e93",
        "model.layers.0.self_attn.o_proj.weight": "e7adf2faf0a570ec",
        "model.layers.0.self_attn.q_proj.weight": "d049f85be0baf88e",
        "model.layers.0.self_attn.v_proj.weight": "876bb36ea89db98b",
        "model.layers.1.input_layernorm.weight": "76352e59e1d742a1",
        "model.layers.1.mlp.down_proj.weight": "e87e0a46d4038c28",
        "model.layers.1.mlp.gate_proj.weight": "4c7065b5846ea89d",
        "model.layers.1.mlp.up_proj.weight": "22245a5fdf7dfa91",
        "model.layers.1.post_attention_layernorm.weight": "dbf0cfe4bc7bbe10",
        "model.layers.1.self_attn.k_proj.weight": "3019b9660d667ee0",
        "model.layers.1.self_attn.o_proj.weight": "3c254eccd515bc61",
        "model.layers.1.self_attn.q_proj.weight": "6f728952556a63e3",
        "model.layers.1.self_attn.v_proj.weight": "9392830194be8462",
        "model.layers.2.input_layernorm.weight": "05440a4b30ac1380",
        "model.layers.2.mlp.down_proj.weight": "51b13a13f688b033",
        "model.layers.2.mlp.gate_proj.weight": "1ad40f5bf2a82237",
        "model.layers.2.mlp.up_proj.weight": "84864b3f655b0ee7",
        "model.layers.2.post_attention_layernorm.weight": "902b53decbc4b54b",
        "model.layers.2.self_attn.k_proj.weight": "758ca7ffb00a560d",
        "model.layers.2.self_attn.o_proj.weight": "a4188171805f4feb",
        "model.layers.2.self_attn.q_proj.weight": "67ab3bc6d202e82c",
        "model.layers.2.self_attn.v_proj.weight": "4b8360eaee35ab96",
        "model.layers.3.input_layernorm.weight": "73e3c647343729d2",
        "model.layers.3.mlp.down_proj.weight": "253fa8bf26c779ab",
        "model.layers.3.mlp.gate_proj.weight": "374eeb5c14a95ac3",
        "model.layers.3.mlp.up_proj.weight": "5003476eec9b01b7",
        "model.layers.3.post_attention_layernorm.weight": "3ec37b660ec323a1",
        "model.layers.3.self_attn.k_proj.weight": "85a9cd4e5f320445",
        "model.layers.3.self_attn.o_proj.weight": "04c81467032e3f5b",
        "model.layers.3.self_attn.q_proj.weight": "2a134287fcf743bd",
        "model.layers.3.self_attn.v_proj.weight": "2f18f833c04515c3",
        "model.norm.weight": "7966ecbcedb1cd1a",
    },
    "base_plus_adapter_bf16": {
        "lm_head.weight": "ba3a24e4e9aff81d",
        "model.embed_tokens.weight": "867e7664cb9cfa2e",
        "model.layers.0.input_layernorm.weight": "a251c0c94bfe4a70",
        "model.layers.0.mlp.down_proj.weight": "14aaafdf6d86bf9f",
        "model.layers.0.mlp.gate_proj.weight": "7da76187a28c8a82",
        "model.layers.0.mlp.up_proj.weight": "ff4eb8e8ed40dd8f",
        "model.layers.0.post_attention_layernorm.weight": "18f9048f105bcabc",
        "model.layers.0.self_attn.k_proj.weight": "3c97a15253983b77",
        "model.layers.0.self_attn.o_proj.weight": "c39402d85cbf6934",
        "model.layers.0.self_attn.q_proj.weight": "d6a520ad41f87002",
        "model.layers.0.self_attn.v_proj.weight": "15b0dfe10f787a62",
        "model.layers.1.input_layernorm.weight": "effa2ab741fdff86",
        "model.layers.1.mlp.down_proj.weight": "574d20993e349698",
        "model.layers.1.mlp.gate_proj.weight": "2390d072cdd3ca69",
        "model.layers.1.mlp.up_proj.weight": "9ef9518986bc6e78",
        "model.layers.1.post_attention_layernorm.weight": "50504b32ff6e52d7",
        "model.layers.1.self_attn.k_proj.weight": "0754fc3ae36ebdc4",
        "model.layers.1.self_attn.o_proj.weight": "79a5929950683fe9",
        "model.layers.1.self_attn.q_proj.weight": "f038edf67933b779",
        "model.layers.1.self_attn.v_proj.weight": "48f81c0f916b2515",
        "model.layers.2.input_layernorm.weight": "e21c3551ef82d853",
        "model.layers.2.mlp.down_proj.weight": "93e0d8c6ccc1c152",
        "model.layers.2.mlp.gate_proj.weight": "17c8a57e3fb6ab1a",
        "model.layers.2.mlp.up_proj.weight": "5763dbd8a3618f1d",
        "model.layers.2.post_attention_layernorm.weight": "592ad2d889a25d26",
        "model.layers.2.self_attn.k_proj.weight": "9a1b3903fcac556a",
        "model.layers.2.self_attn.o_proj.weight": "d14bd280a865fe1a",
        "model.layers.2.self_attn.q_proj.weight": "6ba3919ab43aac46",
        "model.layers.2.self_attn.v_proj.weight": "ddffdaaf2c8d7592",
        "model.norm.weight": "8afd0e6c1fe3b5fe",
    },
    "lora_merge_bf16": {
        "lm_head.weight": "eea98617337f0167",
        "model.embed_tokens.weight": "ddc8fea78b5d7549",
        "model.layers.0.input_layernorm.weight": "e8b1f3afc6fb26b3",
        "model.layers.0.mlp.down_proj.weight": "dbf97055442ce741",
        "model.layers.0.mlp.gate_proj.weight": "dabacbea8a9ad6fb",
        "model.layers.0.mlp.up_proj.weight": "0f87e48bc27c6fce",
        "model.layers.0.post_attention_layernorm.weight": "d0be9181ba5e1dfe",
        "model.layers.0.self_attn.k_proj.weight": "a8f32a1b1ae6ade3",
        "model.layers.0.self_attn.o_proj.weight": "d86147bff11c383f",
        "model.layers.0.self_attn.q_proj.weight": "5e8707e5fc5c0529",
        "model.layers.0.self_attn.v_proj.weight": "65171d2f75559e15",
        "model.layers.1.input_layernorm.weight": "6591e1a01ea43354",
        "model.layers.1.mlp.down_proj.weight": "5825d7b3b0ba70e9",
        "model.layers.1.mlp.gate_proj.weight": "42996e75b0743dd3",
        "model.layers.1.mlp.up_proj.weight": "df7f8586a3ab4ad8",
        "model.layers.1.post_attention_layernorm.weight": "306a5f28b0a3514b",
        "model.layers.1.self_attn.k_proj.weight": "ba85e434e9221b5d",
        "model.layers.1.self_attn.o_proj.weight": "b1f75c74c8f66754",
        "model.layers.1.self_attn.q_proj.weight": "9a55e8f0995ab2f1",
        "model.layers.1.self_attn.v_proj.weight": "c825d70573a1e7ca",
        "model.layers.2.input_layernorm.weight": "6f081bd322d0f26c",
        "model.layers.2.mlp.down_proj.weight": "d725f18e24caa696",
        "model.layers.2.mlp.gate_proj.weight": "c6a0ea0b561fdbc0",
        "model.layers.2.mlp.up_proj.weight": "388a0131f402a9b9",
        "model.layers.2.post_attention_layernorm.weight": "0825e551f84160e6",
        "model.layers.2.self_attn.k_proj.weight": "34f5b021f2e843d7",
        "model.layers.2.self_attn.o_proj.weight": "b20c51e0096b48ba",
        "model.layers.2.self_attn.q_proj.weight": "b1a108d79da171f3",
        "model.layers.2.self_attn.v_proj.weight": "789909c7dfc2ddf4",
        "model.norm.weight": "8c812166b1231d02",
    },
    "lora_merge_bf16_to_fp32": {
        "lm_head.weight": "fa4eeda8bc3523ae",
        "model.embed_tokens.weight": "909af2f98e666f88",
        "model.layers.0.input_layernorm.weight": "c3deb263c0bc78e7",
        "model.layers.0.mlp.down_proj.weight": "50a16f352e8dd476",
        "model.layers.0.mlp.gate_proj.weight": "9ade96b7e52bbf7c",
        "model.layers.0.mlp.up_proj.weight": "692e964ef442a7bb",
        "model.layers.0.post_attention_layernorm.weight": "11736ffd23833b03",
        "model.layers.0.self_attn.k_proj.weight": "3d8f0376ace558d0",
        "model.layers.0.self_attn.o_proj.weight": "d55fce391a735b40",
        "model.layers.0.self_attn.q_proj.weight": "18caf52d3d74c02b",
        "model.layers.0.self_attn.v_proj.weight": "994b8a834394fdbe",
        "model.layers.1.input_layernorm.weight": "ac10b34e8fb0587c",
        "model.layers.1.mlp.down_proj.weight": "da248dc700401b00",
        "model.layers.1.mlp.gate_proj.weight": "00cf5dc0b1e2088f",
        "model.layers.1.mlp.up_proj.weight": "e8520cd579775b19",
        "model.layers.1.post_attention_layernorm.weight": "2333d107e65d36ba",
        "model.layers.1.self_attn.k_proj.weight": "5c37495aefc05b06",
        "model.layers.1.self_attn.o_proj.weight": "b8ff87d912077629",
        "model.layers.1.self_attn.q_proj.weight": "0208d12507db7048",
        "model.layers.1.self_attn.v_proj.weight": "96ff56cde8f8c9a9",
        "model.layers.2.input_layernorm.weight": "7affcb4dd3fc1285",
        "model.layers.2.mlp.down_proj.weight": "0e1e926f4cea8cf8",
        "model.layers.2.mlp.gate_proj.weight": "8dea2fab22babc1d",
        "model.layers.2.mlp.up_proj.weight": "313dd152268dd382",
        "model.layers.2.post_attention_layernorm.weight": "7ff040bfa2b24a90",
        "model.layers.2.self_attn.k_proj.weight": "f4d99f86235efd0b",
        "model.layers.2.self_attn.o_proj.weight": "8402391344166787",
        "model.layers.2.self_attn.q_proj.weight": "4174b6b78e98b439",
        "model.layers.2.self_attn.v_proj.weight": "e8aab810111b57c1",
        "model.norm.weight": "f303f2187771117a",
    },
    "lora_merge_fp32_weight_half": {
        "lm_head.weight": "2188d15b4dfdf6fb",
        "model.embed_tokens.weight": "c52b0f434b1d1815",
        "model.layers.0.input_layernorm.weight": "b8acf23970a6e2ff",
        "model.layers.0.mlp.down_proj.weight": "3554b60a8ab65ad6",
        "model.layers.0.mlp.gate_proj.weight": "d945cabc1cb81098",
        "model.layers.0.mlp.up_proj.weight": "a7d11b20c0389b05",
        "model.layers.0.post_attention_layernorm.weight": "9f5f519210363d1c",
        "model.layers.0.self_attn.k_proj.weight": "6f76d9a7769386da",
        "model.layers.0.self_attn.o_proj.weight": "4493d4a5a6e946da",
        "model.layers.0.self_attn.q_proj.weight": "57ab4645a56ee1f5",
        "model.layers.0.self_attn.v_proj.weight": "0fe3991afa3f5e77",
        "model.layers.1.input_layernorm.weight": "2a270cdddd484626",
        "model.layers.1.mlp.down_proj.weight": "6bbaf2efd857e5ad",
        "model.layers.1.mlp.gate_proj.weight": "5c470a71fd4a591c",
        "model.layers.1.mlp.up_proj.weight": "399e63a5cf728175",
        "model.layers.1.post_attention_layernorm.weight": "2af8f5ef71d0233b",
        "model.layers.1.self_attn.k_proj.weight": "53c3a73057c96de3",
        "model.layers.1.self_attn.o_proj.weight": "b2a44ebf5c0a13ae",
        "model.layers.1.self_attn.q_proj.weight": "b6585e7cd1c9e819",
        "model.layers.1.self_attn.v_proj.weight": "2cae678a322fbde9",
        "model.layers.2.input_layernorm.weight": "cf4c7cd9cb96d056",
        "model.layers.2.mlp.down_proj.weight": "71a297205bdd24d3",
        "model.layers.2.mlp.gate_proj.weight": "e88aace246064458",
        "model.layers.2.mlp.up_proj.weight": "4b27799bfb5c2d1d",
        "model.layers.2.post_attention_layernorm.weight": "458e1064c20c62a4",
        "model.layers.2.self_attn.k_proj.weight": "65825b674693f600",
        "model.layers.2.self_attn.o_proj.weight": "3013fada9c3a18c0",
        "model.layers.2.self_attn.q_proj.weight": "7f6427278e070f04",
        "model.layers.2.self_attn.v_proj.weight": "1e8e459ea0f1a4d7",
        "model.norm.weight": "288452d2d962726b",
    },
}


if __name__ == "__main__":
    if sys.argv[1:] != ["--print"]:
        sys.exit(f"usage: python {sys.argv[0]} --print   (prints freshly generated PINNED / PINNED_TENSORS)")
    print_pins()
