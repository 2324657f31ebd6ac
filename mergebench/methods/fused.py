"""CPU kernels that do a method's per-entry steps in one pass over a chunk (numba, compiled once and
cached on disk).

Why: torch and numpy run one operation per pass over memory. TIES' merge of a 256K-entry chunk is ~25
of them (difference, magnitude, compare, mask product, weight, sum, signs, agreement, divisor, …), each
a tensor-sized write; on a 2-core machine those passes, not reading the inputs, bounded the methods
with sign election and magnitude trims. A compiled loop keeps each entry in registers from its first
step to its last.

Contract: a kernel gives the same bits as the torch expressions it stands for (the reference, and
the path on a GPU and for dtypes other than float32): the same float32 operations in the same order,
no reassociation or fused multiply-add (numba's default), the same treatment of ±0, NaN and ±inf
(``tests/test_fused.py`` compares bit patterns). Callers use a kernel only where
``selection.float32_views`` gives arrays.

Imported lazily (``import numba`` costs ~0.15 s): only a run that merges on the CPU with these
methods pays it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numba import njit

ZERO, ONE = np.float32(0.0), np.float32(1.0)

kernel = njit(cache=True, nogil=True, boundscheck=False)


@kernel
def _disjoint_merge(weighted, weights, normalize, lambda_, base, add_base, out):
    # len(weighted) is part of the tuple's type: the loops over models unroll, the entry loop vectorises
    count = len(weighted)
    for j in range(out.shape[0]):
        total = weighted[0][j]
        for i in range(1, count):
            total = total + weighted[i][j]
        merged = ZERO
        divisor = ZERO
        for i in range(count):
            delta = weighted[i][j]
            # torch: clamp(sign(δ)·sign(Σ), min=0) — 1 where both are non-zero with one sign (NaN: 0)
            agrees = ONE if ((delta > ZERO) & (total > ZERO)) | ((delta < ZERO) & (total < ZERO)) else ZERO
            merged = merged + delta * agrees
            divisor = divisor + agrees * weights[i]
        if normalize:
            merged = merged / (ONE if divisor == ZERO else divisor)
        out[j] = merged * lambda_ + base[j] if add_base else merged


def disjoint_merge(
    weighted: tuple[np.ndarray, ...],
    weights: Sequence[float],
    normalize: bool,
    base: np.ndarray | None = None,
    lambda_: float = 1.0,
) -> torch.Tensor:
    """``sparsify.disjoint_merge`` over float32 views (then, with ``base``, θ_base + λ·merged as
    ``basic.plus_base`` computes it): one pass."""
    out = np.empty_like(weighted[0])
    with_base = base is not None
    _disjoint_merge(
        weighted,
        np.asarray(weights, dtype=np.float32),
        normalize,
        np.float32(lambda_),
        base if with_base else out,
        with_base,
        out,
    )
    return torch.from_numpy(out)


@kernel
def _trimmed(model, base, threshold, cutoff, weight, out):
    for j in range(out.shape[0]):
        delta = model[j] - base[j]
        magnitude = abs(delta)
        keep = (magnitude > threshold) | ((magnitude == threshold) & (j <= cutoff))
        out[j] = delta * (ONE if keep else ZERO) * weight


def trimmed(
    model: np.ndarray, base: np.ndarray, threshold: float, cutoff: int, offset: int, weight: float
) -> np.ndarray:
    """TIES' w·trim(θ − θ_base) of a chunk at flat ``offset`` (``sparsify.trim_mask``, the mask
    product and the weight as the torch path computes them): one pass."""
    out = np.empty_like(model)
    # the tie cutoff relative to this chunk, clipped so it fits the kernel's int64 either way
    local = min(max(cutoff - offset, -1), out.size)
    _trimmed(model, base, np.float32(threshold), local, np.float32(weight), out)
    return out


@kernel
def _band_mask(model, base, lo, hi, inside):
    above = 0
    for j in range(model.shape[0]):
        magnitude = abs(model[j] - base[j])
        inside[j] = (magnitude >= lo) & (magnitude <= hi)
        above += magnitude > hi  # NaN counts in neither
    return above


@kernel
def _magnitudes_at(model, base, positions, out):
    for i in range(positions.shape[0]):
        out[i] = abs(model[positions[i]] - base[positions[i]])


def magnitude_band(
    model: np.ndarray, base: np.ndarray, lo: float, hi: float
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """``selection.count_and_band`` of |θ − θ_base| without materialising it: (#entries > hi, the
    entries in [lo, hi], their positions). The mask and count in one vectorised pass; the band's few
    positions by numpy's ``flatnonzero`` (a compiled loop that appends them is 3–10× slower: its
    branch or store chain cannot be vectorised)."""
    inside = np.empty(model.shape, dtype=np.bool_)
    above = _band_mask(model, base, np.float32(lo), np.float32(hi), inside)
    positions = np.flatnonzero(inside)
    values = np.empty(positions.shape, dtype=np.float32)
    _magnitudes_at(model, base, positions, values)
    return int(above), torch.from_numpy(values), torch.from_numpy(positions)
