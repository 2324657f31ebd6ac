#!/usr/bin/env python3
"""Benchmark ``mergebench merge`` against the raw I/O floor and mergekit, side by side in one run.

Builds three synthetic bf16 Llama-shaped checkpoints (~0.85B parameters each: a base and two
finetunes that are small moves from it, sharded at ~1 GB) tensor by tensor — never a whole model in
memory — then, for each method, measures wall time and peak RSS of:
  * the I/O floor: read every input byte once and write the output's byte count once;
  * ``mergebench merge``;
  * ``mergekit-yaml`` with the same YAML (from its own virtualenv, if given).
Every run is a separate process (peak RSS from ``wait4``), with a warm page cache.

    python tools/bench_merge.py --work /tmp/bench --mergekit-venv /tmp/mk-venv
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mergebench.io.writer import ShardedWriter, TensorSpec  # noqa: E402
from mergebench.methods.sparsify import seeded_generator  # noqa: E402

METHODS = ["linear", "task_arithmetic", "ties", "dare_ties", "slerp"]


def llama_specs(layers: int, hidden: int, intermediate: int, vocab: int) -> list[TensorSpec]:
    bf16 = torch.bfloat16
    specs = [TensorSpec("model.embed_tokens.weight", (vocab, hidden), bf16)]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [
            TensorSpec(p + "input_layernorm.weight", (hidden,), bf16),
            TensorSpec(p + "self_attn.q_proj.weight", (hidden, hidden), bf16),
            TensorSpec(p + "self_attn.k_proj.weight", (hidden, hidden), bf16),
            TensorSpec(p + "self_attn.v_proj.weight", (hidden, hidden), bf16),
            TensorSpec(p + "self_attn.o_proj.weight", (hidden, hidden), bf16),
            TensorSpec(p + "post_attention_layernorm.weight", (hidden,), bf16),
            TensorSpec(p + "mlp.gate_proj.weight", (intermediate, hidden), bf16),
            TensorSpec(p + "mlp.up_proj.weight", (intermediate, hidden), bf16),
            TensorSpec(p + "mlp.down_proj.weight", (hidden, intermediate), bf16),
        ]
    specs += [
        TensorSpec("model.norm.weight", (hidden,), bf16),
        TensorSpec("lm_head.weight", (vocab, hidden), bf16),
    ]
    return specs


def synthetic_tensor(spec: TensorSpec, model_index: int) -> torch.Tensor:
    """Base weights from a per-tensor seed; a finetune adds a small per-model delta to them."""
    base = torch.randn(spec.shape, generator=seeded_generator(0, spec.name)) * 0.02
    if spec.name.endswith("norm.weight"):
        base += 1.0
    if model_index:
        base += torch.randn(spec.shape, generator=seeded_generator(model_index, spec.name)) * 0.002
    return base.to(spec.dtype)


def build_models(work: Path, layers: int) -> list[Path]:
    hidden, intermediate, vocab = 2048, 5632, 32000
    specs = llama_specs(layers, hidden, intermediate, vocab)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    paths = []
    for index, name in enumerate(["base", "ft1", "ft2"]):
        path = work / name
        paths.append(path)
        if (path / "config.json").is_file():
            continue
        tmp = work / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        writer = ShardedWriter(tmp, specs, 1_000_000_000)
        for spec in specs:
            writer.write(spec.name, synthetic_tensor(spec, index))
        writer.close()
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tmp.rename(path)
        print(f"built {path}", flush=True)
    return paths


def config_for(method: str, base: Path, ft1: Path, ft2: Path) -> str:
    if method == "slerp":
        body = f"""
            merge_method: slerp
            base_model: {base}
            models:
              - model: {base}
              - model: {ft1}
            parameters:
              t: 0.5
        """
    elif method == "linear":
        body = f"""
            merge_method: linear
            models:
              - model: {ft1}
                parameters: {{weight: 0.5}}
              - model: {ft2}
                parameters: {{weight: 0.5}}
        """
    else:
        density = (
            "" if method == "task_arithmetic" else ", density: 0.2" if method == "ties" else ", density: 0.5"
        )
        body = f"""
            merge_method: {method}
            base_model: {base}
            models:
              - model: {ft1}
                parameters: {{weight: 0.6{density}}}
              - model: {ft2}
                parameters: {{weight: 0.4{density}}}
        """
    return textwrap.dedent(body).strip() + "\ndtype: bfloat16\n"


FLOOR_SCRIPT = """
import sys, os
inputs, out, nbytes = sys.argv[1].split(os.pathsep), sys.argv[2], int(sys.argv[3])
buf = bytearray(64 << 20)
view = memoryview(buf)
for path in inputs:
    with open(path, 'rb', buffering=0) as f:
        while f.readinto(view):
            pass
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, 'floor.bin'), 'wb', buffering=0) as f:
    left = nbytes
    while left:
        n = min(left, len(buf))
        f.write(view[:n])
        left -= n
"""


# Peak RSS is read by a small launcher process: a child spawned straight from this (large) process
# inherits its resident-set high-water mark at exec, which would pollute the reading.
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=open(sys.argv[1] + '.err', 'w'))
open(sys.argv[1], 'w').write(f"{code} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
"""


def timed(command: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """Run a command; returns (wall seconds, its own peak RSS in GB, exit code)."""
    os.sync()  # start every run with no dirty pages from the previous one
    report = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{os.getpid()}.rss"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", LAUNCHER, str(report), *command], env=env, check=False)
    wall = time.perf_counter() - start
    code, peak_kb = (int(x) for x in report.read_text().split())
    if code:
        errors = Path(f"{report}.err").read_text(errors="replace")[-2000:]
        print(f"  FAILED ({code}): {' '.join(command)}\n{errors}", file=sys.stderr)
    report.unlink(missing_ok=True)
    Path(f"{report}.err").unlink(missing_ok=True)
    return wall, peak_kb / 1e6, code


def median_of(repeat: int, command: list[str], out: Path) -> tuple[float, float, int]:
    """Median wall time, largest peak RSS, and output bytes of ``repeat`` runs into a fresh ``out``."""
    walls, peaks, written = [], [], 0
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        wall, peak, code = timed(command)
        if code:
            raise SystemExit(f"benchmark command failed: {' '.join(command)}")
        walls.append(wall)
        peaks.append(peak)
        written = output_bytes(out) if out.exists() else written
        shutil.rmtree(out, ignore_errors=True)
    return sorted(walls)[len(walls) // 2], max(peaks), written


def ensure_mergekit(venv: Path) -> Path:
    """mergekit in a virtualenv of its own (created on first use), so its pins never touch ours."""
    executable = venv / "bin" / "mergekit-yaml"
    if not executable.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)  # the CPU wheel; unpinned pulls CUDA
        subprocess.run([*pip, "mergekit==0.1.5"], check=True)
    return executable


def input_files(paths: list[Path]) -> list[str]:
    return [str(p) for path in paths for p in sorted(path.glob("*.safetensors"))]


def output_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def run(args: argparse.Namespace) -> dict:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    base, ft1, ft2 = build_models(work, args.layers)
    mergekit = ensure_mergekit(Path(args.mergekit_venv)) if args.mergekit_venv else None
    results: dict[str, dict] = {}
    for method in args.methods:
        config_path = work / f"{method}.yaml"
        config_path.write_text(config_for(method, base, ft1, ft2))
        used = (
            [base, ft1, ft2]
            if method not in ("linear", "slerp")
            else ([ft1, ft2] if method == "linear" else [base, ft1])
        )
        files = input_files(used)
        row: dict[str, object] = {}
        out = work / "out"
        # Warm the page cache the same way for every contender.
        timed([sys.executable, "-c", FLOOR_SCRIPT, os.pathsep.join(files), str(out), "0"])
        shutil.rmtree(out, ignore_errors=True)
        mb = [sys.executable, "-m", "mergebench", "merge", str(config_path), str(out), "--no-progress"]
        row["mergebench_s"], row["mergebench_rss_gb"], written = median_of(args.repeat, mb, out)
        row["output_gb"] = written / 1e9
        floor = [sys.executable, "-c", FLOOR_SCRIPT, os.pathsep.join(files), str(out), str(written)]
        row["floor_s"], row["floor_rss_gb"], _ = median_of(args.repeat, floor, out)
        if mergekit is not None:
            env = {**os.environ, "HF_HUB_OFFLINE": "1"}
            row["mergekit_s"], row["mergekit_rss_gb"], code = timed(
                [str(mergekit), str(config_path), str(out)], env
            )
            if code:
                row["mergekit_s"] = None
            shutil.rmtree(out, ignore_errors=True)
        results[method] = row
        print(
            method,
            json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
            flush=True,
        )
    return results


def report(results: dict) -> str:
    lines = [
        "| method | mergebench s | I/O floor s | × floor | mergekit s | mergekit ÷ mergebench | RSS mergebench GB | RSS mergekit GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        mk = r.get("mergekit_s")
        lines.append(
            f"| {method} | {r['mergebench_s']:.1f} | {r['floor_s']:.1f} | {r['mergebench_s'] / r['floor_s']:.2f} | "
            + (f"{mk:.1f} | {mk / r['mergebench_s']:.2f} |" if mk else "– | – |")
            + f" {r['mergebench_rss_gb']:.2f} | "
            + (f"{r['mergekit_rss_gb']:.2f} |" if mk else "– |")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default=".bench", help="where checkpoints, configs and outputs go")
    parser.add_argument("--layers", type=int, default=14, help="decoder layers (14 → ~0.85B parameters)")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=METHODS)
    parser.add_argument("--mergekit-venv", help="virtualenv with mergekit installed (mergekit-yaml)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of mergebench and the floor (median)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = run(args)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
