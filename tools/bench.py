#!/usr/bin/env python3
"""One benchmark driver for ``mergebench merge`` and ``mergebench lora merge``, honest by construction.

Contenders are separate processes run round-robin (every contender once per round, never in blocks,
their order rotated each round), each run after ``os.sync()`` on a page cache warmed once per input
set, so a noisy neighbour or the host's writeback hits them all alike. Each round also times the I/O
floor — plain Python (no torch, no mergebench) reading every input byte once and writing the output's
byte count, through the page cache; ``--floor-writes direct`` writes with O_DIRECT as mergebench's
shards are written (``both``: the two, in the same rounds, each ratio reported) — once per distinct
set of input files. Peak RSS is read through a small launcher process, because a child spawned
straight from this (large) process would inherit its resident-set high-water mark. The machine is shared, so before each run the driver waits (up to --quiet-wait s) for the rest
of it to go quiet, and records the CPU time others used during every run. Reported: min and median
wall time, median ÷ floor, median peak RSS, and the max |difference| of each contender's output from
the first mergebench contender's on a sample of tensors (all tensors for mergebench@REV, where any
difference is a regression), with the count of elements more than one bf16 rounding step apart
(mergekit computes in the config's dtype, bf16 here, so a few steps are its rounding). Methods that
draw random masks (dare_*, della*) differ from mergekit's by design (another RNG), as does
arcee_fusion (mergekit takes its threshold from randomly sampled quantiles): labelled so, not a parity
failure. With mergekit in the run, a last section checks the project's targets per method: faster
than mergekit, at most 3× the I/O floor, less peak RSS.

Methods (``--methods``, comma-separated names or groups): ``default`` = linear, task_arithmetic, ties,
dare_ties, slerp; ``new`` = the 13 added since (breadcrumbs, breadcrumbs_ties, della, della_linear, sce,
model_stock, nuslerp, multislerp, karcher, nearswap, arcee_fusion, ram, ramplus_tl); ``all`` = every
method of mergekit 0.1.5 (those 18, dare_linear and passthrough). Each has one YAML (merge_config(),
``dtype: bfloat16``) that both tools run; the table groups the methods by the files they read, under
the I/O floor of those files.

Contenders: ``mergebench`` (this checkout, copied to a snapshot first so a concurrent edit can't change
it mid-benchmark), ``mergebench@REV`` (a git worktree of REV), ``mergekit`` 0.1.5 and PEFT, each in a
virtualenv of its own that this script creates on first use (torch==2.13.0 first: an unpinned torch
pulls the multi-GB CUDA build).

Inputs are synthetic bf16 Llama-shaped checkpoints (hidden 2048, intermediate 5632, vocab 32000;
14 layers ≈ 0.85B parameters; a base and two finetunes a small move away, ~1 GB shards) and a rank-64
LoRA adapter on every linear layer of the base, all written tensor by tensor and cached in --work.

The numbers in bench/results/ were made with these commands (2-core / 24 GB CPU VM, shared with
another engineer's test runs, hence the short --quiet-wait; ``mergebench@HEAD`` is the committed
tree, since a working tree caught mid-edit may not even import):

    # smoke test of both suites, every contender (2 layers, 2 runs)
    .venv/bin/python tools/bench.py --quick --rev a13b0bb --mergekit
    .venv/bin/python tools/bench.py --quick --suite lora --rev a13b0bb --peft
    # before/after the core refactor, same run
    .venv/bin/python tools/bench.py --contenders mergebench@HEAD --rev a13b0bb --quiet-wait 10
    # LoRA against PEFT (and the refactor)
    .venv/bin/python tools/bench.py --suite lora --peft \\
        --contenders mergebench@HEAD --rev a13b0bb --quiet-wait 10
    # against mergekit 0.1.5 (its TIES takes ~100 s a run here: ~30 min in all)
    .venv/bin/python tools/bench.py --contenders mergebench@HEAD --mergekit --quiet-wait 10
    # the 13 newer methods against mergekit: smoke test, then the full run
    .venv/bin/python tools/bench.py --quick --mergekit --methods new
    .venv/bin/python tools/bench.py --contenders mergebench@HEAD --mergekit --methods new --quiet-wait 10
    # every method against an earlier revision, timing the buffered and the O_DIRECT floor alike
    .venv/bin/python tools/bench.py --contenders mergebench@HEAD --rev 407c6e1 --methods all \\
        --floor-writes both --quiet-wait 10

Plain ``mergebench`` (the default contender) is this checkout's working tree, snapshotted at start.
Other knobs: ``--device cuda`` (mergebench --device cuda, mergekit --cuda, PEFT's model moved to the
GPU before its merge), ``--threads N``, ``--mb-args "..."``, ``--layers``; ``--suite lora --layers 16 --kv-heads 4`` is the
shape the old tools/bench_lora.py used (GQA).

Each run writes ``bench/results/<suite>-<machine>-<UTC time>.csv`` (every run and a summary row per
contender and method, with the machine, versions and git revision).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The merge suite's methods: the original five (the default), then every other method of mergekit 0.1.5.
METHODS = ["linear", "task_arithmetic", "ties", "dare_ties", "slerp"]
NEW_METHODS = [
    "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce", "model_stock", "nuslerp",
    "multislerp", "karcher", "nearswap", "arcee_fusion", "ram", "ramplus_tl",
]  # fmt: skip
ALL_METHODS = [*METHODS, "dare_linear", *NEW_METHODS, "passthrough"]  # all 20 of mergekit 0.1.5
METHOD_GROUPS = {"default": METHODS, "new": NEW_METHODS, "all": ALL_METHODS}
# Methods with randomness whose outputs differ from mergekit's by design (a mergebench@REV must still
# match bit for bit: same seed): what to label mergekit's parity with instead of a failure.
RANDOM_VS_MERGEKIT = {
    **dict.fromkeys(
        ["dare_ties", "dare_linear", "della", "della_linear"], "random masks (mergekit's RNG is not ours)"
    ),
    "arcee_fusion": "mergekit samples its threshold's quantiles (unseeded) above 1M entries; ours are exact",
}
HIDDEN, INTERMEDIATE, VOCAB, HEADS, RANK = 2048, 5632, 32000, 16, 64
SHARD_BYTES = 1_000_000_000  # input shards, and the output shard size of both LoRA contenders
LORA_SHARD = "1GB"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TORCH_PIN = "torch==2.13.0"  # the CPU wheel here; an unpinned torch pulls the multi-GB CUDA build

# --------------------------------------------------------------------------------------------------
# Synthetic inputs: written tensor by tensor with a minimal safetensors writer of our own, so the
# inputs don't depend on the mergebench code under test (which may be mid-refactor).


@dataclass(frozen=True)
class Spec:
    name: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return 2 * count  # bf16


def llama_specs(layers: int, kv_heads: int) -> list[Spec]:
    kv = HIDDEN // HEADS * kv_heads
    specs = [Spec("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [
            Spec(p + "input_layernorm.weight", (HIDDEN,)),
            Spec(p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            Spec(p + "self_attn.k_proj.weight", (kv, HIDDEN)),
            Spec(p + "self_attn.v_proj.weight", (kv, HIDDEN)),
            Spec(p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            Spec(p + "post_attention_layernorm.weight", (HIDDEN,)),
            Spec(p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            Spec(p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            Spec(p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
        ]
    return specs + [Spec("model.norm.weight", (HIDDEN,)), Spec("lm_head.weight", (VOCAB, HIDDEN))]


def seeded(model_index: int, name: str):
    """A generator per (model, tensor): any tensor can be regenerated alone, in any order."""
    import torch

    return torch.Generator().manual_seed(zlib.crc32(f"{model_index}/{name}".encode()))


def synthetic_tensor(spec: Spec, model_index: int):
    """Base weights from a per-tensor seed; a finetune adds a small per-model delta to them."""
    import torch

    base = torch.randn(spec.shape, generator=seeded(0, spec.name)) * 0.02
    if spec.name.endswith("norm.weight"):
        base += 1.0
    if model_index:
        base += torch.randn(spec.shape, generator=seeded(model_index, spec.name)) * 0.002
    return base.to(torch.bfloat16)


def safetensors_header(specs: list[Spec]) -> bytes:
    """The 8-byte length and the JSON header (padded to 8 bytes, as the format asks) of one shard."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": "BF16",
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_model(path: Path, specs: list[Spec], model_index: int, config: dict) -> None:
    """One checkpoint in ~1 GB shards with an index, never more than one tensor in memory."""
    import torch

    shards: list[list[Spec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weight_map = {}
    for number, shard in enumerate(shards, 1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        with open(tmp / name, "wb") as handle:
            handle.write(safetensors_header(shard))
            for spec in shard:
                tensor = synthetic_tensor(spec, model_index)
                handle.write(memoryview(tensor.view(torch.int16).numpy()))
                weight_map[spec.name] = name
    index = {"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(path)


def build_models(models: Path, layers: int, kv_heads: int) -> dict[str, Path]:
    """base, ft1, ft2 (cached per shape under ``models``)."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": kv_heads,
        "vocab_size": VOCAB,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    specs = llama_specs(layers, kv_heads)
    paths = {}
    for index, name in enumerate(["base", "ft1", "ft2"]):
        path = paths[name] = models / name
        if not (path / "config.json").is_file():
            print(f"building {path} …", flush=True)
            write_model(path, specs, index, config)
    return paths


def build_adapter(models: Path, base: Path, layers: int, kv_heads: int) -> Path:
    """A rank-64 PEFT LoRA adapter on every linear layer of ``base`` (small: built in memory)."""
    import torch
    from safetensors.torch import save_file

    adapter = models / f"adapter-r{RANK}"
    if (adapter / "adapter_config.json").is_file():
        return adapter
    print(f"building {adapter} …", flush=True)
    tensors = {}
    for spec in llama_specs(layers, kv_heads):
        module = spec.name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] in LORA_TARGETS:
            out_features, in_features = spec.shape
            prefix = f"base_model.model.{module}"
            a = torch.randn(RANK, in_features, generator=seeded(101, module)) * 0.01
            b = torch.randn(out_features, RANK, generator=seeded(102, module)) * 0.01
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16)
    tmp = adapter.with_name(f".{adapter.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": RANK,
        "lora_alpha": 2 * RANK,
        "target_modules": LORA_TARGETS,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "base_model_name_or_path": str(base),
    }
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(adapter)
    return adapter


def merge_config(method: str, base: Path, ft1: Path, ft2: Path) -> str:
    """The mergekit-style YAML of each method (the same text goes to mergebench and mergekit).

    Parameters are what a user would write (mergekit's documented ones; defaults left out), all
    accepted by mergekit 0.1.5 and mergebench alike; every config computes and writes bfloat16 (mergekit
    computes in it; mergebench in float32, rounding the result once).
    """
    two = {ft1: "weight: 0.6", ft2: "weight: 0.4"}  # per-model parameters of a 2-finetune merge
    per_model: dict[str, dict[Path, str]] = {
        "linear": {ft1: "weight: 0.5", ft2: "weight: 0.5"},
        "task_arithmetic": two,
        "ties": {m: f"{p}, density: 0.2" for m, p in two.items()},
        "dare_ties": {m: f"{p}, density: 0.5" for m, p in two.items()},
        "dare_linear": {m: f"{p}, density: 0.5" for m, p in two.items()},
        "breadcrumbs": {m: f"{p}, density: 0.5, gamma: 0.01" for m, p in two.items()},
        "breadcrumbs_ties": {m: f"{p}, density: 0.2, gamma: 0.01" for m, p in two.items()},
        "della": {m: f"{p}, density: 0.5, epsilon: 0.1" for m, p in two.items()},
        "della_linear": {m: f"{p}, density: 0.5, epsilon: 0.1" for m, p in two.items()},
        "nuslerp": {ft1: "weight: 0.5", ft2: "weight: 0.5"},  # task vectors slerped at t = 0.5
        "multislerp": {ft1: "weight: 0.5", ft2: "weight: 0.5"},
        # no per-model parameters:
        "sce": {ft1: "", ft2: ""},
        "model_stock": {ft1: "", ft2: ""},
        "ram": {ft1: "", ft2: ""},
        "ramplus_tl": {ft1: "", ft2: ""},
        "karcher": {base: "", ft1: "", ft2: ""},  # the mean of three checkpoints (no base_model)
        "slerp": {base: "", ft1: ""},  # these two list the base too, as mergekit's examples do
        "nearswap": {base: "", ft1: ""},
        "arcee_fusion": {ft1: ""},
        "passthrough": {ft1: ""},  # a plain copy of one model: the pure I/O path
    }[method]
    global_parameters = {
        "slerp": "t: 0.5",
        "sce": "select_topk: 0.5",
        "nearswap": "t: 0.001",  # finetune deltas here are ~0.002: some entries swapped, most moved by t
    }.get(method)
    lines = [f"merge_method: {method}"]
    if "base" in method_inputs(method) and method != "karcher":
        lines.append(f"base_model: {base}")
    lines.append("models:")
    for model, parameters in per_model.items():
        lines.append(f"  - model: {model}")
        if parameters:
            lines.append(f"    parameters: {{{parameters}}}")
    if global_parameters:
        lines += ["parameters:", f"  {global_parameters}"]
    lines.append("dtype: bfloat16")
    if method in ("arcee_fusion", "ramplus_tl"):
        # mergekit 0.1.5 returns these in float32 (a float32 mask or factor promotes the result) and would
        # write twice the bytes: out_dtype keeps its output bf16 like ours (no change for mergebench)
        lines.append("out_dtype: bfloat16")
    return "\n".join(lines) + "\n"


def method_inputs(method: str) -> list[str]:
    """The models a merge method reads: its input set, which decides the floor it shares."""
    return {
        "linear": ["ft1", "ft2"],
        "slerp": ["base", "ft1"],
        "nearswap": ["base", "ft1"],
        "arcee_fusion": ["base", "ft1"],
        "passthrough": ["ft1"],
    }.get(method, ["base", "ft1", "ft2"])


def safetensors_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def output_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in safetensors_files(directory))


# --------------------------------------------------------------------------------------------------
# Processes: the floor, the launcher, the contenders' scripts.

FLOOR_SCRIPT = """
import fcntl, mmap, os, sys
inputs, out, nbytes, writes = sys.argv[1].split(os.pathsep), sys.argv[2], int(sys.argv[3]), sys.argv[4]
buf = mmap.mmap(-1, 64 << 20)  # page-aligned, as direct I/O needs
view = memoryview(buf)
for path in inputs:
    with open(path, 'rb', buffering=0) as f:
        while f.readinto(view):
            pass
os.makedirs(out, exist_ok=True)
direct = os.O_DIRECT if writes == 'direct' else 0
fd = os.open(os.path.join(out, 'floor.bin'), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | direct, 0o644)
left = nbytes
while left:
    n = min(left, len(buf))
    if n < len(buf) and direct:  # the last partial block through the page cache, as mergebench does
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~direct)
    left -= os.write(fd, view[:n])
os.close(fd)
sys.exit(3 if 'torch' in sys.modules else 0)  # the floor must not pay for a heavy import
"""

# Peak RSS is read by a small launcher process: a child spawned straight from this (large) process
# inherits its resident-set high-water mark at exec, which would pollute the reading.
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=open(sys.argv[1] + '.err', 'w'))
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], 'w').write(f"{code} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
"""


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores; /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


PEFT_SCRIPT = """
import sys, torch, transformers, peft
major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # older ones ignore "dtype" silently
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], **{dtype_kw: torch.bfloat16})
if model.dtype != torch.bfloat16:
    sys.exit(f"base loaded as {model.dtype}, not bfloat16")
model = peft.PeftModel.from_pretrained(model.to(sys.argv[5]), sys.argv[2]).merge_and_unload()
model.save_pretrained(sys.argv[3], max_shard_size=sys.argv[4])
"""


def wait_for_quiet(max_wait: float, threshold: float) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until the rest of the machine uses at most ``threshold`` cores.

    This machine is shared (another engineer's test runs take both cores for minutes): alternation
    spreads such load over all contenders, but a run under it measures the neighbour. Returns the
    seconds waited and the load (cores) seen last.
    """
    start = time.monotonic()
    while True:
        busy = busy_cpu_seconds()
        time.sleep(0.5)
        load = (busy_cpu_seconds() - busy) / 0.5
        waited = time.monotonic() - start
        if load <= threshold or waited >= max_wait:
            return waited, load


@dataclass
class Measurement:
    wall: float
    rss_gb: float
    code: int
    error: str
    others_cpu: float  # CPU seconds the rest of the machine used during the run: a noise gauge
    cpu: float  # the contender's own CPU seconds (user + system), less swayed by a busy neighbour


def timed(command: list[str], env: dict[str, str], cwd: Path, report: Path) -> Measurement:
    """One run: sync, then wall time around the launcher and the child's own peak RSS.

    Also the CPU time the rest of the machine (another engineer's tests, say) burned meanwhile: the
    whole machine's busy time minus the contender's own.
    """
    os.sync()  # no dirty pages left over from the previous run
    busy = busy_cpu_seconds()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", LAUNCHER, str(report), *command], env=env, cwd=cwd, check=False)
    wall = time.perf_counter() - start
    busy = busy_cpu_seconds() - busy
    code_text, peak_kb, cpu = report.read_text().split()
    code = int(code_text)
    error_file = Path(f"{report}.err")
    error = error_file.read_text(errors="replace")[-3000:] if code else ""
    report.unlink(missing_ok=True)
    error_file.unlink(missing_ok=True)
    others = max(0.0, busy - float(cpu))
    return Measurement(wall, int(peak_kb) / 1e6, code, error, others, float(cpu))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def tree_hash(package: Path) -> str:
    """Content hash of a package directory (what ran, whether committed or not)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def snapshot_checkout(repo: Path, work: Path) -> tuple[Path, str]:
    """A copy of ``repo/mergebench`` to run, so an edit made during the benchmark can't leak into it.

    Returns the directory to put on PYTHONPATH and the content hash of the copy (what was measured).
    """
    tmp = work / "snapshots" / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(repo / "mergebench", tmp / "mergebench", ignore=shutil.ignore_patterns("__pycache__"))
    digest = tree_hash(tmp / "mergebench")
    root = work / "snapshots" / digest
    if root.is_dir():
        shutil.rmtree(tmp)
    else:
        tmp.rename(root)
    return root, digest


def ensure_worktree(repo: Path, rev: str, work: Path) -> tuple[Path, str]:
    """A detached git worktree of ``rev`` under ``work`` (reused when already there)."""
    sha = git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}")
    path = work / f"rev-{sha[:12]}"
    if path.is_dir():
        if git(path, "rev-parse", "HEAD") != sha:
            raise SystemExit(f"{path} exists but is not a checkout of {sha}; remove it")
        return path, sha
    git(repo, "worktree", "prune")  # a worktree deleted by hand would block ``add``
    git(repo, "worktree", "add", "--detach", str(path), sha)
    return path, sha


def ensure_venv(venv: Path, packages: list[str]) -> Path:
    """A virtualenv of its own (created on first use), so the rival's pins never touch ours.

    torch is installed first and pinned: left to the packages' requirements, pip picks the multi-GB
    CUDA build. A marker file says both installs finished.
    """
    python = venv / "bin" / "python"
    marker = venv / ".bench-installed"
    wanted = " ".join([TORCH_PIN, *packages])
    if not marker.is_file() or marker.read_text() != wanted:
        print(f"installing {wanted} into {venv} …", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, TORCH_PIN], check=True)
        subprocess.run([*pip, *packages], check=True)
        marker.write_text(wanted)
    return python


def venv_versions(python: Path, packages: list[str]) -> dict[str, str]:
    code = "import sys, importlib.metadata as m; print(' '.join(m.version(p) for p in sys.argv[1:]))"
    out = subprocess.run([str(python), "-c", code, *packages], check=True, capture_output=True, text=True)
    return dict(zip(packages, out.stdout.split(), strict=True))


# --------------------------------------------------------------------------------------------------
# Contenders and tasks.


@dataclass
class Contender:
    name: str  # "floor", "mergebench", "mergebench@a13b0bb", "mergekit", "peft"
    kind: str  # floor | mergebench | mergekit | peft
    env: dict[str, str]
    python: str = sys.executable
    root: Path | None = None  # mergebench: the directory put on PYTHONPATH
    version: str = ""  # git sha / tree hash / package versions, for the CSV
    note: str = ""


@dataclass
class Task:
    """One (method, contender) pair, run once per round."""

    method: str  # a merge method, "lora", or "floor"
    inputs: str  # input-set key: the floor row it is compared with
    contender: Contender
    command: Callable[[Path], list[str]]  # out dir -> argv
    out: Path
    walls: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    others_cpu: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    failed: str = ""
    kept: bool = False  # the last run's output is on disk for the parity pass
    parity: str = ""
    max_diff: float | None = None
    identical: bool = False  # every compared tensor bit-identical to the reference's
    beyond_one_step: int = 0  # compared elements more than one bf16 rounding step from the reference's
    random_masks: bool = False  # against mergekit where it draws at random: no parity expected
    output_gb: float = 0.0


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(extra)
    return env


def thread_env(threads: int | None) -> dict[str, str]:
    return {} if threads is None else {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def mergebench_contender(
    name: str, root: Path, version: str, args: argparse.Namespace, subcommand: list[str], work: Path
) -> Contender:
    """A mergebench source tree run from the shared venv, after checking that it is what imports."""
    env = clean_env(PYTHONPATH=str(root))
    probe = [sys.executable, "-c", "import mergebench, sys; sys.stdout.write(mergebench.__file__)"]
    found = subprocess.run(probe, env=env, cwd=work, capture_output=True, text=True, check=True).stdout
    if not Path(found).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"{name}: PYTHONPATH={root} imports {found} instead")
    # Byte-compile now, so the first timed run doesn't pay for it.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "mergebench")], check=True)
    contender = Contender(name, "mergebench", env, root=root, version=version)
    if args.threads is not None:
        usage = subprocess.run(
            [sys.executable, "-m", "mergebench", *subcommand, "--help"],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if "--threads" in usage:
            contender.note = f"--threads {args.threads}"
        else:
            env.update(thread_env(args.threads))
            contender.note = f"no --threads flag: OMP_NUM_THREADS=MKL_NUM_THREADS={args.threads} in its env"
    return contender


def parse_contenders(args: argparse.Namespace) -> list[str]:
    names = [n for n in args.contenders.split(",") if n] if args.contenders else ["mergebench"]
    names += [f"mergebench@{rev}" for rev in args.rev]
    names += ["mergekit"] * args.mergekit + ["peft"] * args.peft
    names = [n for n in dict.fromkeys(names) if n != "floor"]  # the floor is always there, once
    for name in names:
        if name not in ("mergebench", "mergekit", "peft") and not name.startswith("mergebench@"):
            raise SystemExit(f"unknown contender {name!r}")
        if (name, args.suite) in (("mergekit", "lora"), ("peft", "merge")):
            raise SystemExit(f"{name} has no part in the {args.suite} suite")
    if not any(n.startswith("mergebench") for n in names):
        raise SystemExit("at least one mergebench contender is needed (the parity reference)")
    return names


def make_contenders(names: list[str], args: argparse.Namespace, work: Path) -> tuple[list[Contender], dict]:
    """Contenders in the order given, plus the versions that go into every CSV row."""
    repo = Path(args.repo).resolve()
    subcommand = ["merge"] if args.suite == "merge" else ["lora", "merge"]
    info: dict[str, str] = {
        "mergebench_rev": git(repo, "rev-parse", "--short=12", "HEAD"),
        "mergebench_dirty": str(bool(git(repo, "status", "--porcelain", "--", "mergebench"))),
        "mergebench_tree": "",
        "mergekit": "",
        "peft": "",
    }
    contenders = []
    for name in names:
        if name == "mergebench":
            if args.no_snapshot:
                root, tree = repo, tree_hash(repo / "mergebench")
            else:
                root, tree = snapshot_checkout(repo, work)
            info["mergebench_tree"] = tree
            dirty = "+dirty" if info["mergebench_dirty"] == "True" else ""
            version = f"{info['mergebench_rev']}{dirty} tree {tree}"
            contenders.append(mergebench_contender(name, root, version, args, subcommand, work))
        elif name.startswith("mergebench@"):
            root, sha = ensure_worktree(repo, name.split("@", 1)[1], work)
            contenders.append(mergebench_contender(name, root, sha[:12], args, subcommand, work))
        elif name == "mergekit":
            python = ensure_venv(Path(args.mergekit_venv or work / "venv-mergekit"), ["mergekit==0.1.5"])
            versions = venv_versions(python, ["mergekit", "torch"])
            info["mergekit"] = versions["mergekit"]
            env = clean_env(HF_HUB_OFFLINE="1", **thread_env(args.threads))
            note = (
                "" if args.threads is None else f"OMP_NUM_THREADS=MKL_NUM_THREADS={args.threads} in its env"
            )
            version = " ".join(f"{k} {v}" for k, v in versions.items())
            contenders.append(Contender(name, "mergekit", env, str(python), version=version, note=note))
        elif name == "peft":
            python = ensure_venv(Path(args.peft_venv or work / "venv-peft"), ["peft", "transformers"])
            versions = venv_versions(python, ["peft", "transformers", "torch"])
            info["peft"] = f"{versions['peft']} (transformers {versions['transformers']})"
            env = clean_env(HF_HUB_OFFLINE="1", **thread_env(args.threads))
            note = (
                "" if args.threads is None else f"OMP_NUM_THREADS=MKL_NUM_THREADS={args.threads} in its env"
            )
            version = " ".join(f"{k} {v}" for k, v in versions.items())
            contenders.append(Contender(name, "peft", env, str(python), version=version, note=note))
    return contenders, info


def contender_command(
    contender: Contender, args: argparse.Namespace, inputs: list[Path]
) -> Callable[[Path], list[str]]:
    """argv of one run of ``contender`` into a given output directory.

    ``inputs`` is [config] for a merge, [base, adapter] for LoRA.
    """
    extra = shlex.split(args.mb_args)
    if args.device == "cuda":
        extra += ["--device", "cuda"]
    if args.threads is not None and contender.note.startswith("--threads"):
        extra += ["--threads", str(args.threads)]
    if contender.kind == "mergebench" and args.suite == "merge":
        return lambda out: [
            contender.python, "-m", "mergebench", "merge", str(inputs[0]), str(out), "--no-progress", *extra
        ]  # fmt: skip
    if contender.kind == "mergebench":
        base, adapter = inputs
        return lambda out: [
            contender.python, "-m", "mergebench", "lora", "merge", str(base), str(adapter),
            "--out", str(out), "--max-shard-size", LORA_SHARD, "--no-progress", *extra,
        ]  # fmt: skip
    if contender.kind == "mergekit":
        yaml_cli = str(Path(contender.python).parent / "mergekit-yaml")
        cuda = ["--cuda"] if args.device == "cuda" else []
        return lambda out: [yaml_cli, str(inputs[0]), str(out), *cuda]
    base, adapter = inputs
    return lambda out: [
        contender.python, "-c", PEFT_SCRIPT, str(base), str(adapter), str(out), LORA_SHARD, args.device
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Parity.


def tensor_files(directory: Path) -> dict[str, Path]:
    from safetensors import safe_open

    where = {}
    for path in safetensors_files(directory):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                where[name] = path
    return where


def sample_names(names: list[str], layers: int) -> list[str]:
    """embed, lm_head, final norm, and one tensor per module type, spread over the layers."""
    picked = [n for n in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight") if n in names]
    modules = [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm",
    ]  # fmt: skip
    for i, module in enumerate(modules):
        name = f"model.layers.{(i * 5 + layers // 2) % layers}.{module}.weight"
        if name in names:
            picked.append(name)
    return picked


@dataclass
class Comparison:
    max_diff: float
    text: str
    identical: bool  # every compared tensor bit-identical (same dtype, same names)
    beyond_one_step: int  # elements more than one bf16 rounding step apart


def compare(reference: Path, other: Path, layers: int, full: bool) -> Comparison:
    """max |difference| (float32) of ``other``'s tensors from ``reference``'s, a description, whether
    every compared tensor is bit-identical, and how many elements lie more than one bf16 rounding step
    apart (|x − y| > 2⁻⁷·max(|x|, |y|) + 2⁻²⁰·max|x|: beyond what one rounding of the same value
    explains)."""
    import torch
    from safetensors import safe_open

    ref_files, other_files = tensor_files(reference), tensor_files(other)
    missing = sorted(set(ref_files) ^ set(other_files))
    names = sorted(ref_files) if full else sample_names(sorted(ref_files), layers)
    names = [n for n in names if n in other_files]
    worst, worst_name, identical, total, differing, abs_sum, beyond = 0.0, "", 0, 0, 0, 0.0, 0
    nonfinite = 0
    dtypes = ""
    for name in names:
        with safe_open(str(ref_files[name]), "pt") as a, safe_open(str(other_files[name]), "pt") as b:
            x, y = a.get_tensor(name), b.get_tensor(name)
        if x.shape != y.shape:
            return Comparison(float("inf"), f"{name}: shape {tuple(y.shape)} vs {tuple(x.shape)}", False, 0)
        total += x.numel()
        if x.dtype != y.dtype:
            dtypes = f"; dtype {y.dtype} vs {x.dtype}"
        if x.dtype == y.dtype and torch.equal(x, y):
            identical += 1
            continue
        x, y = x.float(), y.float()
        diff = (x - y).abs()
        bad = int(diff.isnan().sum())  # a NaN or inf in either output (inf − inf, too)
        if bad:
            nonfinite += bad
            worst, worst_name = float("nan"), name
            diff.nan_to_num_(nan=0.0)
        differing += int((diff > 0).sum())
        abs_sum += float(diff.sum(dtype=torch.float64))
        step = torch.maximum(x.abs_(), y.abs_()).mul_(2.0**-7).add_(2.0**-20 * float(x.max()))
        beyond += int((diff > step).sum())
        if not nonfinite and diff.max().item() >= worst:
            worst, worst_name = diff.max().item(), name
    text = f"{identical}/{len(names)} {'(all)' if full else 'sampled'} tensors identical"
    if worst_name:
        text += (
            f"; {differing:,} of {total:,} elements differ ({differing / total:.2g}), "
            f"{beyond:,} by more than one bf16 step ({beyond / total:.2g}), "
            f"mean |diff| {abs_sum / total:.2g}, worst in {worst_name}"
        )
    if nonfinite:
        text += f"; {nonfinite:,} elements NaN or inf in one output only, or inf − inf"
    if missing:
        text += f"; {len(missing)} tensor names in only one of the outputs, e.g. {missing[0]}"
    text += dtypes
    return Comparison(worst, text, identical == len(names) and not missing, beyond)


def parity(tasks: list[Task], reference: Task | None, layers: int) -> None:
    """Each contender's kept output against the reference's; then the outputs are deleted."""
    if reference is None or not reference.kept:
        for task in tasks:
            task.parity = "no reference output"
    else:
        for task in tasks:
            if task is reference:
                task.max_diff, task.parity, task.identical = 0.0, "reference", True
            elif not task.kept:
                task.parity = "no output"
            else:
                full = task.contender.kind == "mergebench"  # a revision must match bit for bit
                result = compare(reference.out, task.out, layers, full)
                task.max_diff, task.parity, task.identical = result.max_diff, result.text, result.identical
                task.beyond_one_step = result.beyond_one_step
                flag = ""
                if full and not task.identical:
                    flag = "  <<<<<<<<<< NOT IDENTICAL to " + reference.contender.name + " >>>>>>>>>>"
                elif not full and task.method in RANDOM_VS_MERGEKIT:  # differs by design
                    task.random_masks = True
                    task.parity = f"{RANDOM_VS_MERGEKIT[task.method]}: no parity expected; {task.parity}"
                print(
                    f"  parity {task.method} {task.contender.name} vs {reference.contender.name}: "
                    f"max |diff| {task.max_diff:.3g} ({task.parity}){flag}",
                    flush=True,
                )
    for task in tasks:
        shutil.rmtree(task.out, ignore_errors=True)
        task.kept = False


# --------------------------------------------------------------------------------------------------
# Machine, CSV, table.


def machine_info() -> dict[str, str]:
    """A hostname-independent description of the machine."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    description = f"{model}, {os.cpu_count()} cpus, {ram:.0f} GiB RAM, gpu {gpu}"
    tag = f"{model}-{os.cpu_count()}c-{ram:.0f}g" + ("" if gpu == "none" else f"-{gpu}")
    return {
        "machine": description,
        "machine_tag": re.sub(r"[^a-z0-9]+", "-", tag.lower()).strip("-"),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


FIELDS = [
    "suite", "row", "started_utc", "machine", "python", "torch", "mergebench_rev", "mergebench_dirty",
    "mergebench_tree", "mergekit", "peft", "layers", "kv_heads", "device", "threads", "mb_args", "method",
    "contender", "contender_version", "contender_note", "inputs", "round", "position", "wall_s", "rss_gb",
    "cpu_s", "others_cpu_s", "waited_s", "load_before", "exit_code", "output_gb", "runs", "min_s", "median_s",
    "max_s", "max_over_min", "median_over_floor", "median_over_reference", "rss_median_gb", "rss_max_gb",
    "max_abs_diff_vs_mergebench", "parity", "median_over_direct_floor",
]  # fmt: skip


class Results:
    """The CSV, written row by row so an interrupted benchmark keeps what it measured."""

    def __init__(self, path: Path, common: dict[str, object]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.common = path, common
        self.handle = open(path, "w", newline="")  # noqa: SIM115 (open for the whole benchmark)
        self.writer = csv.DictWriter(self.handle, FIELDS)
        self.writer.writeheader()

    def write(self, **row: object) -> None:
        self.writer.writerow({**self.common, **row})
        self.handle.flush()


def summarize(plan: Plan, results: Results, layers: int) -> str:
    """The summary rows (into the CSV) and the table (returned for printing): per input set its floor
    (and its direct floor), then the methods that read exactly those files, so each row's median/floor
    is against the floor row above its group."""
    tasks, floors, set_methods = plan.tasks, plan.floors, plan.set_methods
    direct = bool(plan.direct_floors)
    header = (
        "| method | contender | runs | min s | median s | max/min | median/floor "
        + ("| median/direct floor " if direct else "")
        + "| median/ref | peak RSS GB (median) | CPU s (median) | others' CPU s (max) "
        "| max abs diff vs mergebench |"
    )
    lines = [header, "|---" * (13 if direct else 12) + "|"]
    ordered = [
        task
        for key, methods in set_methods.items()
        for task in [*plan.floors_of(key), *(t for m in methods for t in tasks if t.method == m)]
    ]
    for row in ordered:
        floor = floors[row.inputs]
        direct_floor = plan.direct_floors.get(row.inputs)
        name = f"floor {row.inputs}" if row.method == "floor" else row.method
        csv_name = ",".join(set_methods[row.inputs]) if row.method == "floor" else row.method
        if not row.walls:
            lines.append(f"| {name} | {row.contender.name} | 0 | failed: {row.failed[:60]} ||||||||")
            results.write(
                row="summary",
                method=csv_name,
                contender=row.contender.name,
                inputs=row.inputs,
                runs=0,
                parity=row.failed,
            )
            continue
        median = statistics.median(row.walls)
        floor_median = statistics.median(floor.walls) if floor.walls else float("nan")
        over_direct = ""
        if direct_floor is not None and direct_floor.walls:
            over_direct = f"{median / statistics.median(direct_floor.walls):.2f}"
        diff = "" if row.method == "floor" else ("–" if row.max_diff is None else f"{row.max_diff:.3g}")
        if row.method != "floor" and row.parity == "reference":
            diff = "(reference)"
        elif row.method != "floor" and row.identical:
            diff += " (identical)"
        elif row.max_diff is not None and row.random_masks:
            diff += " (random: see below)"
        elif row.max_diff is not None and row.beyond_one_step:
            diff += f" ({row.beyond_one_step:,} > 1 bf16 step)"
        failed = f" [failed after {len(row.walls)} runs]" if row.failed else ""
        ref = reference_task(tasks, row.method)
        over_ref = ""
        if row.method != "floor" and ref is not None and ref.walls:
            over_ref = f"{median / statistics.median(ref.walls):.2f}"
        lines.append(
            f"| {name} | {row.contender.name}{failed} | {len(row.walls)} "
            f"| {min(row.walls):.2f} | {median:.2f} "
            f"| {max(row.walls) / min(row.walls):.2f} | {median / floor_median:.2f} "
            + (f"| {over_direct} " if direct else "")
            + f"| {over_ref} "
            f"| {statistics.median(row.rss):.2f} | {statistics.median(row.cpu):.1f} "
            f"| {max(row.others_cpu):.1f} | {diff} |"
        )
        results.write(
            row="summary",
            method=csv_name,
            contender=row.contender.name,
            contender_version=row.contender.version,
            contender_note=row.contender.note,
            inputs=row.inputs,
            output_gb=f"{row.output_gb:.4f}",
            runs=len(row.walls),
            min_s=f"{min(row.walls):.3f}",
            median_s=f"{median:.3f}",
            max_s=f"{max(row.walls):.3f}",
            max_over_min=f"{max(row.walls) / min(row.walls):.3f}",
            median_over_floor=f"{median / floor_median:.3f}",
            median_over_direct_floor=over_direct,
            median_over_reference=over_ref,
            rss_median_gb=f"{statistics.median(row.rss):.3f}",
            rss_max_gb=f"{max(row.rss):.3f}",
            cpu_s=f"{statistics.median(row.cpu):.2f}",
            others_cpu_s=f"{max(row.others_cpu):.2f}",
            max_abs_diff_vs_mergebench="" if row.max_diff is None else f"{row.max_diff:.6g}",
            parity=row.parity or row.failed,
        )
    details = [
        f"  {t.method} {t.contender.name}: {t.parity}"
        for t in ordered
        if t.method != "floor" and t.parity and t.parity != "reference"
    ]
    legend = (
        "ref = the first mergebench contender (the parity reference too); CPU s = the contender's own "
        "user+system time; others' CPU s = the most the rest of the machine used during one of its runs; "
        "'> 1 bf16 step': elements further apart than one bf16 rounding step (mergekit computes in bf16); "
        "'random': mergekit draws at random here (masks, quantiles), so no parity is expected"
    )
    return "\n".join(
        [
            *lines,
            legend,
            "",
            "parity (vs the first mergebench contender):",
            *details,
            *targets(plan, layers),
        ]
    )


def reference_task(tasks: list[Task], method: str) -> Task | None:
    """The first mergebench contender's task for ``method``: the reference of timing and parity."""
    return next((t for t in tasks if t.method == method and t.contender.kind == "mergebench"), None)


def targets(plan: Plan, layers: int) -> list[str]:
    """The project's goals against mergekit, per method: the reference's median faster than mergekit's
    and at most 3x its I/O floor, its median peak RSS below mergekit's (the direct floor, when timed,
    is shown beside the verdict's floor)."""
    lines = []
    tasks = plan.tasks
    for key, methods in plan.set_methods.items():
        floor = plan.floors[key]
        direct_floor = plan.direct_floors.get(key)
        for method in methods:
            ref = reference_task(tasks, method)
            rival = next((t for t in tasks if t.method == method and t.contender.kind == "mergekit"), None)
            if ref is None or rival is None:
                continue
            if not (ref.walls and rival.walls and floor.walls):
                lines.append(f"  {method}: no verdict (a contender failed)")
                continue
            ours, theirs = statistics.median(ref.walls), statistics.median(rival.walls)
            over_floor = ours / statistics.median(floor.walls)
            rss, rival_rss = statistics.median(ref.rss), statistics.median(rival.rss)
            checks = [
                (
                    ours < theirs,
                    f"{theirs / ours:.2f}x faster than mergekit"
                    if ours < theirs
                    else f"{ours / theirs:.2f}x slower than mergekit",
                ),
                (
                    over_floor <= 3,
                    f"{over_floor:.2f}x the floor"
                    + (
                        f" ({ours / statistics.median(direct_floor.walls):.2f}x the direct floor)"
                        if direct_floor is not None and direct_floor.walls
                        else ""
                    ),
                ),
                (rss < rival_rss, f"RSS {rss:.2f} vs {rival_rss:.2f} GB"),
            ]
            verdict = "ok  " if all(ok for ok, _ in checks) else "MISS"
            text = "; ".join(f"{what}{'' if ok else ' (!)'}" for ok, what in checks)
            lines.append(f"  {verdict} {method:<16} {text}")
    if not lines:
        return []
    head = "targets (the reference vs mergekit: faster, at most 3x the floor, less peak RSS):"
    if layers < 14:
        head += f"\n  ({layers} layers: process start-up (imports, ~2 s) dominates; judge the floor at 14)"
    return ["", head, *lines]


# --------------------------------------------------------------------------------------------------
# The benchmark.


def rotated(items: list, by: int) -> list:
    by %= max(len(items), 1)
    return items[by:] + items[:by]


@dataclass
class Plan:
    """What one benchmark runs: a floor per distinct input set, and a task per (method, contender)."""

    set_files: dict[str, list[Path]]  # input-set key -> the files it reads
    set_methods: dict[str, list[str]]  # input-set key -> the methods that read exactly those files
    floors: dict[str, Task]  # the floor the targets are judged against
    tasks: list[Task]
    # With --floor-writes both: the O_DIRECT floor of each input set too, timed in the same rounds.
    direct_floors: dict[str, Task] = field(default_factory=dict)

    def floors_of(self, key: str) -> list[Task]:
        return [self.floors[key], *([self.direct_floors[key]] if key in self.direct_floors else [])]

    def label(self, task: Task) -> str:
        """The CSV's method column: a floor row names every method that shares it."""
        return ",".join(self.set_methods[task.inputs]) if task.method == "floor" else task.method

    def short_label(self, task: Task) -> str:
        """The console's (and the table's) name of a task: a floor row names its input set."""
        return f"floor {task.inputs}" if task.method == "floor" else task.method


def out_dir(work: Path) -> Path:
    """This run's outputs: a directory of its own, so two benchmarks sharing --work (say a smoke test
    started during a long run) never delete each other's outputs mid-run or before their parity pass."""
    return work / f"out-{os.getpid()}"


def remove_stale_outputs(work: Path) -> None:
    """Outputs left by runs that died (their process is gone); a live run's are left alone."""
    for path in work.glob("out-*"):
        try:
            os.kill(int(path.name.removeprefix("out-")), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def make_plan(args: argparse.Namespace, work: Path, shape: str, models: dict[str, Path], contenders) -> Plan:
    set_files: dict[str, list[Path]] = {}
    set_methods: dict[str, list[str]] = {}
    tasks: list[Task] = []
    out_root = out_dir(work)
    if args.suite == "merge":
        for method in args.methods:
            key = "+".join(method_inputs(method))
            set_files.setdefault(
                key, [f for m in method_inputs(method) for f in safetensors_files(models[m])]
            )
            set_methods.setdefault(key, []).append(method)
            config = work / "configs" / shape / f"{method}.yaml"
            config.parent.mkdir(parents=True, exist_ok=True)
            tmp = config.with_name(f".{config.name}.{os.getpid()}")  # another run may be reading it
            tmp.write_text(merge_config(method, models["base"], models["ft1"], models["ft2"]))
            tmp.replace(config)
            for c in contenders:
                out = out_root / method / c.name.replace("@", "-at-")
                tasks.append(Task(method, key, c, contender_command(c, args, [config]), out))
    else:
        adapter = build_adapter(work / "models" / shape, models["base"], args.layers, args.kv_heads)
        key = "base+adapter"
        set_files[key] = [*safetensors_files(models["base"]), adapter / "adapter_model.safetensors"]
        set_methods[key] = ["lora"]
        for c in contenders:
            out = out_root / "lora" / c.name.replace("@", "-at-")
            tasks.append(Task("lora", key, c, contender_command(c, args, [models["base"], adapter]), out))
    output_size = output_bytes(models["base"])  # every output holds the base's tensors, in bf16

    def floor_task(key: str, writes: str) -> Task:
        name = "floor" if writes == "buffered" else "floor-direct"  # the CSV says which
        out = out_root / f"{name}-{key}"
        files = os.pathsep.join(map(str, set_files[key]))
        command = [sys.executable, "-c", FLOOR_SCRIPT, files, str(out), str(output_size), writes]
        return Task("floor", key, Contender(name, "floor", clean_env()), lambda _out, c=command: c, out)

    first = "buffered" if args.floor_writes == "both" else args.floor_writes
    floors = {key: floor_task(key, first) for key in set_files}
    direct_floors = (
        {key: floor_task(key, "direct") for key in set_files} if args.floor_writes == "both" else {}
    )
    return Plan(set_files, set_methods, floors, tasks, direct_floors)


def warm_up(plan: Plan, contenders: list[Contender], work: Path, report: Path) -> None:
    """Untimed: one floor run per input set (its files into the page cache, the write path exercised),
    then each contender's imports (its libraries into the page cache too), so round 1 isn't special."""
    for floor in [*plan.floors.values(), *plan.direct_floors.values()]:
        warm = timed(floor.command(floor.out), floor.contender.env, work, report)
        shutil.rmtree(floor.out, ignore_errors=True)
        if warm.code:
            raise SystemExit(f"the I/O floor failed:\n{warm.error}")
    for c in contenders:
        probe = {
            "mergebench": [c.python, "-c", "import mergebench.cli"],
            "mergekit": [c.python, "-c", "import mergekit.merge, torch"],
            "peft": [c.python, "-c", "import peft, transformers, torch"],
        }[c.kind]
        subprocess.run(probe, env=c.env, cwd=work, check=True, capture_output=True)


def run_round(
    round_index: int, args: argparse.Namespace, plan: Plan, work: Path, report: Path, results
) -> None:
    """Every task once: per input set its floor, then each method's contenders in an order rotated by
    the round, so no contender always runs first or right after the same neighbour."""
    last = round_index == args.runs - 1
    print(f"round {round_index + 1}/{args.runs}", flush=True)
    position = 0
    for key in plan.set_files:
        order = rotated(plan.floors_of(key), round_index)
        closes = {}  # the last task of each method this round -> that method's tasks, for parity
        for method in plan.set_methods[key]:
            group = rotated([t for t in plan.tasks if t.method == method], round_index)
            order += group
            closes[id(group[-1])] = group
        for task in order:
            pending = closes.get(id(task)) if last else None  # parity due right after this run
            if task.failed:
                if pending:
                    parity(pending, reference_task(plan.tasks, task.method), args.layers)
                continue
            shutil.rmtree(task.out, ignore_errors=True)
            waited, load = wait_for_quiet(args.quiet_wait, args.quiet_load) if args.quiet_wait else (0.0, 0.0)
            measured = timed(task.command(task.out), task.contender.env, work, report)
            position += 1
            written = output_bytes(task.out) if task.out.exists() else 0
            if task.method == "floor" and task.out.exists():
                written = (task.out / "floor.bin").stat().st_size
            label = plan.label(task)
            results.write(
                row="run",
                method=label,
                contender=task.contender.name,
                contender_version=task.contender.version,
                contender_note=task.contender.note,
                inputs=key,
                round=round_index + 1,
                position=position,
                wall_s=f"{measured.wall:.3f}",
                rss_gb=f"{measured.rss_gb:.3f}",
                cpu_s=f"{measured.cpu:.2f}",
                others_cpu_s=f"{measured.others_cpu:.2f}",
                waited_s=f"{waited:.1f}",
                load_before=f"{load:.2f}",
                exit_code=measured.code,
                output_gb=f"{written / 1e9:.4f}",
            )
            if measured.code:
                task.failed = f"exit {measured.code}"
                print(
                    f"  {plan.short_label(task)} {task.contender.name}: FAILED (exit {measured.code})\n"
                    f"{measured.error}",
                    flush=True,
                )
                if task.method == "floor":
                    raise SystemExit("the I/O floor failed")
            else:
                task.walls.append(measured.wall)
                task.rss.append(measured.rss_gb)
                task.others_cpu.append(measured.others_cpu)
                task.cpu.append(measured.cpu)
                task.output_gb = written / 1e9
                print(
                    f"  [{round_index + 1}/{args.runs}] {plan.short_label(task):<18} "
                    f"{task.contender.name:<22} "
                    f"{measured.wall:8.2f} s  {measured.rss_gb:5.2f} GB  CPU {measured.cpu:6.1f} s  "
                    f"(others' CPU meanwhile {measured.others_cpu:.1f} s"
                    + (f"; waited {waited:.0f} s for quiet, load then {load:.1f})" if waited > 1 else ")"),
                    flush=True,
                )
            if last and task.method != "floor" and not measured.code:
                task.kept = True  # for the parity pass below
            else:
                shutil.rmtree(task.out, ignore_errors=True)
            if pending:  # parity per method right away: one method's outputs on disk at a time
                parity(pending, reference_task(plan.tasks, task.method), args.layers)


def benchmark(args: argparse.Namespace) -> None:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    names = parse_contenders(args)
    shape = f"l{args.layers}-kv{args.kv_heads}"
    models = build_models(work / "models" / shape, args.layers, args.kv_heads)
    contenders, versions = make_contenders(names, args, work)
    remove_stale_outputs(work)
    plan = make_plan(args, work, shape, models, contenders)

    machine = machine_info()
    started = datetime.now(timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    csv_path = Path(args.results).resolve() / f"{args.suite}-{machine['machine_tag']}-{stamp}.csv"
    common = {
        "suite": args.suite,
        "started_utc": started.isoformat(timespec="seconds"),
        **{k: v for k, v in machine.items() if k != "machine_tag"},
        **versions,
        "layers": args.layers,
        "kv_heads": args.kv_heads,
        "device": args.device,
        "threads": "" if args.threads is None else args.threads,
        "mb_args": args.mb_args,
    }
    results = Results(csv_path, common)

    print(f"machine: {machine['machine']}; python {machine['python']}, torch {machine['torch']}", flush=True)
    for c in contenders:
        print(f"contender {c.name}: {c.version}{f'; {c.note}' if c.note else ''}", flush=True)
    for key, files in plan.set_files.items():
        size = sum(f.stat().st_size for f in files) / 1e9
        methods = ", ".join(plan.set_methods[key])
        print(f"input set {key} ({methods}): {len(files)} files, {size:.2f} GB", flush=True)
    output_size = output_bytes(models["base"]) / 1e9
    print(f"output: {output_size:.2f} GB; {args.runs} rounds; results -> {csv_path}", flush=True)

    report = work / f"launcher-{os.getpid()}.rss"
    warm_up(plan, contenders, work, report)
    for round_index in range(args.runs):
        run_round(round_index, args, plan, work, report, results)

    table = summarize(plan, results, args.layers)
    results.handle.close()
    shutil.rmtree(out_dir(work), ignore_errors=True)
    print()
    print(
        f"{args.suite} suite, {args.layers} layers, {args.runs} runs, {machine['machine']}; "
        f"mergebench {versions['mergebench_rev']}"
    )
    print(table)
    for task in [*plan.floors.values(), *plan.direct_floors.values(), *plan.tasks]:
        spread = max(task.walls) / min(task.walls) if task.walls else 1.0
        if spread > 1.3:
            print(
                f"noisy: {plan.short_label(task)} {task.contender.name}: "
                f"slowest run {spread:.2f}x the fastest"
            )
        if task.contender.kind == "mergebench" and task.max_diff is not None and not task.identical:
            print(f"!!! {task.method} {task.contender.name} differs from the reference: {task.parity}")
    live = tree_hash(Path(args.repo).resolve() / "mergebench")
    if versions["mergebench_tree"] and live != versions["mergebench_tree"]:
        measured = (
            "runs may mix versions!" if args.no_snapshot else "the snapshot taken at the start was measured"
        )
        print(
            f"note: mergebench/ changed during the benchmark "
            f"(tree {versions['mergebench_tree']} -> {live}); {measured}"
        )
    print(f"CSV: {csv_path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=["merge", "lora"], default="merge", help="what is benchmarked")
    parser.add_argument(
        "--contenders",
        help="comma-separated: mergebench, mergebench@REV, mergekit, peft (default: mergebench; "
        "the I/O floor is always run)",
    )
    parser.add_argument(
        "--rev", action="append", default=[], help="add mergebench@REV: a git worktree of REV (repeatable)"
    )
    parser.add_argument("--mergekit", action="store_true", help="add mergekit 0.1.5 (merge suite)")
    parser.add_argument("--peft", action="store_true", help="add PEFT merge_and_unload (lora suite)")
    parser.add_argument(
        "--methods",
        default="default",
        help="merge methods, comma-separated; groups: default (the original five: "
        f"{', '.join(METHODS)}), new (the 13 methods added since: {', '.join(NEW_METHODS)}), "
        "all (every method of mergekit 0.1.5, dare_linear and passthrough too); e.g. new,ties",
    )
    parser.add_argument(
        "--runs", type=int, help="runs of every contender, alternated (default 5; --quick: 2)"
    )
    parser.add_argument(
        "--layers", type=int, help="decoder layers (default 14 ≈ 0.85B parameters; --quick: 2)"
    )
    parser.add_argument(
        "--kv-heads", type=int, default=HEADS, help="key/value heads (16: no GQA; old bench_lora: 4)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 layers, 2 runs")
    parser.add_argument(
        "--work", default=str(ROOT / ".bench"), help="models, worktrees, venvs, outputs (default: .bench)"
    )
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"), help="where the CSV goes")
    parser.add_argument("--repo", default=str(ROOT), help="the mergebench git repository (default: this one)")
    parser.add_argument(
        "--mergekit-venv", help="mergekit's virtualenv, created on first use (default: WORK/venv-mergekit)"
    )
    parser.add_argument(
        "--peft-venv", help="PEFT's virtualenv, created on first use (default: WORK/venv-peft)"
    )
    parser.add_argument(
        "--mb-args",
        default="",
        help='extra arguments for every mergebench run, e.g. "--seed 1" (one flag alone: --mb-args=--flag)',
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="mergebench --device; mergekit --cuda; PEFT on that device",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads for every contender: mergebench's --threads if its CLI has one, else "
        "OMP_NUM_THREADS/MKL_NUM_THREADS in its environment (said in the output)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30,
        help="before each run, wait up to this many seconds for the rest of the machine to go quiet "
        "(0: don't wait); the CSV records the wait and the CPU others used during each run",
    )
    parser.add_argument(
        "--quiet-load", type=float, default=0.3, help="'quiet': others use at most this many cores (0.3)"
    )
    parser.add_argument(
        "--floor-writes",
        choices=["buffered", "direct", "both"],
        default="buffered",
        help="how the I/O floor writes: through the page cache (the targets' floor) or with O_DIRECT, "
        "as mergebench writes shards; 'both' times the two in the same rounds and reports each ratio "
        "(the targets stay judged on the buffered one) (default buffered)",
    )
    parser.add_argument(
        "--no-snapshot",
        action="store_true",
        help="run this checkout's mergebench/ in place instead of a copy taken at the start",
    )
    args = parser.parse_args()
    args.layers = args.layers or (2 if args.quick else 14)
    args.runs = args.runs or (2 if args.quick else 5)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = set(names) - set(ALL_METHODS) - set(METHOD_GROUPS)
    if unknown or not names:
        parser.error(
            f"unknown methods: {', '.join(sorted(unknown)) or '(none given)'}; known: "
            f"{', '.join(ALL_METHODS)} and the groups {', '.join(METHOD_GROUPS)}"
        )
    args.methods = list(dict.fromkeys(m for n in names for m in METHOD_GROUPS.get(n, [n])))
    if args.runs < 5 and not args.quick:
        print(f"warning: {args.runs} runs; the project's rule is at least 5", flush=True)
    benchmark(args)


if __name__ == "__main__":
    main()
