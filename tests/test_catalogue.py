"""A catalogue of bad inputs and faults, one table, each run through the real command line.

Every case asserts the whole promise of README's "Errors and exit codes" and "Reliability": the exit
code documented for its error class, exactly one ``error:`` line (or, for the problems that are
reported all at once by design, only ``error:`` lines on stderr) holding the fragment that names the
file, tensor or key, no traceback, nothing left in or beside OUT (OUT's parent is listed before and
after, hidden entries included: no partial directory, no lock file), and every input byte-identical.

Cases run in-process through ``tests.conftest.run_cli`` (cheap: the tiny models are built once);
signals need a real ``python -m mergebench`` process, paused mid-write by the writer's test hook
(``MERGEBENCH_TEST_PAUSE``) so that the signal lands while the temporary output exists. Faults of the
disk are injected at the one OS (or ``Path``) call they concern, under this case's directory only.

A case that does not hold today, in a module this file's author may not change, is marked
``xfail(strict=True)`` with the fix it needs; once fixed, the strict xfail fails and must be removed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.conftest import Family, run_cli, save_model, snapshot, tiny_llama_config
from tests.conftest_demo import make_tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
Q_PROJ = "model.layers.0.self_attn.q_proj"  # 32 × 32 in tiny_llama_config
V_PROJ = "model.layers.1.self_attn.v_proj"  # 16 × 32 (two key/value heads of 8)
PREFIX = "base_model.model."


# ---- the shared, read-only inputs ------------------------------------------------------------------


@dataclass(frozen=True)
class Shared:
    """Inputs every case may read (never write): a model of another family, a wider Llama, two LoRA
    adapters of the family's base, and a tiny model with a tokenizer (and one without) for eval."""

    root: Path
    gpt2: Path
    wide: Path
    adapter: Path
    adapter2: Path
    eval_model: Path
    eval_bare: Path


def write_adapter_dir(
    path: Path,
    modules: dict[str, tuple[int, int]],
    *,
    r: int = 2,
    alpha: float = 4,
    seed: int = 0,
    config: dict | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """A PEFT LoRA adapter written by hand (PEFT's file format, no PEFT needed): ``modules`` maps a
    module path to its (out, in) features; ``tensors`` adds or replaces keys, ``drop`` removes some."""
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for module, (rows, cols) in modules.items():
        weights[f"{PREFIX}{module}.lora_A.weight"] = torch.randn(r, cols, generator=generator) * 0.1
        weights[f"{PREFIX}{module}.lora_B.weight"] = torch.randn(rows, r, generator=generator) * 0.1
    weights.update(tensors or {})
    for key in drop:
        weights.pop(key)
    path.mkdir(parents=True, exist_ok=True)
    save_file(weights, path / "adapter_model.safetensors", metadata={"format": "pt"})
    settings = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules}),
        "base_model_name_or_path": None,
        **(config or {}),
    }
    (path / "adapter_config.json").write_text(json.dumps(settings))
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory, llama_family: Family) -> Shared:
    import transformers

    root = tmp_path_factory.mktemp("catalogue_shared")
    torch.manual_seed(0)
    gpt2_config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32)
    gpt2 = save_model(transformers.GPT2LMHeadModel(gpt2_config), root / "gpt2")
    wide = save_model(transformers.LlamaForCausalLM(tiny_llama_config(hidden_size=48)), root / "wide")
    adapter = write_adapter_dir(root / "adapter", {Q_PROJ: (32, 32), V_PROJ: (16, 32)}, seed=1)
    adapter2 = write_adapter_dir(root / "adapter2", {Q_PROJ: (32, 32)}, r=4, alpha=4, seed=2)
    eval_model = make_tiny_model_dir(root / "eval_model")
    eval_bare = make_tiny_model_dir(root / "eval_bare", with_tokenizer=False)
    return Shared(root, gpt2, wide, adapter, adapter2, eval_model, eval_bare)


# ---- one case's world ------------------------------------------------------------------------------


@dataclass
class Env:
    """What a case's ``build`` works with: its own directory (inputs it changes are copied into
    ``in/``), the shared models, and ``out`` (default ``outs/out``, ``outs`` existing and holding a
    neighbour's file that must survive)."""

    tmp: Path
    fam: Family
    shared: Shared
    monkeypatch: pytest.MonkeyPatch
    out: Path
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def write(self, name: str, data: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path

    def config(self, data: dict | list | str, name: str = "merge.yaml") -> Path:
        text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
        return self.write(name, text)

    def copy(self, model: Path, name: str | None = None) -> Path:
        return Path(shutil.copytree(model, self.tmp / "in" / (name or model.name)))

    def merge(self, data: dict | list | str, *extra: str) -> list[str]:
        return ["merge", str(self.config(data)), str(self.out), "--no-progress", *extra]


Build = Callable[[Env], list[str]]


@dataclass(frozen=True)
class Case:
    """One bad input or fault. ``build`` prepares files and returns the CLI arguments (``args`` are
    appended); ``several``: the command reports several problems at once by design (each stderr line
    is then an ``error:`` line); ``signal``: delivered to a real process paused before tensor
    ``pause``; ``xfail``: a defect in a module outside this file's remit, with the fix it needs."""

    name: str
    kind: str
    build: Build
    args: tuple[str, ...]
    exit_code: int
    fragment: str
    several: bool = False
    signal: int | None = None
    pause: float = 3
    repeats: int = 1  # the signal is sent this many times, 0.1 s apart (Ctrl-C pressed again)
    xfail: str | None = None
    skip: str | None = None


# ---- configs -------------------------------------------------------------------------------------


def ties(env: Env) -> dict:
    f = env.fam
    return {
        "merge_method": "ties",
        "base_model": str(f.base),
        "models": [
            {"model": str(f.ft1), "parameters": {"weight": 1.0, "density": 0.5}},
            {"model": str(f.ft2), "parameters": {"weight": 0.5, "density": 0.7}},
        ],
        "dtype": "float32",
    }


def linear(env: Env) -> dict:
    f = env.fam
    return {
        "merge_method": "linear",
        "models": [
            {"model": str(f.ft1), "parameters": {"weight": 0.5}},
            {"model": str(f.ft2), "parameters": {"weight": 0.5}},
        ],
    }


def slerp(env: Env) -> dict:
    return {
        "merge_method": "slerp",
        "base_model": str(env.fam.base),
        "models": [{"model": str(env.fam.base)}, {"model": str(env.fam.ft1)}],
        "parameters": {"t": 0.5},
    }


def stack(env: Env) -> dict:
    """A frankenmerge: layers 0–1 of the base, then 1–2 of ft1."""
    return {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(env.fam.base), "layer_range": [0, 2]}]},
            {"sources": [{"model": str(env.fam.ft1), "layer_range": [1, 3]}]},
        ],
    }


def sliced_ties(env: Env) -> dict:
    f = env.fam
    return {
        "merge_method": "ties",
        "base_model": str(f.base),
        "slices": [
            {
                "sources": [
                    {"model": str(f.base), "layer_range": [0, 3]},
                    {"model": str(f.ft1), "layer_range": [0, 3], "parameters": {"weight": 1.0}},
                ]
            }
        ],
        "parameters": {"density": 0.5},
    }


Edit = Callable[[dict], object]


def _walk(data: dict, key: str) -> tuple[dict | list, str | int]:
    *parents, last = key.split(".")
    node: dict | list = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})  # type: ignore[index]
    return node, int(last) if isinstance(node, list) else last


def put(key: str, value: object) -> Edit:
    """Set a dotted key (list indices as numbers) of a config."""

    def edit(data: dict) -> None:
        node, last = _walk(data, key)
        node[last] = value  # type: ignore[index]

    return edit


def drop(key: str) -> Edit:
    def edit(data: dict) -> None:
        node, last = _walk(data, key)
        del node[last]  # type: ignore[arg-type]

    return edit


def rename(key: str, new: str) -> Edit:
    def edit(data: dict) -> None:
        node, last = _walk(data, key)
        node[new] = node.pop(last)  # type: ignore[union-attr,arg-type]

    return edit


def edited(*edits: Edit, make: Callable[[Env], dict] = ties, command: str = "merge") -> Build:
    """The config ``make`` gives, with ``edits`` applied, run by ``command`` (merge or validate)."""

    def build(env: Env) -> list[str]:
        data = make(env)
        for edit in edits:
            edit(data)
        if command == "validate":
            return ["validate", str(env.config(data))]
        return env.merge(data)

    return build


def raw(text: str | bytes | Callable[[Env], str]) -> Build:
    """A config file with exactly these bytes (``{base}``, ``{ft1}``, ``{ft2}`` filled in)."""

    def build(env: Env) -> list[str]:
        body = text(env) if callable(text) else text
        if isinstance(body, str):
            f = env.fam
            body = (
                body.replace("{base}", str(f.base)).replace("{ft1}", str(f.ft1)).replace("{ft2}", str(f.ft2))
            )
        path = env.write("merge.yaml", body)
        return ["merge", str(path), str(env.out), "--no-progress"]

    return build


RECIPE = """\
name: avg
merge_method: linear
models: [{model: {ft1}, parameters: {weight: 0.5}}, {model: {ft2}, parameters: {weight: 0.5}}]
---
name: final
merge_method: slerp
base_model: {base}
models: [{model: {base}}, {model: avg}]
parameters: {t: 0.5}
"""


FORWARD = (
    "name: first\nmerge_method: linear\nmodels: [{model: later, parameters: {weight: 1}}]\n---\n"
    + RECIPE.replace("name: avg", "name: later")
)


def listed_twice(data: dict) -> None:
    """models[0] listed again, with another weight."""
    data["models"].append({"model": data["models"][0]["model"], "parameters": {"weight": 0.1}})


def recipe(text: str, *extra: str) -> Build:
    def build(env: Env) -> list[str]:
        return [*raw(text)(env), *extra]

    return build


def alias_bomb() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\nmerge_method: linear\n"


def config_is_a_directory(env: Env) -> list[str]:
    (env.tmp / "configs").mkdir()
    return ["merge", str(env.tmp / "configs"), str(env.out)]


def with_models(*models: Callable[[Env], str], method: str = "linear", base: bool = False) -> Build:
    """A config merging these model strings (weight 0.5 each), with the family's base as base_model."""

    def build(env: Env) -> list[str]:
        data: dict = {"merge_method": method}
        if base:
            data["base_model"] = str(env.fam.base)
        data["models"] = [{"model": make(env), "parameters": {"weight": 0.5}} for make in models]
        return env.merge(data)

    return build


def ft1(env: Env) -> str:
    return str(env.fam.ft1)


def ft2(env: Env) -> str:
    return str(env.fam.ft2)


# ---- checkpoints ---------------------------------------------------------------------------------


def read_shard(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def write_shard(path: Path, header: dict, body: bytes, raw_header: bytes | None = None) -> None:
    blob = raw_header if raw_header is not None else json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + body)


def first_shard(model: Path) -> Path:
    return sorted(model.glob("model-*.safetensors"))[0]


def tensor_names(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def broken_ft1(change: Callable[[Path], object], make: Callable[[Env], dict] = ties) -> Build:
    """``make``'s config with ft1 replaced by a copy that ``change`` damaged."""

    def build(env: Env) -> list[str]:
        copy = env.copy(env.fam.ft1)
        change(copy)
        data = make(env)
        text = json.dumps(data).replace(str(env.fam.ft1), str(copy))
        return env.merge(json.loads(text))

    return build


def edit_header(edit: Callable[[dict, bytes], tuple[dict, bytes]]) -> Callable[[Path], None]:
    def change(model: Path) -> None:
        shard = first_shard(model)
        write_shard(shard, *edit(*read_shard(shard)))

    return change


def set_entry(key: str, value: object) -> Callable[[Path], None]:
    """Set one field of the first tensor's header entry in ft1's first shard."""

    def edit(header: dict, body: bytes) -> tuple[dict, bytes]:
        header[tensor_names(header)[0]][key] = value
        return header, body

    return edit_header(edit)


def raw_header(blob: bytes) -> Callable[[Path], None]:
    def change(model: Path) -> None:
        shard = first_shard(model)
        _, body = read_shard(shard)
        write_shard(shard, {}, body, raw_header=blob)

    return change


def lying_length(model: Path) -> None:
    shard = first_shard(model)
    data = shard.read_bytes()
    shard.write_bytes(struct.pack("<Q", len(data) * 4) + data[8:])


def truncate_data(model: Path) -> None:
    shard = first_shard(model)
    shard.write_bytes(shard.read_bytes()[:-100])


def edit_index(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def change(model: Path) -> None:
        index = model / "model.safetensors.index.json"
        data = json.loads(index.read_text())
        edit(data["weight_map"])
        index.write_text(json.dumps(data))

    return change


def first_in_map(weight_map: dict) -> str:
    return sorted(weight_map)[0]


def escape_index(weight_map: dict) -> None:
    weight_map[first_in_map(weight_map)] = "../ft2/" + weight_map[first_in_map(weight_map)]


def absolute_index(weight_map: dict) -> None:
    weight_map[first_in_map(weight_map)] = "/etc/passwd"


def missing_shard(weight_map: dict) -> None:
    weight_map[first_in_map(weight_map)] = "model-99999-of-99999.safetensors"


def wrong_shard(weight_map: dict) -> None:
    """The first tensor listed under a shard that does not hold it."""
    name = first_in_map(weight_map)
    weight_map[name] = next(v for v in sorted(set(weight_map.values())) if v != weight_map[name])


def tensor_in_two_shards(model: Path) -> None:
    shards = sorted(model.glob("model-*.safetensors"))
    first, second = load_file(shards[0]), load_file(shards[1])
    name = sorted(first)[0]
    second[name] = first[name]
    save_file(second, shards[1], metadata={"format": "pt"})


def update_tensors(
    edit: Callable[[dict[str, torch.Tensor]], object], *, index_too: bool = True
) -> Callable[[Path], None]:
    """Rewrite the shard holding ``model.layers.1.mlp.up_proj.weight`` through ``edit`` (and the index
    to match, unless ``index_too`` is off)."""

    def change(model: Path) -> None:
        index_path = model / "model.safetensors.index.json"
        index = json.loads(index_path.read_text())
        shard_name = index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
        tensors = load_file(model / shard_name)
        edit(tensors)
        save_file(tensors, model / shard_name, metadata={"format": "pt"})
        if index_too:
            index["weight_map"] = {
                k: v for k, v in index["weight_map"].items() if v != shard_name or k in tensors
            }
            index["weight_map"].update({k: shard_name for k in tensors})
            index_path.write_text(json.dumps(index))

    return change


UP = "model.layers.1.mlp.up_proj.weight"


def poison(value: float) -> Callable[[Path], None]:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[UP] = tensors[UP].clone()
        tensors[UP][3, 4] = value

    return update_tensors(edit)


def reshape_up(tensors: dict[str, torch.Tensor]) -> None:
    tensors[UP] = tensors[UP][:, :-1].contiguous()


def remove_up(tensors: dict[str, torch.Tensor]) -> None:
    del tensors[UP]


def extra_tensor(tensors: dict[str, torch.Tensor]) -> None:
    tensors["model.layers.1.mlp.extra.weight"] = torch.zeros(4, 4)


def int_buffer(dtype: torch.dtype) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors["model.position_ids"] = torch.arange(8, dtype=dtype)

    return edit


def other_vocab(model: Path) -> None:
    """Grow the vocabulary from 96 to 100 rows (embeddings and lm_head)."""
    index_path = model / "model.safetensors.index.json"
    weight_map = json.loads(index_path.read_text())["weight_map"]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        shard = model / weight_map[name]
        tensors = load_file(shard)
        tensors[name] = torch.cat([tensors[name], torch.zeros(4, tensors[name].shape[1])])
        save_file(tensors, shard, metadata={"format": "pt"})


def int_buffer_everywhere(dtype_ft1: torch.dtype) -> Build:
    """Base and ft2 carry an int64 buffer; ft1 carries it as ``dtype_ft1``."""

    def build(env: Env) -> list[str]:
        base, first, second = (env.copy(m) for m in (env.fam.base, env.fam.ft1, env.fam.ft2))
        update_tensors(int_buffer(torch.int64))(base)
        update_tensors(int_buffer(dtype_ft1))(first)
        update_tensors(int_buffer(torch.int64))(second)
        data = json.loads(
            json.dumps(ties(env))
            .replace(str(env.fam.base), str(base))
            .replace(str(env.fam.ft1), str(first))
            .replace(str(env.fam.ft2), str(second))
        )
        return env.merge(data)

    return build


def both_reshaped(env: Env) -> list[str]:
    """ft1 and ft2 both disagree with the base on one tensor's shape: two problems, reported together."""
    first, second = env.copy(env.fam.ft1), env.copy(env.fam.ft2)
    for model in (first, second):
        update_tensors(reshape_up)(model)
    text = json.dumps(ties(env)).replace(str(env.fam.ft1), str(first)).replace(str(env.fam.ft2), str(second))
    return env.merge(json.loads(text))


def pickled_model(evil: bool, allow: bool) -> Build:
    """ft1 as a pickled ``pytorch_model.bin``: plain tensors, or a pickle that would call a function."""

    def build(env: Env) -> list[str]:
        model = env.tmp / "in" / "pickled"
        model.mkdir(parents=True)
        shutil.copy(env.fam.ft1 / "config.json", model)
        state: dict = {}
        for shard in sorted(env.fam.ft1.glob("*.safetensors")):
            state.update(load_file(shard))
        if evil:
            state["x"] = Reducer()
        torch.save(state, model / "pytorch_model.bin")
        data = json.loads(json.dumps(linear(env)).replace(str(env.fam.ft1), str(model)))
        return env.merge(data, *(["--allow-pickle"] if allow else []))

    return build


class Reducer:
    """Unpickles as a call of ``os.getcwd``: what weights-only loading must refuse."""

    def __reduce__(self):
        return (os.getcwd, ())


def model_is_a_file(env: Env) -> list[str]:
    file = env.write("in/model.bin", b"not a model")
    return with_models(lambda e: str(file), ft2)(env)


def empty_model_dir(env: Env) -> list[str]:
    (env.tmp / "in" / "empty").mkdir(parents=True)
    return with_models(lambda e: str(e.tmp / "in" / "empty"), ft2)(env)


def mistyped_hub_like(env: Env) -> list[str]:
    """``models/ft1`` mistyped as ``mdoels/ft1``: looks like a hub id; offline, so nothing is fetched."""
    import huggingface_hub.constants

    env.monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    env.monkeypatch.chdir(env.tmp)
    return with_models(lambda e: "mdoels/ft1", ft2)(env)


def bad_config_json(model: Path) -> None:
    (model / "config.json").write_text("{not json")


def tiny_shard(model: Path) -> None:
    first_shard(model).write_bytes(b"\x01\x02")


# ---- adapters ------------------------------------------------------------------------------------


def adapter_case(
    command: str = "merge",
    modules: dict[str, tuple[int, int]] | None = None,
    *,
    second: bool = False,
    extra: tuple[str, ...] = (),
    change: Callable[[Path], object] | None = None,
    **options,
) -> Build:
    """A hand-made adapter (``modules``, default q_proj) for the family's base, run by ``lora merge``,
    ``lora concat`` (with the shared adapter first when ``second``), ``merge`` (as base+adapter) or
    ``inspect``."""

    def build(env: Env) -> list[str]:
        adapter = write_adapter_dir(env.tmp / "in" / "adapter", modules or {Q_PROJ: (32, 32)}, **options)
        if change is not None:
            change(adapter)
        base = str(env.fam.base)
        if command == "merge":
            return ["lora", "merge", base, str(adapter), "--out", str(env.out), "--no-progress", *extra]
        if command == "concat":
            inputs = [str(env.shared.adapter), str(adapter)] if second else [str(adapter)]
            return ["lora", "concat", *inputs, "--out", str(env.out), *extra]
        if command == "inspect":
            return ["inspect", str(adapter)]
        assert command == "config"
        return with_models(lambda e: f"{base}+{adapter}", ft2)(env)

    return build


weighted_saved = adapter_case(
    "concat", tensors={f"{PREFIX}model.norm.weight": torch.ones(32)}, extra=("--weights", "0.5")
)
nan_factor_compressed = adapter_case(
    "concat",
    tensors={f"{PREFIX}{Q_PROJ}.lora_A.weight": torch.full((2, 32), float("nan"))},
    second=True,
    extra=("--rank", "1"),
)


def lora_merge(*extra: str, adapter: Callable[[Env], str] = lambda e: str(e.shared.adapter)) -> Build:
    def build(env: Env) -> list[str]:
        base = str(env.fam.base)
        return ["lora", "merge", base, adapter(env), "--out", str(env.out), "--no-progress", *extra]

    return build


def lora_concat(*extra: str) -> Build:
    def build(env: Env) -> list[str]:
        return [
            "lora",
            "concat",
            str(env.shared.adapter),
            str(env.shared.adapter2),
            "--out",
            str(env.out),
            *extra,
        ]

    return build


def lora_extract(
    base: Callable[[Env], str], finetuned: Callable[[Env], str], *extra: str, rank: int = 2
) -> Build:
    def build(env: Env) -> list[str]:
        return [
            "lora", "extract", "--base", base(env), "--finetuned", finetuned(env),
            "--rank", str(rank), "--out", str(env.out), *extra,
        ]  # fmt: skip

    return build


def base_of(env: Env) -> str:
    return str(env.fam.base)


def poisoned_ft1(env: Env) -> str:
    copy = env.copy(env.fam.ft1)
    poison(float("nan"))(copy)
    return str(copy)


def pickled_adapter(evil: bool, allow: bool) -> Build:
    def build(env: Env) -> list[str]:
        adapter = env.tmp / "in" / "pickled"
        adapter.mkdir(parents=True)
        shutil.copy(env.shared.adapter / "adapter_config.json", adapter)
        state: dict = dict(load_file(env.shared.adapter / "adapter_model.safetensors"))
        if evil:
            state["x"] = Reducer()
        torch.save(state, adapter / "adapter_model.bin")
        args = ["lora", "merge", str(env.fam.base), str(adapter), "--out", str(env.out), "--no-progress"]
        return args + (["--allow-pickle"] if allow else [])

    return build


def no_adapter_config(adapter: Path) -> None:
    (adapter / "adapter_config.json").unlink()


def no_adapter_weights(adapter: Path) -> None:
    (adapter / "adapter_model.safetensors").unlink()


def corrupt_adapter_config(adapter: Path) -> None:
    (adapter / "adapter_config.json").write_text('{"r": 2,')


def corrupt_adapter_header(adapter: Path) -> None:
    path = adapter / "adapter_model.safetensors"
    _, body = read_shard(path)
    write_shard(path, {}, body, raw_header=b"{oops")


def empty_adapter_weights(adapter: Path) -> None:
    write_shard(adapter / "adapter_model.safetensors", {}, b"")


def missing_adapter(env: Env) -> list[str]:
    return ["lora", "merge", str(env.fam.base), str(env.tmp / "no-adapter"), "--out", str(env.out)]


def missing_lora_base(env: Env) -> list[str]:
    return ["lora", "merge", str(env.tmp / "no-base"), str(env.shared.adapter), "--out", str(env.out)]


def fan_in_fan_out_clash(env: Env) -> list[str]:
    adapter = write_adapter_dir(env.tmp / "in" / "fifo", {Q_PROJ: (32, 32)}, config={"fan_in_fan_out": True})
    return ["lora", "concat", str(env.shared.adapter), str(adapter), "--out", str(env.out)]


def saved_differs(env: Env) -> list[str]:
    norm = "model.layers.0.input_layernorm.weight"
    one = write_adapter_dir(env.tmp / "in" / "a", {Q_PROJ: (32, 32)}, tensors={PREFIX + norm: torch.ones(32)})
    two = write_adapter_dir(
        env.tmp / "in" / "b", {Q_PROJ: (32, 32)}, tensors={PREFIX + norm: torch.zeros(32)}
    )
    return ["lora", "concat", str(one), str(two), "--out", str(env.out)]


def only_saved_first(env: Env) -> list[str]:
    """The first adapter holds only a saved tensor (modules_to_save), the second LoRA factors."""
    saved = write_adapter_dir(
        env.tmp / "in" / "saved", {}, tensors={f"{PREFIX}model.norm.weight": torch.ones(32)}
    )
    return ["lora", "concat", str(saved), str(env.shared.adapter), "--out", str(env.out)]


def only_saved(env: Env) -> list[str]:
    saved = write_adapter_dir(
        env.tmp / "in" / "saved", {}, tensors={f"{PREFIX}model.norm.weight": torch.ones(32)}
    )
    return ["lora", "concat", str(saved), "--out", str(env.out)]


# ---- outputs -------------------------------------------------------------------------------------


def out_exists(env: Env) -> list[str]:
    env.out.mkdir()
    (env.out / "precious.txt").write_text("keep me")
    return env.merge(ties(env))


def out_inside_input(env: Env) -> list[str]:
    copy = env.copy(env.fam.ft1)
    env.out = copy / "merged"
    return env.merge(json.loads(json.dumps(ties(env)).replace(str(env.fam.ft1), str(copy))))


def out_contains_input(env: Env) -> list[str]:
    copy = env.copy(env.fam.ft1)
    env.out = copy.parent
    return env.merge(json.loads(json.dumps(ties(env)).replace(str(env.fam.ft1), str(copy))), "--overwrite")


def out_is_input(env: Env) -> list[str]:
    copy = env.copy(env.fam.ft1)
    env.out = copy
    return env.merge(json.loads(json.dumps(ties(env)).replace(str(env.fam.ft1), str(copy))), "--overwrite")


def out_is_file(env: Env) -> list[str]:
    env.out.write_text("a file")
    return env.merge(ties(env))


def parent_is_file(env: Env) -> list[str]:
    (env.tmp / "outs" / "blocker").write_text("a file where a directory should be")
    env.out = env.tmp / "outs" / "blocker" / "deeper" / "out"
    return env.merge(ties(env))


def out_file(build: Build) -> Build:
    def wrapped(env: Env) -> list[str]:
        env.out.write_text("a file")
        return build(env)

    return wrapped


def lora_out_exists(env: Env) -> list[str]:
    env.out.mkdir()
    (env.out / "precious.txt").write_text("keep me")
    return lora_merge()(env)


def concat_out_in_adapter(env: Env) -> list[str]:
    adapter = Path(shutil.copytree(env.shared.adapter, env.tmp / "in" / "adapter"))
    env.out = adapter / "combined"
    return ["lora", "concat", str(adapter), str(env.shared.adapter2), "--out", str(env.out)]


def extract_into_base(env: Env) -> list[str]:
    base = env.copy(env.fam.base)
    env.out = base
    return lora_extract(lambda e: str(base), ft1, "--overwrite")(env)


def stages_into_input(env: Env) -> list[str]:
    inputs = env.copy(env.fam.ft2)
    text = RECIPE.replace("{ft2}", str(inputs))
    return [*raw(text)(env), "--intermediate-dir", str(inputs)]


# ---- concurrency: another holder of OUT's lock -----------------------------------------------------


def locked(build: Build, out: Callable[[Env], Path] | None = None) -> Build:
    """``build``'s command while another process's run holds the lock beside OUT (or ``out``'s)."""

    def wrapped(env: Env) -> list[str]:
        args = build(env)
        target = out(env) if out is not None else env.out
        target.parent.mkdir(parents=True, exist_ok=True)
        holder = os.open(target.with_name(f".{target.name}.lock"), os.O_RDWR | os.O_CREAT)
        fcntl.flock(holder, fcntl.LOCK_EX)
        env.cleanups.append(lambda: os.close(holder))
        return args

    return wrapped


def with_existing_out(build: Build) -> Build:
    def wrapped(env: Env) -> list[str]:
        env.out.mkdir()
        (env.out / "old.txt").write_text("the previous output")
        return build(env)

    return wrapped


def intermediate(env: Env) -> Path:
    return env.tmp / "outs" / "out-stages" / "avg"


# ---- disk faults, injected at one call under this case's directory ----------------------------------


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def fail_os(call: str, match: str, nth: int = 1, code: int = errno.ENOSPC) -> Callable[[Env], None]:
    """Make the ``nth`` ``os.<call>`` on a path (or descriptor) under the case's directory whose name
    contains ``match`` fail with ``code``, as a full (or failing) disk answers."""

    def install(env: Env) -> None:
        real = getattr(os, call)
        seen = [0]

        def fake(target, *args, **kwargs):
            path = _fd_path(target) if isinstance(target, int) else os.fspath(target)
            if str(env.tmp) in str(path) and match in os.path.basename(str(path)):
                seen[0] += 1
                if seen[0] == nth:
                    if call == "write":  # a full disk takes part of the data first
                        real(target, bytes(args[0])[: max(1, len(args[0]) // 2)])
                    raise OSError(code, os.strerror(code), str(path))
            return real(target, *args, **kwargs)

        env.monkeypatch.setattr(os, call, fake)

    return install


def fail_write_text(match: str) -> Callable[[Env], None]:
    """``Path.write_text`` of a file whose name contains ``match`` writes half, then the disk is full."""

    def install(env: Env) -> None:
        real = pathlib.Path.write_text

        def fake(self, data, *args, **kwargs):
            if str(env.tmp) in str(self) and match in self.name:
                real(self, data[: len(data) // 2], *args, **kwargs)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return real(self, data, *args, **kwargs)

        env.monkeypatch.setattr(pathlib.Path, "write_text", fake)

    return install


def faulty(build: Build, *faults: Callable[[Env], None]) -> Build:
    def wrapped(env: Env) -> list[str]:
        args = build(env)
        for fault in faults:
            fault(env)
        return args

    return wrapped


def merge_ties(env: Env) -> list[str]:
    return env.merge(ties(env), "--max-shard-size", "20KB")


def merge_with_tokenizer(env: Env) -> list[str]:
    base = env.copy(env.fam.base)
    (base / "tokenizer_config.json").write_text('{"model_max_length": 64}\n')
    return env.merge(json.loads(json.dumps(ties(env)).replace(str(env.fam.base), str(base))))


def writer_raises_once(env: Env) -> list[str]:
    """The writer thread's third write raises OutputError (as a failing disk would make it)."""
    from mergebench.errors import OutputError
    from mergebench.io.writer import ShardedWriter

    real = ShardedWriter.write
    calls = [0]

    def write(self, name, tensor, crc32=None):
        calls[0] += 1
        if calls[0] == 3:
            raise OutputError(
                f"{self.directory / self.file_names[0]}: write failed (injected in the writer thread)"
            )
        return real(self, name, tensor, crc32)

    env.monkeypatch.setattr(ShardedWriter, "write", write)
    return merge_ties(env)


def eval_json_to(env: Env) -> list[str]:
    data = env.write("data/text.jsonl", '{"text": "abc abc"}\n')
    return [
        "eval",
        str(env.shared.eval_model),
        "--data",
        str(data),
        "--device",
        "cpu",
        "--json",
        str(env.out),
    ]


# ---- eval ----------------------------------------------------------------------------------------


def eval_lines(
    *lines: str | bytes, model: Callable[[Env], str] = lambda e: str(e.shared.eval_model)
) -> Build:
    def build(env: Env) -> list[str]:
        body = b"".join(line if isinstance(line, bytes) else line.encode() + b"\n" for line in lines)
        data = env.write("data/qa.jsonl", body)
        return ["eval", model(env), "--data", str(data), "--device", "cpu"]

    return build


GOOD_LINE = '{"prompt": "add: 1+2 =", "answer": "3"}'


def eval_args(env: Env, *extra: str) -> list[str]:
    data = env.write("data/qa.jsonl", GOOD_LINE + "\n")
    return ["eval", str(env.shared.eval_model), "--data", str(data), "--device", "cpu", *extra]


def eval_missing_file(env: Env) -> list[str]:
    return ["eval", str(env.shared.eval_model), "--data", str(env.tmp / "nope.jsonl"), "--device", "cpu"]


def eval_same_stem(env: Env) -> list[str]:
    one = env.write("data/a/qa.jsonl", GOOD_LINE + "\n")
    two = env.write("data/b/qa.jsonl", GOOD_LINE + "\n")
    return ["eval", str(env.shared.eval_model), "--data", str(one), "--data", str(two), "--device", "cpu"]


def eval_data_is_dir(env: Env) -> list[str]:
    (env.tmp / "data" / "qa.jsonl").mkdir(parents=True)
    return [
        "eval",
        str(env.shared.eval_model),
        "--data",
        str(env.tmp / "data" / "qa.jsonl"),
        "--device",
        "cpu",
    ]


def eval_model_is_file(env: Env) -> list[str]:
    file = env.write("in/model.txt", "not a model")
    return eval_lines(GOOD_LINE, model=lambda e: str(file))(env)


def eval_no_config(env: Env) -> list[str]:
    model = Path(shutil.copytree(env.shared.eval_model, env.tmp / "in" / "noconfig"))
    (model / "config.json").unlink()
    return eval_lines(GOOD_LINE, model=lambda e: str(model))(env)


def eval_broken_tokenizer(env: Env) -> list[str]:
    model = Path(shutil.copytree(env.shared.eval_model, env.tmp / "in" / "badtok"))
    (model / "tokenizer.json").write_text("{broken")
    return eval_lines(GOOD_LINE, model=lambda e: str(model))(env)


def eval_broken_weights(env: Env) -> list[str]:
    model = Path(shutil.copytree(env.shared.eval_model, env.tmp / "in" / "badweights"))
    (model / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    return eval_lines(GOOD_LINE, model=lambda e: str(model))(env)


def merge_eval(*lines: str, missing: bool = False) -> Build:
    def build(env: Env) -> list[str]:
        data = env.tmp / "data" / "qa.jsonl"
        if not missing:
            env.write("data/qa.jsonl", "".join(line + "\n" for line in lines))
        return [*env.merge(linear(env)), "--eval", str(data), "--eval-device", "cpu"]

    return build


# ---- signals -------------------------------------------------------------------------------------


def merge_bf16(env: Env) -> list[str]:
    return env.merge({**ties(env), "dtype": "bfloat16"}, "--max-shard-size", "3KB")


def recipe_run(env: Env) -> list[str]:
    return [*raw(RECIPE)(env), "--max-shard-size", "3KB"]


# ---- the table -------------------------------------------------------------------------------------

HAS_CUDA = torch.cuda.is_available()

CASES: list[Case] = [
    # -- config: unknown keys at every level, typos (exit 2) --
    Case("two schema mistakes at once", "config", edited(put("frobnicate", 1), put("dtype", "f8")), (), 2,
         "frobnicate", several=True),
    Case("two parameter mistakes at once", "config",
         edited(put("models.0.parameters.density", 2), put("models.1.parameters.weight", "x")), (), 2,
         "models[0].parameters.density", several=True),
    Case("typo of a top-level key", "config", edited(rename("merge_method", "merge_methd")), (), 2,
         "did you mean 'merge_method'"),
    Case("unknown top-level key", "config", edited(put("frobnicate", 1)), (), 2, "frobnicate: unknown key"),
    Case("unknown key in a model entry", "config", edited(put("models.0.weights", 1)), (), 2,
         "models[0].weights: unknown key"),
    Case("typo of a per-model parameter", "config", edited(put("models.1.parameters.densty", 0.5)), (), 2,
         "models[1].parameters.densty: unknown parameter for 'ties'"),
    Case("unknown global parameter", "config", edited(put("parameters.lamda", 1.0)), (), 2,
         "parameters.lamda: unknown parameter"),
    Case("unknown key in a slice", "config", edited(put("slices.0.source", []), make=stack), (), 2,
         "slices[0].source: unknown key"),
    Case("unknown key in a slice source", "config", edited(put("slices.0.sources.0.layers", 2), make=stack),
         (), 2, "slices[0].sources[0].layers: unknown key"),
    Case("unknown key in tokenizer", "config", edited(put("tokenizer", {"sorce": "union"})), (), 2,
         "tokenizer.sorce: unknown key"),
    Case("unknown key in non_layer_source", "config",
         edited(put("non_layer_source", {"middle": "x"}), make=stack), (), 2, "non_layer_source.middle"),
    Case("unknown key in a filter entry", "config",
         edited(put("models.0.parameters.density", [{"filter": "mlp", "val": 0.3}])), (), 2,
         "models[0].parameters.density[0].val: unknown key"),
    Case("unknown merge method", "config", edited(put("merge_method", "tie")), (), 2,
         "merge_method: unknown method 'tie'"),
    Case("global-only parameter set per model", "config", edited(put("models.0.parameters.lambda", 1.0)), (),
         2, "models[0].parameters.lambda: not a per-model parameter"),
    # -- config: wrong types, out-of-range values --
    Case("weight is a word", "config", edited(put("models.0.parameters.weight", "heavy")), (), 2,
         "models[0].parameters.weight: expected a number"),
    Case("models is a string", "config", edited(put("models", "ft1")), (), 2, "models"),
    Case("seed is a word", "config", edited(put("seed", "abc")), (), 2, "seed"),
    Case("unknown dtype", "config", edited(put("dtype", "float16x")), (), 2, "unknown dtype 'float16x'"),
    Case("unknown out_dtype", "config", edited(put("out_dtype", "int3")), (), 2, "unknown dtype 'int3'"),
    Case("normalize is a number", "config", edited(put("parameters.normalize", 3)), (), 2,
         "parameters.normalize: expected true or false"),
    Case("density above 1", "config", edited(put("models.0.parameters.density", 1.5)), (), 2,
         "models[0].parameters.density: must be"),
    Case("density 0", "config", edited(put("models.1.parameters.density", 0)), (), 2,
         "models[1].parameters.density: must be"),
    Case("slerp t above 1", "config", edited(put("parameters.t", 1.2), make=slerp), (), 2,
         "parameters.t: must be"),
    Case("weight is NaN", "config", edited(put("models.0.parameters.weight", float("nan"))), (), 2,
         "finite number within float32"),
    Case("weight 1e39", "config", edited(put("models.1.parameters.weight", 1e39)), (), 2,
         "models[1].parameters.weight: must be a finite number"),
    Case("lambda -inf", "config", edited(put("parameters.lambda", float("-inf"))), (), 2,
         "parameters.lambda"),
    Case("layer_range holds a word", "config",
         edited(put("slices.0.sources.0.layer_range", [0, "x"]), make=stack), (), 2,
         "slices[0].sources[0].layer_range"),
    Case("top level is a list", "config", raw("- merge_method: linear\n"), (), 2,
         "expected a mapping of keys"),
    # -- config: lists --
    Case("empty models list", "config", edited(put("models", [])), (), 2, "models: at least one model"),
    Case("empty gradient", "config", edited(put("models.0.parameters.weight", [])), (), 2,
         "models[0].parameters.weight: empty list"),
    Case("filter entry without value", "config",
         edited(put("models.0.parameters.density", [{"filter": "mlp"}])), (), 2,
         "density[0].value: required key is missing"),
    Case("filter is not a string", "config", edited(put("parameters.lambda", [{"filter": 3, "value": 0.5}])),
         (), 2, "lambda[0].filter: expected a string"),
    Case("parameter is a mapping", "config", edited(put("models.0.parameters.weight", {"a": 1})), (), 2,
         "models[0].parameters.weight: expected a value"),
    Case("gradient with a word", "config", edited(put("models.0.parameters.weight", [0.1, "x"])), (), 2,
         "models[0].parameters.weight[1]: expected a number"),
    Case("gradient with a nested list", "config", edited(put("models.0.parameters.weight", [[0.1], 0.2])), (),
         2, "models[0].parameters.weight[0]: a gradient is a list of numbers"),
    Case("gradient with a boolean", "config", edited(put("models.1.parameters.weight", [True, 0.5])), (), 2,
         "models[1].parameters.weight[0]"),
    Case("filter matching no tensor", "config",
         edited(put("models.0.parameters.density", [{"filter": "mlpx", "value": 0.3}, {"value": 0.5}])), (),
         4, "filter 'mlpx' matches no tensor"),
    # -- config: slices --
    Case("layer range reversed", "config", edited(put("slices.0.sources.0.layer_range", [2, 0]), make=stack),
         (), 2, "slices[0].sources[0].layer_range: [2, 0] is empty or reversed"),
    Case("layer range empty", "config", edited(put("slices.1.sources.0.layer_range", [2, 2]), make=stack), (),
         2, "slices[1].sources[0].layer_range"),
    Case("slice sources of different lengths", "config",
         edited(put("slices.0.sources.1.layer_range", [0, 2]), make=sliced_ties), (), 2,
         "slices[0].sources[1].layer_range: [0, 2] spans 2 layers"),
    Case("layer range beyond the model", "config",
         edited(put("slices.1.sources.0.layer_range", [1, 9]), make=stack), (), 4, "slices[1]"),
    Case("non_layer_source with models:", "config", edited(put("non_layer_source", "x")), (), 2,
         "non_layer_source: only applies to 'slices'"),
    Case("non_layer_source is a number", "config", edited(put("non_layer_source", 3), make=stack), (), 2,
         "non_layer_source"),
    Case("non_layer_source names no model", "config", edited(put("non_layer_source", {}), make=stack), (), 2,
         "non_layer_source: give a model"),
    Case("non_layer_source directory missing", "config",
         edited(put("non_layer_source", {"after": "./missing-model"}), make=stack), (), 3,
         "non_layer_source.after: ./missing-model"),
    Case("per-slice base_model not among its sources", "config",
         edited(put("slices.0.base_model", "./other"), make=sliced_ties), (), 2,
         "slices[0].sources: merge_method 'ties' needs base_model './other'"),
    Case("slerp with three models", "config",
         edited(lambda d: d["models"].append({"model": d["models"][1]["model"] + "x"}), make=slerp), (), 2,
         "merge_method 'slerp' needs exactly 2 models"),
    Case("ties without base_model", "config", edited(drop("base_model")), (), 2, "base_model: required"),
    Case("both models and slices", "config",
         edited(put("slices", [{"sources": [{"model": "x", "layer_range": [0, 1]}]}])), (), 2,
         "give exactly one of 'models' and 'slices'"),
    Case("linear weight missing", "config", edited(drop("models.1.parameters.weight"), make=linear), (), 2,
         "models[1].parameters.weight: required by 'linear'"),
    Case("a model listed twice with other parameters", "config", edited(listed_twice), (), 2,
         "models[2].model"),
    Case("tokenizer_source not a model of the config", "config",
         edited(put("tokenizer_source", "./elsewhere")), (), 2, "tokenizer_source: './elsewhere'"),
    Case("tokenizer and tokenizer_source both", "config",
         edited(put("tokenizer_source", "base"), put("tokenizer", {"source": "base"})), (), 2,
         "give either tokenizer_source or tokenizer"),
    Case("chat_template unknown", "config", edited(put("chat_template", "chatml2")), (), 2, "chat_template"),
    Case("validate: unknown parameter", "config", edited(put("parameters.densty", 1), command="validate"), (),
         2, "parameters.densty"),
    # -- config: the file itself --
    Case("YAML syntax error", "config", raw("merge_method: ties\nmodels: [a, b\n"), (), 2, "invalid YAML"),
    Case("non-UTF-8 file", "config", raw(b"merge_method: lin\xe9ar\n"), (), 2, "not UTF-8"),
    Case("empty file", "config", raw(""), (), 2, "expected a mapping of keys"),
    Case("YAML alias bomb", "config", raw(alias_bomb()), (), 2, "YAML aliases expand"),
    Case("missing config file", "config", lambda env: ["merge", str(env.tmp / "nope.yaml"), str(env.out)], (),
         2, "nope.yaml: cannot read config"),
    Case("directory given as config", "config", config_is_a_directory, (), 2, "configs"),
    Case("--seed is not a number", "config", edited(), ("--seed", "abc"), 2, "--seed"),
    Case("--device cuda without CUDA", "config", edited(), ("--device", "cuda"), 2, "--device cuda",
         skip="this machine has CUDA" if HAS_CUDA else None),
    Case("lora merge --device cuda without CUDA", "config", lora_merge("--device", "cuda"), (), 2,
         "--device cuda", skip="this machine has CUDA" if HAS_CUDA else None),
    Case("lora extract --device cuda without CUDA", "config", lora_extract(base_of, ft1, "--device", "cuda"),
         (), 2, "--device cuda", skip="this machine has CUDA" if HAS_CUDA else None),
    # -- config: multi-stage recipes --
    Case("recipe: unnamed stage before the last", "config", recipe(RECIPE.replace("name: avg\n", "")), (), 2,
         "document 1: every stage but the last needs a 'name'"),
    Case("recipe: a name used twice", "config", recipe(RECIPE.replace("name: final", "name: avg")), (), 2,
         "stage 'avg' is defined twice"),
    Case("recipe: forward reference", "config", recipe(FORWARD), (), 2, "uses stage 'later'"),
    Case("recipe: --stage unknown", "config", recipe(RECIPE, "--stage", "nope"), (), 2,
         "--stage: no stage named 'nope'"),
    Case("--stage with a single config", "config", edited(), ("--stage", "avg"), 2,
         "--stage: CONFIG is a single merge"),
    Case("recipe: a stage with a bad parameter", "config", recipe(RECIPE.replace("t: 0.5", "t: 5")), (), 2,
         "stage 'final'"),
    Case("recipe: a document that is a list", "config", recipe(RECIPE + "---\n- 1\n"), (), 2,
         "document 3: expected a merge config mapping"),
    # -- checkpoints (exit 3; inputs that disagree: exit 4) --
    Case("model directory missing", "checkpoint", with_models(lambda e: "./no-such-model", ft2), (), 3,
         "models[0].model: ./no-such-model: model directory not found"),
    Case("model path ending in a newline (YAML block scalar)", "checkpoint",
         with_models(lambda e: "./ft1-typo\n", ft2), (), 3, "'./ft1-typo\\n': model directory not found"),
    Case("model is a file", "checkpoint", model_is_a_file, (), 3, "expected a model directory, found a file"),
    Case("mistyped path that looks like a hub id", "checkpoint", mistyped_hub_like, (), 3,
         "models[0].model: mdoels/ft1: no local directory of that name"),
    Case("empty model directory", "checkpoint", empty_model_dir, (), 3, "no model.safetensors"),
    Case("header is not JSON", "checkpoint", broken_ft1(raw_header(b"{not json")), (), 3, "(not valid JSON)"),
    Case("header is a JSON list", "checkpoint", broken_ft1(raw_header(b"[1, 2]")), (), 3,
         "not a JSON object"),
    Case("header length beyond the file", "checkpoint", broken_ft1(lying_length), (), 3,
         "corrupt or truncated safetensors header"),
    Case("shard shorter than 8 bytes", "checkpoint", broken_ft1(tiny_shard), (), 3, "shorter than 8 bytes"),
    Case("truncated tensor data", "checkpoint", broken_ft1(truncate_data), (), 3, "truncated shard"),
    Case("unknown dtype code", "checkpoint", broken_ft1(set_entry("dtype", "F12")), (), 3,
         "unsupported dtype 'F12'"),
    Case("byte length does not match the shape", "checkpoint", broken_ft1(set_entry("shape", [3, 3])), (), 3,
         "byte length does not match"),
    Case("negative dimension", "checkpoint", broken_ft1(set_entry("shape", [-1, 4])), (), 3,
         "corrupt header entry"),
    Case("index escapes the directory", "checkpoint", broken_ft1(edit_index(escape_index)), (), 3,
         "points outside"),
    Case("index names an absolute path", "checkpoint", broken_ft1(edit_index(absolute_index)), (), 3,
         "is not a plain relative path"),
    Case("index names a missing shard", "checkpoint", broken_ft1(edit_index(missing_shard)), (), 3,
         "shard model-99999-of-99999.safetensors is missing"),
    Case("index puts a tensor in the wrong shard", "checkpoint", broken_ft1(edit_index(wrong_shard)), (), 3,
         "is not in shard"),
    Case("index weight_map empty", "checkpoint", broken_ft1(edit_index(lambda m: m.clear())), (), 3,
         "missing or empty 'weight_map'"),
    Case("tensor stored in two shards", "checkpoint", broken_ft1(tensor_in_two_shards), (), 3,
         "stored in two shards"),
    Case("config.json is not JSON", "checkpoint", broken_ft1(bad_config_json), (), 3,
         "config.json: unreadable JSON"),
    Case("pickled weights without --allow-pickle", "checkpoint", pickled_model(evil=False, allow=False), (),
         3, "--allow-pickle"),
    Case("pickle that calls a function, --allow-pickle", "checkpoint", pickled_model(evil=True, allow=True),
         (), 3, "cannot load pickled weights"),
    Case("NaN inside weights, ties", "checkpoint", broken_ft1(poison(float("nan"))), (), 3, f"tensor '{UP}'"),
    Case("Inf inside weights, slerp", "checkpoint", broken_ft1(poison(float("inf")), make=slerp), (), 3,
         "slerp needs finite weights"),
    Case("shape mismatch", "checkpoint", broken_ft1(update_tensors(reshape_up)), (), 4, UP),
    Case("shape mismatch in two models", "checkpoint", both_reshaped, (), 4, UP, several=True),
    Case("missing tensor", "checkpoint", broken_ft1(update_tensors(remove_up)), (), 4, UP),
    Case("extra tensor", "checkpoint", broken_ft1(update_tensors(extra_tensor)), (), 4,
         "model.layers.1.mlp.extra.weight"),
    Case("different vocabulary", "checkpoint", broken_ft1(other_vocab), (), 4, "model.embed_tokens.weight",
         several=True),
    Case("integer buffer of another dtype", "checkpoint", int_buffer_everywhere(torch.int32), (), 4,
         "model.position_ids"),
    Case("validate: missing model", "checkpoint", edited(put("base_model", "./gone"), command="validate"), (),
         3, "base_model: ./gone"),
    Case("inspect: missing model", "checkpoint", lambda env: ["inspect", str(env.tmp / "gone")], (), 3,
         "model directory not found"),
    Case("lora merge: base missing", "checkpoint", missing_lora_base, (), 3, "no-base"),
    Case("lora extract: NaN in the finetune", "checkpoint", lora_extract(base_of, poisoned_ft1), (), 3, UP),
    # -- adapters (exit 7; --weights is a CLI flag: exit 2) --
    Case("adapter directory missing", "adapter", missing_adapter, (), 7, "no-adapter"),
    Case("adapter_config.json missing", "adapter", adapter_case(change=no_adapter_config), (), 7,
         "no adapter_config.json"),
    Case("adapter_config.json is not JSON", "adapter", adapter_case(change=corrupt_adapter_config), (), 7,
         "adapter_config.json: unreadable JSON"),
    Case("adapter weights missing", "adapter", adapter_case(change=no_adapter_weights), (), 7,
         "no adapter_model.safetensors"),
    Case("adapter header corrupt", "adapter", adapter_case(change=corrupt_adapter_header), (), 7,
         "adapter_model.safetensors: corrupt safetensors header"),
    Case("adapter holds no tensors", "adapter", adapter_case(change=empty_adapter_weights), (), 7,
         "holds no LoRA weights"),
    Case("r is 0", "adapter", adapter_case(config={"r": 0}), (), 7, "positive number for 'r'"),
    Case("r is a word", "adapter", adapter_case(config={"r": "four"}), (), 7, "positive number for 'r'"),
    Case("lora_alpha negative", "adapter", adapter_case(config={"lora_alpha": -1}), (), 7, "'lora_alpha'"),
    Case("r differs from the weights", "adapter", adapter_case(config={"r": 8}), (), 7,
         "has rank 2 in the weights but 8"),
    Case("rank_pattern not a mapping", "adapter", adapter_case(config={"rank_pattern": [1]}), (), 7,
         "rank_pattern must be a mapping"),
    Case("peft_type IA3", "adapter", adapter_case(config={"peft_type": "IA3"}), (), 7,
         "peft_type 'IA3' is not supported"),
    Case("target_parameters", "adapter", adapter_case(config={"target_parameters": ["mlp.experts.w"]}), (), 7,
         "target_parameters"),
    Case("layer_replication", "adapter", adapter_case(config={"layer_replication": [[0, 2]]}), (), 7,
         "layer_replication"),
    Case("trainable tokens", "adapter", adapter_case(config={"trainable_token_indices": [1, 2]}), (), 7,
         "trainable_token_indices"),
    Case("activated LoRA", "adapter", adapter_case(config={"alora_invocation_tokens": [5]}), (), 7,
         "alora_invocation_tokens"),
    Case("conv LoRA factors", "adapter",
         adapter_case(tensors={f"{PREFIX}{Q_PROJ}.lora_A.weight": torch.zeros(2, 32, 1, 1)}), (), 7,
         "only linear and embedding LoRA layers"),
    Case("B factor missing", "adapter", adapter_case(drop=(f"{PREFIX}{Q_PROJ}.lora_B.weight",)), (), 7,
         "lacks its B factor"),
    Case("unknown LoRA tensor kind", "adapter",
         adapter_case(tensors={f"{PREFIX}{Q_PROJ}.lora_E": torch.zeros(2)}), (), 7,
         "unsupported adapter kind"),
    Case("module not in the base", "adapter",
         adapter_case(modules={"model.layers.7.self_attn.q_proj": (32, 32)}), (), 7,
         "module 'model.layers.7.self_attn.q_proj' is not in the base"),
    Case("module shape mismatch", "adapter", adapter_case(modules={Q_PROJ: (48, 32)}), (), 7,
         "update is 48×32"),
    Case("lora_bias on a layer without bias", "adapter",
         adapter_case(tensors={f"{PREFIX}{Q_PROJ}.lora_B.bias": torch.zeros(32)}), (), 7,
         "has lora_bias but the base layer has no bias"),
    Case("saved tensor not in the base", "adapter",
         adapter_case(tensors={f"{PREFIX}model.extra_norm.weight": torch.ones(32)}), (), 7,
         "saved tensor 'model.extra_norm.weight' has no counterpart"),
    Case("saved tensor of another shape", "adapter",
         adapter_case(tensors={f"{PREFIX}model.norm.weight": torch.ones(31)}), (), 7,
         "saved tensor 'model.norm.weight' has shape [31]"),
    Case("DoRA magnitude of the wrong shape", "adapter",
         adapter_case(tensors={f"{PREFIX}{Q_PROJ}.lora_magnitude_vector": torch.ones(7)}), (), 7,
         "DoRA magnitude has shape [7]"),
    Case("pickled adapter without --allow-pickle", "adapter", pickled_adapter(evil=False, allow=False), (), 7,
         "--allow-pickle"),
    Case("pickled adapter that calls a function", "adapter", pickled_adapter(evil=True, allow=True), (), 7,
         "cannot load pickled weights"),
    Case("base+adapter with the adapter missing", "adapter",
         with_models(lambda e: f"{e.fam.base}+{e.tmp / 'gone'}", ft2), (), 7, "models[0].model"),
    Case("base+adapter with an empty adapter part", "adapter", with_models(lambda e: f"{e.fam.base}+", ft2),
         (), 7, "expected 'base+adapter'"),
    Case("base+adapter that does not fit", "adapter", adapter_case("config", modules={Q_PROJ: (48, 32)}), (),
         7, "update is 48×32"),
    Case("inspect an adapter with a bad config", "adapter", adapter_case("inspect", config={"r": -2}), (), 7,
         "positive number for 'r'"),
    Case("concat: DoRA", "adapter",
         adapter_case("concat", tensors={f"{PREFIX}{Q_PROJ}.lora_magnitude_vector": torch.ones(32)}), (), 7,
         "DoRA module"),
    Case("concat: fan_in_fan_out disagrees", "adapter", fan_in_fan_out_clash, (), 7, "fan_in_fan_out"),
    Case("concat: one module of two shapes", "adapter",
         adapter_case("concat", {Q_PROJ: (16, 32)}, second=True), (), 7, f"module '{Q_PROJ}'"),
    Case("concat: saved tensors differ", "adapter", saved_differs, (), 7, "differs between"),
    Case("concat: saved tensor weighted", "adapter", weighted_saved, (), 7, "cannot be weighted"),
    Case("concat: first adapter only saved tensors, weighted", "adapter", only_saved_first,
         ("--weights", "2,1"), 7, "cannot be weighted"),
    Case("concat: no LoRA modules at all", "adapter", only_saved, (), 7, "no LoRA modules to concatenate"),
    Case("concat: --rank 0", "adapter", lora_concat("--rank", "0"), (), 7, "--rank must be at least 1"),
    Case("concat: NaN in a factor, --rank", "adapter", nan_factor_compressed, (), 7, Q_PROJ),
    Case("--weights: wrong count", "adapter", lora_merge("--weights", "1,2"), (), 2,
         "--weights: 2 weights given for 1 adapters"),
    Case("--weights: NaN", "adapter", lora_merge("--weights", "nan"), (), 2, "finite number"),
    Case("--weights: inf", "adapter", lora_concat("--weights", "1,inf"), (), 2, "finite number"),
    Case("--weights: not numbers", "adapter", lora_merge("--weights", "a"), (), 2,
         "is not a comma-separated list of numbers"),
    Case("extract: a model from itself", "adapter", lora_extract(base_of, base_of), (), 7, "does not differ"),
    Case("extract: unrelated architectures", "adapter", lora_extract(base_of, lambda e: str(e.shared.gpt2)),
         (), 7, "not the same architecture"),
    Case("extract: same names, every shape differs", "adapter",
         lora_extract(base_of, lambda e: str(e.shared.wide)), (), 7, "not the same architecture"),
    Case("extract: --rank 0", "adapter", lora_extract(base_of, ft1, rank=0), (), 7,
         "--rank must be at least 1"),
    # -- outputs (exit 5; a bad --max-shard-size is a config flag: exit 2) --
    Case("OUT exists and is not empty", "output", out_exists, (), 5, "exists and is not empty"),
    Case("OUT inside an input", "output", out_inside_input, (), 5, "output is inside input model"),
    Case("OUT contains an input", "output", out_contains_input, (), 5, "output would contain input model"),
    Case("OUT is an input, --overwrite", "output", out_is_input, (), 5, "input model"),
    Case("OUT is a file", "output", out_is_file, (), 5, "exists and is not a directory"),
    Case("a file where OUT's parent should be", "output", parent_is_file, (), 5,
         "cannot create output directory"),
    Case("--max-shard-size not a size", "output", edited(), ("--max-shard-size", "big"), 2,
         "--max-shard-size: not a size: 'big'"),
    Case("--max-shard-size 0", "output", edited(), ("--max-shard-size", "0"), 2,
         "shard size must be positive"),
    Case("lora merge: OUT not empty", "output", lora_out_exists, (), 5, "exists and is not empty"),
    Case("lora merge: OUT is a file", "output", out_file(lora_merge()), (), 5,
         "exists and is not a directory"),
    Case("lora concat: OUT is a file", "output", out_file(lora_concat()), (), 5,
         "exists and is not a directory"),
    Case("lora extract: OUT is a file", "output", out_file(lora_extract(base_of, ft1)), (), 5,
         "exists and is not a directory"),
    Case("lora concat: OUT inside an adapter", "output", concat_out_in_adapter, (), 5, "inside input model"),
    Case("lora extract: OUT is the base", "output", extract_into_base, (), 5, "input model"),
    Case("recipe: intermediate dir is an input", "output", stages_into_input, (), 5, "stage 'avg'"),
    Case("eval --json is a directory", "output", lambda env: eval_args(env, "--json", str(env.tmp / "outs")),
         (), 6, "cannot write results (is a directory)"),
    Case("eval --json under a file", "output",
         lambda env: [*eval_args(env, "--json", str(env.write("outs/file", "x") / "scores.json"))], (), 6,
         "cannot write results"),
    # -- disk full (and other write failures) under commands other than merge's shards (exit 5) --
    Case("disk full: lora merge shard", "disk", faulty(lora_merge(), fail_os("write", "model-")), (), 5,
         "No space left on device"),
    Case("disk full: lora merge config.json", "disk", faulty(lora_merge(), fail_os("write", "config.json")),
         (), 5, "config.json"),
    Case("disk full: concat weights", "disk", faulty(lora_concat(), fail_os("write", "adapter_model")), (), 5,
         "adapter_model.safetensors"),
    Case("disk full: concat adapter_config.json", "disk",
         faulty(lora_concat(), fail_write_text("adapter_config.json")), (), 5, "adapter_config.json"),
    Case("disk full: extract README.md", "disk",
         faulty(lora_extract(base_of, ft1), fail_write_text("README.md")), (), 5, "README.md"),
    Case("disk full: model card", "disk", faulty(merge_ties, fail_os("write", "README.md")), (), 5,
         "README.md"),
    Case("disk full: tokenizer copy", "disk",
         faulty(merge_with_tokenizer, fail_os("write", "tokenizer_config")), (), 5, "tokenizer_config.json"),
    Case("I/O error syncing a shard", "disk",
         faulty(merge_ties, fail_os("fsync", "model-0000", 2, errno.EIO)), (), 5, "Input/output error"),
    Case("rename into place fails", "disk", faulty(merge_ties, fail_os("rename", "partial", 1, errno.EXDEV)),
         (), 5, "cannot publish output"),
    Case("writer thread raises", "disk", writer_raises_once, (), 5, "injected in the writer thread"),
    Case("disk full: recipe intermediate stage", "disk",
         faulty(recipe_run, fail_os("write", "model-0000", 3)), (), 5, "stage 'avg'"),
    Case("disk full: recipe stage record", "disk", faulty(recipe_run, fail_write_text("mergebench-stage")),
         (), 5, "mergebench-stage.json"),
    Case("disk full: eval --json", "disk", faulty(eval_json_to, fail_write_text("out")), (), 6,
         "cannot write results"),
    # -- concurrency: OUT's lock held by another run (exit 5) --
    Case("lock held: merge", "concurrency", locked(merge_ties), (), 5, "another mergebench run is writing"),
    Case("lock held: merge --overwrite", "concurrency", locked(with_existing_out(merge_ties)),
         ("--overwrite",), 5, "another mergebench run is writing"),
    Case("lock held: merge --resume", "concurrency", locked(merge_ties), ("--resume",), 5,
         "another mergebench run is writing"),
    Case("lock held: lora merge", "concurrency", locked(lora_merge()), (), 5, "another mergebench run"),
    Case("lock held: lora concat", "concurrency", locked(lora_concat()), (), 5, "another mergebench run"),
    Case("lock held: lora extract", "concurrency", locked(lora_extract(base_of, ft1)), (), 5,
         "another mergebench run"),
    Case("lock held: a recipe's intermediate stage", "concurrency", locked(recipe_run, intermediate), (), 5,
         "stage 'avg'"),
    # -- signals: a real process interrupted while its temporary output exists (exit 130) --
    Case("SIGINT during merge", "signal", merge_bf16, (), 130, "interrupted", signal=signal.SIGINT, pause=3),
    Case("SIGTERM halfway through a tensor", "signal", merge_bf16, (), 130, "interrupted",
         signal=signal.SIGTERM, pause=5.5),
    Case("SIGTERM during lora merge", "signal", lora_merge("--max-shard-size", "3KB"), (), 130, "interrupted",
         signal=signal.SIGTERM, pause=2),
    Case("SIGINT in a recipe's first stage", "signal", recipe_run, (), 130, "interrupted",
         signal=signal.SIGINT, pause=4),
    Case("SIGINT twice: Ctrl-C again during the cleanup", "signal", merge_bf16, (), 130, "interrupted",
         signal=signal.SIGINT, pause=3, repeats=2),
    # -- eval (exit 6) --
    Case("eval: bad JSONL line", "eval", eval_lines(GOOD_LINE, '{"prompt": "a", "answer": "b"'), (), 6,
         "qa.jsonl:2: invalid JSON"),
    Case("eval: empty file", "eval", eval_lines(), (), 6, "data file is empty"),
    Case("eval: only blank lines", "eval", eval_lines("", "   "), (), 6, "data file is empty"),
    Case("eval: line of another kind", "eval", eval_lines('{"foo": 1}'), (), 6,
         ":1: line has neither prompt/answer nor text"),
    Case("eval: answer missing", "eval", eval_lines('{"prompt": "a"}'), (), 6, ":1: missing 'answer'"),
    Case("eval: prompt not a string", "eval", eval_lines('{"prompt": 3, "answer": "b"}'), (), 6,
         ":1: 'prompt' must be a string"),
    Case("eval: prompt and text in one line", "eval",
         eval_lines('{"prompt": "a", "answer": "b", "text": "c"}'), (), 6, "not both"),
    Case("eval: empty text", "eval", eval_lines('{"text": ""}'), (), 6, ":1: 'text' is empty"),
    Case("eval: a JSON list", "eval", eval_lines("[1, 2]"), (), 6, ":1: expected a JSON object"),
    Case("eval: non-UTF-8 data", "eval", eval_lines(b'{"text": "\xff"}\n'), (), 6, "cannot read data file"),
    Case("eval: missing file", "eval", eval_missing_file, (), 6, "data file not found"),
    Case("eval: data file is a directory", "eval", eval_data_is_dir, (), 6, "qa.jsonl"),
    Case("eval: two files with one stem", "eval", eval_same_stem, (), 6, "share the stem 'qa'"),
    Case("eval: missing model", "eval", eval_lines(GOOD_LINE, model=lambda e: str(e.tmp / "no-model")), (), 6,
         "model directory not found"),
    Case("eval: model is a file", "eval", eval_model_is_file, (), 6, "model.txt"),
    Case("eval: no config.json", "eval", eval_no_config, (), 6, "no config.json"),
    Case("eval: model without tokenizer", "eval",
         eval_lines(GOOD_LINE, model=lambda e: str(e.shared.eval_bare)), (), 6, "has no tokenizer"),
    Case("eval: tokenizer unreadable", "eval", eval_broken_tokenizer, (), 6, "cannot load tokenizer"),
    Case("eval: weights unreadable", "eval", eval_broken_weights, (), 6, "cannot load model"),
    Case("eval: --batch-size 0", "eval", lambda env: eval_args(env, "--batch-size", "0"), (), 6,
         "--batch-size"),
    Case("eval: --max-new-tokens 0", "eval", lambda env: eval_args(env, "--max-new-tokens", "0"), (), 6,
         "--max-new-tokens"),
    Case("eval: --device cuda without CUDA", "eval", lambda env: eval_args(env)[:-1] + ["cuda"], (), 6,
         "CUDA is not available", skip="this machine has CUDA" if HAS_CUDA else None),
    Case("merge --eval with a bad file", "eval", merge_eval("{nope"), (), 6, "qa.jsonl:1: invalid JSON"),
    Case("merge --eval with a missing file", "eval", merge_eval(missing=True), (), 6, "data file not found"),
    Case("merge --eval of models without a tokenizer", "eval", merge_eval(GOOD_LINE), (), 6, "no tokenizer"),
]  # fmt: skip


def _params() -> list:
    params = []
    for case in CASES:
        marks = []
        if case.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
        if case.skip:
            marks.append(pytest.mark.skip(reason=case.skip))
        params.append(pytest.param(case, id=f"{case.kind}: {case.name}", marks=marks))
    return params


# ---- the one test --------------------------------------------------------------------------------


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    result = run_cli(*argv)
    if not isinstance(result.exception, SystemExit):
        import traceback

        trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        raise AssertionError(
            f"uncaught {result.exception!r} (a traceback for the user):\n{trace}{result.output}"
        )
    return result.exit_code, result.stdout, result.stderr


def run_interrupted(argv: list[str], env: Env, case: Case) -> tuple[int, str, str]:
    """``python -m mergebench`` paused mid-write; ``case.signal`` arrives while its partial output exists."""
    assert case.signal is not None
    process = subprocess.Popen(
        [sys.executable, "-m", "mergebench", *argv],
        # faulthandler: a hung run is sent SIGABRT below and prints every thread's stack
        env={**os.environ, "MERGEBENCH_TEST_PAUSE": str(case.pause), "PYTHONFAULTHANDLER": "1"},
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job inherits SIGINT ignored, and Python then never turns it into
        # KeyboardInterrupt: give the child the default disposition, as a terminal's Ctrl-C finds it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = process.stderr.readline()  # type: ignore[union-attr]
        assert "paused at" in first, first + process.communicate(timeout=60)[1]
        beside = list(snapshot(env.out.parent))  # (a recipe's first stage writes into OUT-stages/)
        assert any(".partial-" in name for name in beside), beside  # the temporary output exists
        assert any(name.endswith(".lock") for name in beside), beside
        process.send_signal(case.signal)
        for _ in range(case.repeats - 1):
            time.sleep(0.1)
            process.send_signal(case.signal)
        time.sleep(0.3)  # let the main thread take the signal before the writer is let go
        try:
            stdout, stderr = process.communicate("\n", timeout=120)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            stdout, stderr = process.communicate(timeout=30)
            raise AssertionError(f"no exit within 120 s of {case.signal!r}; stacks:\n{stderr}") from None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stdout, first + stderr


@pytest.fixture
def env(tmp_path, llama_family, shared, monkeypatch) -> Iterator[Env]:
    (tmp_path / "outs").mkdir()
    (tmp_path / "outs" / "neighbour.txt").write_text("not ours")
    world = Env(tmp_path, llama_family, shared, monkeypatch, tmp_path / "outs" / "out")
    yield world
    for cleanup in world.cleanups:
        cleanup()


@pytest.mark.parametrize("case", _params())
def test_catalogue(case: Case, env: Env) -> None:
    argv = [str(a) for a in (*case.build(env), *case.args)]
    shared_roots = [env.fam.base.parent, env.shared.root]
    before_out = snapshot(env.out.parent)
    before_all = {str(p): snapshot(p) for p in (env.tmp, *shared_roots)}
    if case.signal is None:
        code, stdout, stderr = run_in_process(argv)
    else:
        code, stdout, stderr = run_interrupted(argv, env, case)
    shown = f"$ mergebench {' '.join(argv)}\n--- stdout\n{stdout}--- stderr\n{stderr}"
    assert "Traceback" not in stdout + stderr, shown
    assert code == case.exit_code, shown
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    if case.several:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(errors) >= 2 and errors == lines, shown
        assert case.fragment in "\n".join(errors), shown
    else:
        assert len(errors) == 1, shown
        assert case.fragment in errors[0], shown
    assert snapshot(env.out.parent) == before_out, f"something was left in or beside OUT\n{shown}"
    after_all = {str(p): snapshot(p) for p in (env.tmp, *shared_roots)}
    assert after_all == before_all, f"an input (or anything else) changed\n{shown}"


def test_a_signal_interrupts_once_and_a_repeat_cannot_cut_the_cleanup_short() -> None:
    """The CLI's handlers: SIGINT and SIGTERM raise KeyboardInterrupt the first time only; the old
    handlers come back afterwards; a SIGINT the parent ignored stays ignored."""
    from mergebench.cli import _interrupt_once

    # As under a terminal: Python's own SIGINT handler. A test runner started in the background of a
    # non-interactive shell inherits SIGINT ignored, and the CLI rightly keeps it so (checked below).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            previous = _interrupt_once()
            try:
                with pytest.raises(KeyboardInterrupt):
                    signal.raise_signal(signum)
                signal.raise_signal(signal.SIGINT)  # pressed again while unwinding: absorbed
                signal.raise_signal(signal.SIGTERM)
            finally:
                for number, handler in previous.items():
                    signal.signal(number, handler)
            assert {s: signal.getsignal(s) for s in before} == before
    finally:
        signal.signal(signal.SIGINT, inherited)
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        previous = _interrupt_once()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.SIGINT not in previous
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])
    finally:
        signal.signal(signal.SIGINT, ignored)


def test_the_catalogue_is_large_and_spread() -> None:
    """The issue asks for at least 100 distinct cases over every area; names are unique."""
    kinds = {case.kind for case in CASES}
    assert len(CASES) >= 100 and len({case.name for case in CASES}) == len(CASES)
    assert kinds == {"config", "checkpoint", "adapter", "output", "signal", "disk", "concurrency", "eval"}
