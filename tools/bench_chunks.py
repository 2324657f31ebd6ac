#!/usr/bin/env python3
"""Chunk arithmetic throughput by chunk length and thread count: how the executor should cut tensors.

The executor computes elementwise methods chunk by chunk, one op per worker thread, every torch call
single-threaded, glibc keeping freed scratch for reuse (as the command line sets it). Each thread here
does what a worker does per chunk — widen bf16 inputs to float32, apply the method, round the result
into a bf16 output — on data of its own, over and over for ``--seconds``; the rate is entries of
output per second over all threads. Chunk lengths alternate
within every run (rotated order) and each (method, threads, chunk) is measured ``--runs`` times;
min and median are reported, with each median's speed-up over the same chunk length on one thread.
No files are read or written (this is the arithmetic alone: no I/O floor applies).

    .venv/bin/python tools/bench_chunks.py                       # defaults: linear, ram; 1..cores threads
    python3 tools/bench_chunks.py --threads 1,4,8,16 --chunks 256K,1M,4M
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from mergebench.libc import retain_freed_memory  # noqa: E402
from mergebench.methods import get_method  # noqa: E402

# method → (number of models, has a base, parameters by YAML name)
METHODS = {
    "linear": (2, False, {"weight": [0.5, 0.5], "normalize": True}),
    "task_arithmetic": (2, True, {"weight": [1.0, 1.0], "normalize": False, "lambda_": 1.0}),
    "ram": (2, True, {"epsilon": 1e-5}),
}


def size(text: str) -> int:
    """Entries from "256K", "1M" or a plain number."""
    units = {"K": 1 << 10, "M": 1 << 20}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def chunk_work(method: str, entries: int, seed: int) -> Callable[[], None]:
    """One thread's per-chunk work on its own bf16 inputs (a base and finetunes a small move away)."""
    count, has_base, params = METHODS[method]
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(entries, generator=generator)
    models = [(base + 0.01 * torch.randn(entries, generator=generator)).bfloat16() for _ in range(count)]
    stored_base = base.bfloat16()
    out = torch.empty(entries, dtype=torch.bfloat16)
    function = get_method(method)

    def run() -> None:
        wide = [model.float() for model in models]
        out.copy_(function(wide, stored_base.float() if has_base else None, **params))

    return run


def rate(method: str, entries: int, threads: int, seconds: float) -> float:
    """Output entries per second over ``threads`` threads, each running its own chunks."""
    works = [chunk_work(method, entries, seed) for seed in range(threads)]
    done = [0] * threads
    for work in works:
        work()  # warm: first-touch of the thread's buffers is not the steady state
    deadline = time.perf_counter() + seconds

    def loop(index: int) -> None:
        while time.perf_counter() < deadline:
            works[index]()
            done[index] += 1

    started = time.perf_counter()
    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(done) * entries / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cores = len(os.sched_getaffinity(0))
    default_threads = ",".join(str(t) for t in (1, 2, 4, 8, 16, 32) if t <= cores)
    parser.add_argument("--methods", default="linear,ram", help=f"comma-separated, of: {', '.join(METHODS)}")
    parser.add_argument(
        "--threads", default=default_threads, help="thread counts (default: powers of 2 up to the cores)"
    )
    parser.add_argument("--chunks", default="256K,1M", help="chunk lengths in entries (K = 1024, M = 1024²)")
    parser.add_argument("--runs", type=int, default=5, help="measurements of each (method, threads, chunk)")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the executor: one intra-op thread per worker
    retain_freed_memory()  # as the command line: chunk scratch is reused, not faulted in afresh
    chunks = [size(c) for c in args.chunks.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    print(
        f"{cores} cores, torch {torch.__version__}; M output entries/s over all threads (median, min of {args.runs})"
    )
    for method in args.methods.split(","):
        medians: dict[tuple[int, int], float] = {}
        for count in threads:
            samples: dict[int, list[float]] = {chunk: [] for chunk in chunks}
            for run in range(args.runs):
                order = chunks[run % len(chunks) :] + chunks[: run % len(chunks)]
                for chunk in order:
                    samples[chunk].append(rate(method, chunk, count, args.seconds) / 1e6)
            cells = []
            for chunk in chunks:
                median = statistics.median(samples[chunk])
                medians[chunk, count] = median
                speedup = median / medians[chunk, threads[0]]
                cells.append(
                    f"{chunk >> 10:>5}K {median:7.0f} (min {min(samples[chunk]):6.0f}, {speedup:4.1f}x)"
                )
            print(f"{method:16s} {count:3d} threads: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
