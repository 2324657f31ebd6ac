"""The selection kernels, min of 15 runs. The project's sorts against numpy's: DELLA's per-row magnitude ranks
(``fused.magnitude_ranks``, counting) against numpy's row sort of (|δ| bits, column) int64 keys, the
path it replaced, on bf16 rows like a finetune's (ns per entry; the counting time includes δ and its
keys, the sort's does not); and the top-k brackets' sort of a 64K float32 sample
(``fused.sorted_floats``, a radix sort) against ``np.sort``. Then the top-k brackets' count
(``fused.band`` of |θ − θ_base| over 16M stored bf16 entries, a 256K slice a call as the stats walk
calls it; min of 5 walks) with a 2% band, a TIES bracket's width, and with an empty one: what
collecting the band's positions costs.

    .venv/bin/python tools/bench_ranks.py
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from mergebench.methods import fused


def best_of(function: Callable[..., object], *args: object, runs: int = 15) -> float:
    """The fastest of ``runs`` calls of ``function(*args)``, in seconds."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        function(*args)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    for rows, m in ((128, 2048), (46, 5632)):
        base = (torch.randn(rows, m, generator=generator) * 0.02).bfloat16()
        model = (base.float() + 0.002 * torch.randn(rows, m, generator=generator)).bfloat16()
        stored = [x.view(torch.uint16).numpy().reshape(-1) for x in (model, base)]
        delta = (model.float() - base.float()).numpy()
        keys = np.minimum(np.abs(delta).view(np.int32), 0x7F800001).astype(np.int64) << 16 | np.arange(m)
        _, ranks, unranked = fused.magnitude_ranks(*stored, m)
        order = np.sort(keys, axis=1) & 0xFFFF
        assert np.array_equal(
            np.take_along_axis(ranks.reshape(rows, m), order, axis=1),
            np.broadcast_to(np.arange(m), (rows, m)),
        )
        counting = best_of(fused.magnitude_ranks, *stored, m)
        sorting = best_of(np.sort, keys)
        print(
            f"{platform.machine()} m={m}: counting {counting / keys.size * 1e9:.2f} ns/entry "
            f"({unranked.size} rows left to the sort), numpy row sort {sorting / keys.size * 1e9:.2f} ns/entry"
        )
    sample = np.abs(np.random.default_rng(0).standard_normal(1 << 16)).astype(np.float32)
    assert np.array_equal(fused.sorted_floats(sample), np.sort(sample))
    radix, numpy_sort = best_of(fused.sorted_floats, sample), best_of(np.sort, sample)
    print(f"64K float32 sample: sorted_floats {radix * 1e3:.3f} ms, np.sort {numpy_sort * 1e3:.3f} ms")
    n, walk = 1 << 24, 1 << 18  # inputs larger than the caches, walked a slice at a time
    base = (torch.randn(n, generator=generator) * 0.02).bfloat16()
    model = (base.float() + 0.002 * torch.randn(n, generator=generator)).bfloat16()
    stored = [x.view(torch.uint16).numpy() for x in (model, base)]
    magnitude = (model.float() - base.float()).abs()
    ordered = magnitude.sort().values
    for label, (lo, hi) in (
        ("2% band", (float(ordered[int(0.79 * n)]), float(ordered[int(0.81 * n)]))),
        ("empty band", (1.0, 2.0)),
    ):

        def count(ranges: list[tuple[float, float]]) -> list:
            return [
                fused.band(stored[0][a : a + walk], ranges, stored[1][a : a + walk], a)
                for a in range(0, n, walk)
            ]

        assert sum(int(found[0][0]) for found in count([(lo, hi)])) == int((magnitude > hi).sum())
        seconds = best_of(count, [(lo, hi)], runs=5)
        print(f"band of |model - base| in {walk >> 10}K slices, {label}: {seconds / n * 1e9:.3f} ns/entry")


if __name__ == "__main__":
    main()
