#!/usr/bin/env python
"""One core's pace at the arithmetic a merge is made of, to compare machines before comparing merges.

    python tools/core_speed.py [--entries 4M] [--repeats 20]

Prints ns per entry (best of three loops of ``--repeats``) for: bf16 → float32 conversion into a
reused buffer (every method's input widening), a float32 add into a fresh tensor (elementwise
arithmetic, allocation included), numpy's sort of 2048-entry float32 rows (DELLA's rank step), and
the two bool-mask steps the methods hand to numpy (``selection.times_mask`` and
``selection.ones_where_zero``) next to the torch expressions they replace, on 256K-entry chunks as
the executor cuts them. One intra-op thread, so the numbers are one core's; glibc keeps freed memory
for reuse, as the command line sets it.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from mergebench.execute import CHUNK  # the chunk length on a few cores
from mergebench.libc import retain_freed_memory
from mergebench.methods.selection import ones_where_zero, times_mask


def per_entry(function, entries: int, repeats: int) -> float:
    """Best of three timings of ``repeats`` calls, in ns per entry."""
    function()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best / entries * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--entries", type=lambda v: int(v[:-1]) << 20 if v.endswith("M") else int(v), default=4 << 20
    )
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    retain_freed_memory()
    n = args.entries - args.entries % 2048
    generator = torch.Generator().manual_seed(0)
    halves = torch.randn(n, generator=generator).bfloat16()
    floats = torch.empty(n)
    rows = np.random.default_rng(0).random(n, dtype=np.float32).reshape(-1, 2048)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, numpy {np.__version__}, {n} entries"
    )
    for name, function in (
        ("bf16 -> float32 copy_", lambda: floats.copy_(halves)),
        ("float32 add (fresh output)", lambda: torch.add(floats, floats)),
        ("numpy sort of 2048-entry rows", lambda: np.sort(rows, axis=1)),
    ):
        print(f"{name:36s} {per_entry(function, n, args.repeats):7.3f} ns/entry")
    chunk = floats[:CHUNK].clone()
    mask = torch.rand(CHUNK, generator=generator) > 0.5
    divisor = torch.rand(CHUNK, generator=generator).mul_(mask)  # half zeros, as where no sign agrees
    for name, function in (
        ("chunk * bool mask: torch", lambda: chunk * mask),
        ("chunk * bool mask: times_mask", lambda: times_mask(chunk, mask, in_place=False)),
        ("divisor += divisor == 0: torch", lambda: divisor.clone().add_(divisor == 0)),
        ("divisor guard: ones_where_zero", lambda: ones_where_zero(divisor.clone())),
    ):
        print(f"{name:36s} {per_entry(function, CHUNK, args.repeats * 16):7.3f} ns/entry")


if __name__ == "__main__":
    main()
