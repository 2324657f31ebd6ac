#!/usr/bin/env python
"""Trials per minute of a fixed small ``mergebench search`` over the demo models, per number of Ray workers.

    .venv/bin/python tools/bench_search.py [--workers 1,2,4,8,16] [--device cpu|cuda|auto]
        [--repeats 3] [--trials 16] [--demo DIR] [--work DIR] [--eval-lines 32]

The search is fixed so that numbers compare across machines and commits: task_arithmetic of the demo
base with skill_a and skill_b (tools/build_demo_models.py; --demo, default ./demo_models, built there on
first use as tools/demo.sh does), both weights and lambda searched by TPE with seed 0, objective the mean accuracy on
the first --eval-lines prompts of eval/reverse.jsonl and eval/add.jsonl.

For each worker count W: a local Ray instance of W CPUs (with --device cuda also the machine's GPUs,
each trial reserving 1/W of them when W exceeds the GPU count, so W trials share them), one untimed
warm-up search of W trials (each worker imports torch and transformers once: that start-up is not what
a long search pays per trial), then --repeats timed searches of --trials trials, each into a fresh
output directory. Nothing fancy: worker counts run one after the other, repeats back to back.

Reported per W: min and median trials/minute over the repeats, timed from the ``search()`` call to its
last finished trial (study set-up, asking, the trials on Ray; a fixed search's throughput), the median
trials/minute of the whole call (also writing leaderboard, best.yaml and report.html: ~1 s of
matplotlib, which weighs on short searches), and the median seconds of one trial inside its worker
(merge + load + eval).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

SPACE = """\
merge_method: task_arithmetic
base_model: {demo}/base
models:
  - model: {demo}/skill_a
    parameters: {{weight: {{min: 0.0, max: 1.5}}}}
  - model: {demo}/skill_b
    parameters: {{weight: {{min: 0.0, max: 1.5}}}}
parameters:
  lambda: {{min: 0.5, max: 1.5}}
dtype: float32
"""


def parse_workers(text: str) -> list[int]:
    """``1,2,4`` or ``1..4`` (every count from 1 to 4)."""
    if ".." in text:
        low, high = (int(part) for part in text.split("..", 1))
        return list(range(low, high + 1))
    return [int(part) for part in text.split(",") if part.strip()]


def ensure_demo(demo: Path) -> Path:
    """The demo models in ``demo``, built there first (full recipe, as tools/demo.sh does) if missing."""
    if not (demo / ".complete").is_file():
        from build_demo_models import build_demo_models

        print(f"building the demo models into {demo} (once; minutes) ...", flush=True)
        started = time.perf_counter()
        build_demo_models(demo, log=lambda line: print(f"  {line}", flush=True))
        print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
    return demo


def prepare(demo: Path, work: Path, eval_lines: int) -> tuple[Path, list[Path]]:
    """The space file and eval files (the first ``eval_lines`` prompts of each task) under ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    space = work / "space.yaml"
    space.write_text(SPACE.format(demo=demo.resolve()))
    files = []
    for task in ("reverse", "add"):
        lines = (demo / "eval" / f"{task}.jsonl").read_text().splitlines()[:eval_lines]
        assert all(json.loads(line).get("prompt") for line in lines)
        path = work / f"{task}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        files.append(path)
    return space, files


def run_workers(workers: int, args, space: Path, files: list[Path], work: Path) -> dict:
    """Warm-up plus ``args.repeats`` timed searches on a fresh local Ray instance of ``workers`` CPUs."""
    import ray

    from mergebench.search import SearchOptions, search

    gpus = 0
    if args.device in ("cuda", "auto"):
        import torch

        gpus = torch.cuda.device_count()
        if args.device == "cuda" and gpus == 0:
            sys.exit("error: --device cuda: no CUDA device")
    gpus_per_trial = (gpus / workers if workers > gpus else 1.0) if gpus else 0.0
    ray.init(
        address="local",
        num_cpus=workers,
        num_gpus=gpus,
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    try:

        def once(trials: int, name: str) -> tuple[float, float, list[float], int]:
            """One search → (seconds to its last trial, seconds of the whole call, per-trial seconds, failed)."""
            out = work / name
            shutil.rmtree(out, ignore_errors=True)
            finished: list[float] = []  # the search logs one line per finished trial (no terminal here)
            options = SearchOptions(
                trials=trials,
                cpus_per_trial=1,
                gpus_per_trial=gpus_per_trial,
                sampler="tpe",
                seed=0,
                device="auto",
                progress=False,
                log=lambda line: finished.append(time.perf_counter()) if line.startswith("trial ") else None,
            )
            started = time.perf_counter()
            result = search(space, files, out, options)
            total = time.perf_counter() - started
            failed = sum(1 for r in result.rows if r.state != "COMPLETE")
            shutil.rmtree(out, ignore_errors=True)
            return finished[-1] - started, total, [r.seconds for r in result.rows if r.seconds], failed

        once(workers, f"warmup-w{workers}")
        loop_rates, call_rates, trial_seconds, failed = [], [], [], 0
        for repeat in range(args.repeats):
            loop, total, per_trial, bad = once(args.trials, f"w{workers}-r{repeat}")
            loop_rates.append(args.trials / loop * 60)
            call_rates.append(args.trials / total * 60)
            trial_seconds.extend(per_trial)
            failed += bad
            print(
                f"  workers={workers} repeat={repeat}: {args.trials} trials in {loop:.1f} s "
                f"({total:.1f} s with the outputs)",
                flush=True,
            )
    finally:
        ray.shutdown()
    return {
        "workers": workers,
        "gpus_per_trial": gpus_per_trial,
        "min": min(loop_rates),
        "median": statistics.median(loop_rates),
        "call_median": statistics.median(call_rates),
        "trial_s": statistics.median(trial_seconds) if trial_seconds else float("nan"),
        "failed": failed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--workers", default=None, help="Ray CPU counts: 1,2,4 or 1..8 (default: 1 and all cores)"
    )
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    ap.add_argument("--repeats", type=int, default=3, help="timed searches per worker count (at least 3)")
    ap.add_argument("--trials", type=int, default=16, help="trials per timed search")
    ap.add_argument("--eval-lines", type=int, default=32, help="prompts per eval file")
    ap.add_argument("--demo", type=Path, default=ROOT / "demo_models", help="demo models (built if missing)")
    ap.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "mergebench-bench-search",
        help="scratch: the space, eval subsets and search outputs",
    )
    args = ap.parse_args(argv)
    if args.repeats < 3:
        ap.error("--repeats: at least 3 (a min and a median of fewer say little)")
    cores = os.cpu_count() or 1
    workers = parse_workers(args.workers) if args.workers else sorted({1, cores})
    demo = ensure_demo(args.demo)
    space, files = prepare(demo, args.work, args.eval_lines)
    print(
        f"search: {args.trials} trials (TPE), demo task_arithmetic, {args.eval_lines} prompts x 2 files, "
        f"device {args.device}, {cores} cores",
        flush=True,
    )
    results = [run_workers(w, args, space, files, args.work) for w in workers]
    print()
    print(
        f"{'workers':>7}  {'gpu/trial':>9}  {'min trials/min':>14}  {'median trials/min':>17}  "
        f"{'median incl. outputs':>20}  {'s/trial':>7}  failed"
    )
    for r in results:
        print(
            f"{r['workers']:>7}  {r['gpus_per_trial']:>9.3g}  {r['min']:>14.1f}  {r['median']:>17.1f}  "
            f"{r['call_median']:>20.1f}  {r['trial_s']:>7.2f}  {r['failed']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
