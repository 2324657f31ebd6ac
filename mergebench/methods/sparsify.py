"""Shared sparsification pieces: magnitude trim (TIES), random drop + rescale (DARE), sign election."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from fractions import Fraction

import torch

# DARE's keep-mask is drawn in blocks of this many entries, each from its own seed, so any chunk of
# a tensor can be processed alone and still get the same mask as the whole tensor would.
RANDOM_BLOCK = 1 << 18


def fraction_count(numel: int, fraction: float) -> int:
    """⌊fraction·n⌋ — mergekit's ``int(fraction * numel)`` — evaluated exactly on the decimal written.

    ``fraction`` is read as the shortest decimal that parses back to the same float (``repr``: what the
    YAML said, e.g. 0.29) and multiplied by n in exact rational arithmetic, so 0.29 · 100 is 29, where
    mergekit's float product 28.999999999999996 truncates to 28. That float error is the only way the
    two differ: on a grid of densities 0.01…0.99 × 18 tensor sizes (32 … 128256·4096) they disagree in
    5 of 1872 cases, all with n a multiple of 100 (0.29·100, 0.57·100, 0.58·100, 0.57·10⁴, 0.69·10⁴).
    """
    if fraction >= 1.0:
        return numel
    if fraction <= 0.0 or numel <= 0:
        return 0
    return min(numel, math.floor(Fraction(repr(float(fraction))) * numel))


def keep_count(numel: int, density: float) -> int:
    """How many entries TIES' magnitude trim keeps: ⌊density·n⌋ (``fraction_count``), and at least
    one of a non-empty tensor — as mergekit's ``magnitude`` (``max(1, int(density * numel))``)."""
    if density >= 1.0:
        return numel
    return max(1, fraction_count(numel, density)) if numel > 0 else 0


def trim_threshold(delta: torch.Tensor, density: float) -> tuple[float, int]:
    """(threshold, cutoff) such that exactly keep_count(n, density) entries survive the trim:
    |x| > threshold, plus entries with |x| == threshold up to flat index ``cutoff``.

    Ties at the threshold magnitude are broken toward lower flat index, so the result is
    deterministic and keeps exactly the requested fraction even for low-precision inputs, where
    many entries share a magnitude.
    """
    return top_k_cut(delta.reshape(-1).abs(), keep_count(delta.numel(), density))


def trim_mask(delta: torch.Tensor, threshold: float, cutoff: int, offset: int = 0) -> torch.Tensor:
    """The trim's keep-mask for a flat chunk of a task vector starting at ``offset``."""
    magnitude = delta.abs()
    mask = magnitude > threshold
    if cutoff >= offset:
        positions = torch.arange(offset, offset + delta.numel(), device=delta.device).reshape(delta.shape)
        mask |= (magnitude == threshold) & (positions <= cutoff)
    return mask


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of exactly keep_count(n, density) entries of largest |delta| (see ``trim_threshold``)."""
    return trim_mask(delta, *trim_threshold(delta, density))


def top_k_cut(magnitude: torch.Tensor, k: int) -> tuple[float, int]:
    """(threshold, cutoff) keeping exactly the k largest entries of a 1-D tensor (see trim_threshold).

    An exact selection over tens of millions of entries dominates TIES' cost, so the k-th value is
    first bracketed with quantiles of a strided sample; the exact selection then runs only over the
    few entries inside the bracket. If the bracket misses (it is checked by counting), the full
    selection runs instead, so the answer never depends on the sample.
    """
    n = magnitude.numel()
    if k >= n:
        return float("-inf"), -1
    if k <= 0:
        return float("inf"), -1
    if n > 1 << 20:
        sample = magnitude[:: n // (1 << 16)].float()
        q = 1.0 - k / n
        bounds = torch.quantile(
            sample, torch.tensor([max(q - 0.01, 0.0), min(q + 0.01, 1.0)], device=sample.device)
        )
        lo, hi = bounds[0].item(), bounds[1].item()
        above = int(torch.count_nonzero(magnitude > hi))
        if above < k:
            positions = ((magnitude >= lo) & (magnitude <= hi)).nonzero().reshape(-1)
            if 0 < k - above <= positions.numel():
                return _cut(magnitude[positions], k - above, positions)
    return _cut(magnitude, k, None)


def _cut(values: torch.Tensor, k: int, positions: torch.Tensor | None) -> tuple[float, int]:
    """Threshold and tie cutoff for the k largest of ``values`` (flat indices mapped by ``positions``)."""
    threshold = torch.kthvalue(values, values.numel() - k + 1).values
    missing = k - int(torch.count_nonzero(values > threshold))
    if missing <= 0:
        return float(threshold), -1
    tied = (values == threshold).nonzero().reshape(-1)[missing - 1]
    return float(threshold), int(positions[tied] if positions is not None else tied)


def seeded_generator(seed: int, *key: object) -> torch.Generator:
    """A CPU generator seeded from (seed, key…): results do not depend on thread or tensor order."""
    digest = hashlib.sha256(repr((seed, *key)).encode()).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return generator


def uniforms(numel: int, key: tuple, model_index: int, offset: int = 0) -> torch.Tensor:
    """U_j ~ U[0, 1) (float32, CPU) for flat entries [offset, offset + numel) of model ``model_index``:
    drawn block by block of RANDOM_BLOCK entries, block b from seed (key, model, b), so any slice of a
    tensor gets the same numbers as the whole tensor would (DARE and DELLA draw their masks from them)."""
    if numel <= 0:
        return torch.empty(0, dtype=torch.float32)
    first, last = offset // RANDOM_BLOCK, (offset + numel - 1) // RANDOM_BLOCK
    pieces = [
        torch.rand(RANDOM_BLOCK, generator=seeded_generator(*key, model_index, block), dtype=torch.float32)
        for block in range(first, last + 1)
    ]
    uniform = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    start = offset - first * RANDOM_BLOCK
    return uniform[start : start + numel]


def keep_mask(numel: int, density: float, key: tuple, model_index: int, offset: int = 0) -> torch.Tensor:
    """DARE's keep-mask for flat entries [offset, offset + numel) of model ``model_index``'s task
    vector: entry j is kept when U_j < density (``uniforms``)."""
    return uniforms(numel, key, model_index, offset) < density


def dare_drop(
    delta: torch.Tensor, density: float, key: tuple, model_index: int, offset: int = 0, rescale: bool = True
):
    """DARE: keep each entry with probability ``density`` and scale survivors by 1/density.

    The mask is drawn on the CPU, so the same seed gives the same output on every device.
    """
    if density >= 1.0 or delta.numel() == 0:
        return delta
    keep = keep_mask(delta.numel(), density, key, model_index, offset).reshape(delta.shape).to(delta.device)
    kept = delta * keep
    return kept / density if rescale else kept


L1_RESCALE_EPS = 1e-7  # mergekit's ``rescaled_masked_tensor``: below this either norm, no rescale


def l1_rescale(before: float, after: float) -> float:
    """mergekit's ``rescale`` of a sparsified task vector: ‖τ‖₁ / ‖τ̂‖₁, so the survivors keep the
    whole vector's L1 norm; 1 when either norm is below 1e-7 (nothing meaningful to match)."""
    return 1.0 if before < L1_RESCALE_EPS or after < L1_RESCALE_EPS else before / after


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
        # sign(δ)·elected is +1 exactly where δ is non-zero and agrees with a non-zero elected sign
        agrees = torch.sign(delta).mul_(elected).clamp_(min=0)
        merged.addcmul_(delta, agrees)
        if divisor is not None:
            divisor.add_(agrees, alpha=weight)
    if divisor is not None:
        divisor[divisor == 0] = 1.0
        merged /= divisor
    return merged
