#!/usr/bin/env python
"""Quick-eval speed per device and batch size, on loaded, warm models.

    .venv/bin/python tools/bench_eval.py [--demo demo_models] [--devices cpu,cuda]
        [--batch-sizes cpu:32,128 cuda:32,128,256] [--runs 5] [--big] [--prompts N]

Models: the demo's ``skill_a`` (4 layers, hidden 128) on the demo's five eval files, and with ``--big``
a Llama of ~1B parameters with random weights (built once into WORK, seed 0, the demo's tokenizer) on
reverse and text only. Each (model, device) is loaded once with the loader ``mergebench eval`` uses and
evaluated once per batch size untimed (a batch size's first use pays for kernel selection and
allocator growth: start-up, not eval), then the batch sizes alternate run by run, ``--runs`` timed
evaluations each (``mergebench.quickeval.evaluate_loaded``; on CUDA synchronized before the clock
stops). Reported: min and median seconds per (model, device, batch size), and the scores of every
run, which must agree across batch sizes (greedy decoding; bf16 on CUDA may flip a borderline
prompt). Results go to bench/results/eval-<machine>-<time>.csv; nothing here is an I/O floor (the
models are in memory).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

DEMO_FILES = ("reverse", "add", "marker", "upper", "text")
BIG_FILES = ("reverse", "text")
BIG_SHAPE = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 20,
    "num_attention_heads": 16,
}


def parse_batch_sizes(specs: list[str]) -> dict[str, list[int]]:
    """``["cpu:32,128", "cuda:32,128,256"]`` → {device: sizes}."""
    sizes = {}
    for spec in specs:
        device, _, values = spec.partition(":")
        sizes[device] = [int(v) for v in values.split(",") if v]
    return sizes


def build_big(demo: Path, work: Path) -> Path:
    """A ~1B-parameter Llama with random weights and the demo's tokenizer (built once)."""
    import torch
    import transformers

    out = work / "big-llama"
    if (out / "config.json").is_file():
        return out
    source = transformers.AutoConfig.from_pretrained(demo / "skill_a")
    config = transformers.LlamaConfig(
        vocab_size=source.vocab_size,
        num_key_value_heads=BIG_SHAPE["num_attention_heads"],
        max_position_embeddings=256,
        bos_token_id=source.bos_token_id,
        eos_token_id=source.eos_token_id,
        pad_token_id=source.pad_token_id,
        **BIG_SHAPE,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    for tokenizer_file in (demo / "skill_a").iterdir():
        if tokenizer_file.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(tokenizer_file, out / tokenizer_file.name)
    return out


def timed_eval(model, tokenizer, data, device, batch_size: int) -> tuple[float, dict]:
    import torch

    from mergebench.quickeval import evaluate_loaded

    start = time.perf_counter()
    scores = evaluate_loaded(model, tokenizer, data, device, batch_size=batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=ROOT / "demo_models")
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped without CUDA")
    parser.add_argument("--batch-sizes", nargs="+", default=["cpu:32,128", "cuda:32,128,256"])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per batch size (at least 5)")
    parser.add_argument(
        "--prompts", type=int, default=None, help="first N records of each file (default all)"
    )
    parser.add_argument("--big", action="store_true", help="also a ~1B random-weight Llama (reverse + text)")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "eval")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if args.runs < 5:
        parser.error("--runs: at least 5")

    import torch

    from bench import machine_info
    from mergebench.quickeval import load_model, load_records

    if not (args.demo / ".complete").is_file():
        parser.error(f"{args.demo}: no demo build (run tools/build_demo_models.py {args.demo})")
    sizes = parse_batch_sizes(args.batch_sizes)
    devices = [d for d in args.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    models = [("demo skill_a", args.demo / "skill_a", DEMO_FILES)]
    if args.big:
        models.append(("random Llama", build_big(args.demo, args.work), BIG_FILES))
    machine = machine_info()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"eval-{machine['machine_tag']}-{stamp}.csv"
    rows = []
    print(f"machine: {machine['machine']}; torch {machine['torch']}; {args.runs} runs; results -> {path}")
    for label, model_dir, stems in models:
        data = {stem: load_records(args.demo / "eval" / f"{stem}.jsonl")[: args.prompts] for stem in stems}
        for device_name in devices:
            model, tokenizer, device = load_model(model_dir, device_name)
            params = sum(p.numel() for p in model.parameters())
            for batch_size in sizes[device_name]:  # warm-up: each batch size once, untimed
                timed_eval(model, tokenizer, data, device, batch_size)
            times: dict[int, list[float]] = {b: [] for b in sizes[device_name]}
            for run in range(args.runs):
                for batch_size in sizes[device_name]:
                    seconds, scores = timed_eval(model, tokenizer, data, device, batch_size)
                    times[batch_size].append(seconds)
                    accuracy = {
                        stem: s["accuracy"] for stem, s in scores.items() if s["accuracy"] is not None
                    }
                    rows.append({
                        "started_utc": stamp, "machine": machine["machine"], "torch": machine["torch"],
                        "model": label, "parameters": params, "files": "+".join(stems),
                        "records": sum(len(r) for r in data.values()), "device": device_name,
                        "batch_size": batch_size, "run": run, "seconds": f"{seconds:.4f}",
                        "accuracy": " ".join(f"{k}={v:.4f}" for k, v in accuracy.items()),
                    })  # fmt: skip
            for batch_size, values in times.items():
                scores = {r["accuracy"] for r in rows if r["model"] == label and r["device"] == device_name
                          and r["batch_size"] == batch_size}  # fmt: skip
                print(
                    f"{label} ({params / 1e6:.0f}M) {device_name} batch {batch_size}: "
                    f"min {min(values):.2f} s, median {statistics.median(values):.2f} s; scores {sorted(scores)}"
                )
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"CSV: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
