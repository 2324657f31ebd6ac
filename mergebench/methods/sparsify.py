"""Shared sparsification pieces: magnitude trim (TIES), random drop + rescale (DARE), sign election."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def keep_count(numel: int, density: float) -> int:
    """How many entries a trim to ``density`` keeps: ⌊density · n⌋ (all of them at density 1)."""
    return numel if density >= 1.0 else int(density * numel)


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of exactly ⌊density·n⌋ entries of largest |delta|.

    Ties at the threshold magnitude are broken toward lower flat index, so the result is
    deterministic and keeps exactly the requested fraction even for low-precision inputs, where
    many entries share a magnitude.
    """
    flat = delta.reshape(-1).abs()
    n = flat.numel()
    k = keep_count(n, density)
    if k >= n:
        return torch.ones_like(delta, dtype=torch.bool)
    if k == 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    threshold = kth_largest(flat, k)
    mask = flat > threshold
    missing = k - int(mask.sum())
    if missing > 0:
        at_threshold = (flat == threshold).nonzero().reshape(-1)[:missing]
        mask[at_threshold] = True
    return mask.reshape(delta.shape)


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of a 1-D tensor, exactly.

    A full ``kthvalue`` over tens of millions of entries dominates TIES' cost, so the value is first
    bracketed with quantiles of a strided sample; the exact selection then runs only over the few
    entries inside the bracket. If the bracket misses (it is checked by counting), the full
    selection runs instead, so the answer never depends on the sample.
    """
    n = values.numel()
    if n > 1 << 20:
        stride = n // (1 << 16)
        sample = values[::stride].float()
        q = 1.0 - k / n
        margin = 0.01
        lo_q, hi_q = max(q - margin, 0.0), min(q + margin, 1.0)
        bounds = torch.quantile(sample, torch.tensor([lo_q, hi_q], dtype=torch.float32))
        lo, hi = bounds[0].to(values.dtype), bounds[1].to(values.dtype)
        above = int((values > hi).sum())
        if above < k:
            candidates = values[(values >= lo) & (values <= hi)]
            rank = k - above  # rank among candidates, counted from the largest
            if 0 < rank <= candidates.numel():
                return torch.kthvalue(candidates, candidates.numel() - rank + 1).values
    return torch.kthvalue(values, n - k + 1).values


def seeded_generator(seed: int, *key: object) -> torch.Generator:
    """A CPU generator seeded from (seed, key…): results do not depend on thread or tensor order."""
    digest = hashlib.sha256(repr((seed, *key)).encode()).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return generator


def dare_drop(delta: torch.Tensor, density: float, generator: torch.Generator, rescale: bool = True):
    """DARE: keep each entry with probability ``density`` and scale survivors by 1/density.

    The keep-mask is drawn on the CPU from ``generator`` so that the same seed gives the same
    output on every device.
    """
    if density >= 1.0:
        return delta
    keep = torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density
    kept = delta * keep.to(delta.device)
    return kept / density if rescale else kept


def disjoint_merge(weighted: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool):
    """TIES' elect + disjoint mean over already weighted task vectors ``w_i·τ̂_i``.

    The elected sign per entry is the sign of Σ w_i·τ̂_i; only entries whose own sign agrees are
    summed, and with ``normalize`` the sum is divided by the total weight of agreeing entries
    (entries where none agree are left at zero).
    """
    total = weighted[0].clone()
    for delta in weighted[1:]:
        total += delta
    elected = torch.sign(total)
    merged = torch.zeros_like(total)
    divisor = torch.zeros_like(total) if normalize else None
    for delta, weight in zip(weighted, weights, strict=True):
        agree = (torch.sign(delta) == elected) & (delta != 0)
        merged += torch.where(agree, delta, 0.0)
        if divisor is not None:
            divisor += agree * weight
    if divisor is not None:
        divisor[divisor == 0] = 1.0
        merged /= divisor
    return merged
