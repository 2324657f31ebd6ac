"""Shared sparsification pieces: magnitude trim (TIES), random drop + rescale (DARE), sign election."""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import struct
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch

from mergebench.methods.basic import plus_base
from mergebench.methods.selection import (
    KEEP_ALL,
    KEEP_NONE,
    compared,
    kernel_views,
    ones_where_zero,
    times_mask,
    top_k_cut,
    widened,
)


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
    """The trim's keep-mask for a flat chunk of a task vector starting at ``offset``.

    Only a chunk holding the tie cutoff needs flat positions: before it every tie is kept (|x| ≥
    threshold), after it none (|x| > threshold).
    """
    magnitude = delta.abs()
    last = offset + delta.numel() - 1
    if cutoff < offset or cutoff >= last:
        return compared(magnitude, operator.ge if cutoff >= last else operator.gt, threshold)
    positions = torch.arange(offset, offset + delta.numel(), device=delta.device).reshape(delta.shape)
    return (magnitude > threshold) | ((magnitude == threshold) & (positions <= cutoff))


def kept_mask(
    delta: torch.Tensor, keep: tuple[float, int], drop: tuple[float, int], offset: int = 0
) -> torch.Tensor:
    """Keep-mask of a flat chunk of a task vector at ``offset``: inside the top-k cut ``keep`` and not
    inside ``drop`` (``KEEP_NONE``: nothing dropped, TIES' trim; breadcrumbs drops its top band)."""
    inside = trim_mask(delta, *keep, offset)
    if drop == KEEP_NONE:
        return inside
    above = trim_mask(delta, *drop, offset)
    if inside.device.type == "cpu":  # numpy's bool ops: torch's are scalar loops
        return torch.from_numpy(inside.numpy() & ~above.numpy())
    return inside & ~above


# A task vector's trim: the entries inside the cut ``keep`` and not inside ``drop``, times a scale
Trim = tuple[tuple[float, int], tuple[float, int], float]
WHOLE: Trim = (KEEP_ALL, KEEP_NONE, 1.0)  # every entry, unscaled


def trimmed_merge(
    models: Sequence[torch.Tensor],
    base: torch.Tensor,
    trims: Sequence[Trim],
    weight: Sequence[float],
    *,
    offset: int,
    widen: bool,
    elect_signs: bool,
    normalize: bool,
    lambda_: float,
) -> torch.Tensor:
    """θ_base + λ·combine_i(w_i·s_i·τ_i·mask_i) of a flat chunk at ``offset`` (``kept_mask`` of each
    ``trims[i]`` = (keep, drop, s_i)): combined by TIES' sign election and disjoint mean
    (``elect_signs``) or summed (÷ Σ w_i with ``normalize``). TIES' and breadcrumbs' merge: one pass
    on the CPU (``fused.trimmed_merge``), torch's operations elsewhere; chunks may be stored bf16 with
    ``widen`` (``Piece.widen``)."""
    views = kernel_views([*models, base], widen)
    if views is not None:
        from mergebench.methods import fused

        merged = fused.trimmed_merge(
            views[:-1],
            views[-1],
            trims,
            offset,
            weight,
            elect_signs=elect_signs,
            normalize=normalize,
            lambda_=lambda_,
        )
        return merged.view(base.shape)
    *models, base = widened([*models, base], widen)
    weighted = []
    for model, w, (keep, drop, scale) in zip(models, weight, trims, strict=True):
        delta = model - base
        if (keep, drop) != (KEEP_ALL, KEEP_NONE):
            times_mask(delta, kept_mask(delta, keep, drop, offset), in_place=True)
        if scale != 1.0:
            delta *= scale
        weighted.append(delta.mul_(w))
    if elect_signs:
        return elect_and_merge(weighted, weight, normalize, base, lambda_)
    update = weighted[0]
    for delta in weighted[1:]:
        update += delta
    if normalize:
        update /= sum(weight)
    return plus_base(update, base, lambda_)


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of exactly keep_count(n, density) entries of largest |delta| (see ``trim_threshold``)."""
    return trim_mask(delta, *trim_threshold(delta, density))


def seeded_generator(seed: int, *key: object) -> torch.Generator:
    """A CPU generator seeded from (seed, key…): results do not depend on thread or tensor order."""
    digest = hashlib.sha256(repr((seed, *key)).encode()).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return generator


# ------------------------------------------------------------------------------------------------
# DARE's and DELLA's uniforms: a counter-based hash of (key, model, flat position)

HASH_BLOCK = 1 << 16  # entries hashed at a time on the CPU: the work arrays stay in L2
HASH_BLOCK_DEVICE = 1 << 22  # on an accelerator: few kernel launches, 64 MiB of work arrays
NUMPY_ON_CPU = True  # CPU: numpy uint32 arithmetic, 3× faster than torch int64 (same numbers)
_M32 = (1 << 32) - 1
_M64 = (1 << 64) - 1
_U32 = np.uint32

# triple32 (C. Wellons, hash-prospector): x ^= x>>17; x *= ed5ad4bb; x ^= x>>11; x *= ac4c1b51;
# x ^= x>>15; x *= 31848bab; x ^= x>>14 (mod 2³²); k1 is xored in after the first multiply
HASH_ROUNDS = ((17, 0xED5AD4BB), (11, 0xAC4C1B51), (15, 0x31848BAB))
HASH_LAST_SHIFT = 14


def _signed32(c: int) -> int:
    """A 32-bit multiplier as the signed value with the same residue mod 2³²: |x·c| < 2⁶³ for x < 2³²."""
    return c - (1 << 32) if c >= 1 << 31 else c


def stream_key(key: tuple, model_index: int) -> int:
    """The 64-bit key of model ``model_index``'s draws for ``key`` = (seed, tensor name): sha256 of
    repr((seed, name, model_index)), first 8 bytes little-endian."""
    digest = hashlib.sha256(repr((*key, model_index)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def segment_key(stream: int, segment: int) -> tuple[int, int]:
    """(k0, k1), the 32-bit halves of the key for flat positions [segment·2³², (segment + 1)·2³²): the
    segment-th output of SplitMix64 seeded with ``stream`` (mixes a position's high 32 bits in)."""
    z = (stream + (segment + 1) * 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return z & _M32, z >> 32


def counter_key(key: tuple, model_index: int, offset: int, numel: int) -> tuple[int, int] | None:
    """(first, k1) of flat positions [offset, offset + numel) of model ``model_index``'s draws when
    they lie in one 2³² segment: position offset + j hashes counter (first + j) mod 2³² with k1; None
    where the range crosses a segment (two keys)."""
    if numel > 0 and offset >> 32 != (offset + numel - 1) >> 32:
        return None
    (_, _, first, k1), *_ = _pieces(max(numel, 1), offset, max(numel, 1), stream_key(key, model_index))
    return first, k1


def _pieces(numel: int, offset: int, block: int, stream: int):
    """(start, n, first, k1) for consecutive pieces of [offset, offset + numel): at most ``block``
    entries, never across a 2³² segment; ``first`` is the piece's first counter (low 32 bits + k0)."""
    done = 0
    while done < numel:
        position = offset + done
        segment, low = position >> 32, position & _M32
        n = min(block, numel - done, (1 << 32) - low)
        k0, k1 = segment_key(stream, segment)
        yield done, n, (low + k0) & _M32, k1
        done += n


@functools.lru_cache(maxsize=1)
def _counters(block: int) -> np.ndarray:
    counters = np.arange(block, dtype=_U32)
    counters.flags.writeable = False
    return counters


def _hashes_numpy(numel: int, stream: int, offset: int):
    """(start, h): h_j as uint32 numpy arrays, block by block (unsigned arithmetic wraps mod 2³²).
    ``h`` is a work array, overwritten by the next block."""
    counters = _counters(HASH_BLOCK)
    x = np.empty(min(numel, HASH_BLOCK), dtype=_U32)
    t = np.empty_like(x)
    for start, n, first, k1 in _pieces(numel, offset, HASH_BLOCK, stream):
        h, s = x[:n], t[:n]
        np.add(counters[:n], _U32(first), out=h)  # the counter, wrapping mod 2³²
        for index, (shift, multiplier) in enumerate(HASH_ROUNDS):
            h ^= np.right_shift(h, _U32(shift), out=s)
            h *= _U32(multiplier)
            if index == 0:
                h ^= _U32(k1)
        h ^= np.right_shift(h, _U32(HASH_LAST_SHIFT), out=s)
        yield start, h


def _hashes_torch(numel: int, stream: int, offset: int, device: torch.device):
    """(start, h): h_j in int64 tensors on ``device``, block by block. Every value stays in [0, 2³²)
    between steps: products of a 32-bit value and a signed 32-bit multiplier stay under 2⁶³ and are
    masked back to 32 bits, and >> of a non-negative value is logical — no overflow on any backend.
    ``h`` is a work array, overwritten by the next block."""
    block = HASH_BLOCK if device.type == "cpu" else HASH_BLOCK_DEVICE
    x = torch.empty(min(numel, block), dtype=torch.int64, device=device)
    t = torch.empty_like(x)
    for start, n, first, k1 in _pieces(numel, offset, block, stream):
        h, s = x[:n], t[:n]
        wrap = min(n, (1 << 32) - first)  # the counter as an arange, split where it wraps
        torch.arange(first, first + wrap, dtype=torch.int64, out=h[:wrap])
        if wrap < n:
            torch.arange(0, n - wrap, dtype=torch.int64, out=h[wrap:])
        for index, (shift, multiplier) in enumerate(HASH_ROUNDS):
            h.bitwise_xor_(torch.bitwise_right_shift(h, shift, out=s))
            h.mul_(_signed32(multiplier)).bitwise_and_(_M32)
            if index == 0:
                h.bitwise_xor_(k1)
        h.bitwise_xor_(torch.bitwise_right_shift(h, HASH_LAST_SHIFT, out=s))
        yield start, h


def _hashes(numel: int, key: tuple, model_index: int, offset: int, device: torch.device):
    stream = stream_key(key, model_index)
    if device.type == "cpu" and NUMPY_ON_CPU:
        return _hashes_numpy(numel, stream, offset)
    return _hashes_torch(numel, stream, offset, device)


def uniforms(
    numel: int, key: tuple, model_index: int, offset: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """U_j ∈ [0, 1) (float32, on ``device``, CPU by default) for flat entries [offset, offset + numel)
    of model ``model_index``'s task vector; ``key`` = (seed, tensor name). DARE and DELLA draw their
    masks from them.

    U_j = ⌊h_j / 2⁸⌋·2⁻²⁴, the top 24 bits of a counter-based hash h_j of (key, model, j) alone, so
    any chunk of a tensor gets the same numbers as the whole tensor, on any device and thread count
    (byte-identical CPU and CUDA), computed where they are used. h_j is triple32 (C. Wellons'
    hash-prospector), keyed: (k0, k1) are the halves of a 64-bit key — sha256 of (seed, name, model),
    through SplitMix64 with j's high 32 bits — and triple32 hashes the counter (j mod 2³²) + k0 with
    k1 xored in after its first multiply (so the streams of two keys are not shifts of one another).
    Over one 2³² segment j ↦ h_j is a bijection.

    Why triple32: the least biased avalanche of the xorshift-multiply hashes searched there (0.021,
    against 0.1–0.17 for the two-multiply lowbias32 and 0.26 for murmur3's fmix32; a keyed two-round
    variant failed our lag-4096 independence test), and only 32-bit products: on the CPU numpy's
    uint32 arithmetic (wrapping, defined); on an accelerator int64 tensors hold the products of 32-bit
    values and signed 32-bit multipliers exactly, masked back to 32 bits. Cost: 13 uint32 or 16 int64
    ops per entry for h, then 3 for U (1 for a keep-mask).
    """
    device = torch.device("cpu" if device is None else device)
    out = torch.empty(max(numel, 0), dtype=torch.float32, device=device)
    if numel <= 0:
        return out
    flat = out.numpy() if device.type == "cpu" and NUMPY_ON_CPU else out
    for start, h in _hashes(numel, key, model_index, offset, device):
        piece = flat[start : start + len(h)]
        if isinstance(h, np.ndarray):
            piece[...] = np.right_shift(h, _U32(8), out=h)
            piece *= np.float32(2.0**-24)
        else:
            piece.copy_(h.bitwise_right_shift_(8)).mul_(2.0**-24)
    return out


def keep_bound(density: float) -> int:
    """Entry j is kept where h_j < this: U_j < f  ⟺  ⌊h_j/2⁸⌋ < f·2²⁴  ⟺  h_j < ⌈f·2²⁴⌉·2⁸
    (f = float32(density); f·2²⁴ is exact); 0 (nothing) for density ≤ 0 or NaN, 2³² for ≥ 1."""
    if density >= 1.0:
        return 1 << 32
    if density > 0.0:
        return math.ceil(struct.unpack("f", struct.pack("f", density))[0] * (1 << 24)) << 8
    return 0


def dropped_views(
    model: np.ndarray,
    base: np.ndarray,
    density: float,
    key: tuple,
    model_index: int,
    offset: int,
    rescale: bool,
    weight: float,
) -> torch.Tensor:
    """w·``dare_drop``(θ − θ_base, …) of chunk views (``selection.kernel_views``: float32 or stored bf16)
    in one pass (``fused.dropped``): the same keep-mask hash, mask product, division and weight, bit
    for bit."""
    from mergebench.methods import fused

    pieces = _pieces(model.size, offset, max(1, model.size), stream_key(key, model_index))
    divide = rescale and density < 1.0  # at density ≥ 1 ``dare_drop`` returns τ as it is
    out = fused.dropped(
        model, base, pieces, HASH_ROUNDS, HASH_LAST_SHIFT, keep_bound(density), density, divide, weight
    )
    return torch.from_numpy(out)


def keep_mask(
    numel: int,
    density: float,
    key: tuple,
    model_index: int,
    offset: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """DARE's keep-mask for flat entries [offset, offset + numel) of model ``model_index``'s task
    vector, on ``device``: entry j is kept when U_j < density (``uniforms``; compared as torch does,
    with density rounded to float32), decided on the hash itself without making U_j."""
    device = torch.device("cpu" if device is None else device)
    bound = keep_bound(density)
    if numel <= 0 or bound in (0, 1 << 32):
        return torch.full((max(numel, 0),), bound > 0, dtype=torch.bool, device=device)
    out = torch.empty(numel, dtype=torch.bool, device=device)
    flat = out.numpy() if device.type == "cpu" and NUMPY_ON_CPU else out
    for start, h in _hashes(numel, key, model_index, offset, device):
        if isinstance(h, np.ndarray):
            np.less(h, _U32(bound), out=flat[start : start + len(h)])
        else:
            torch.lt(h, bound, out=flat[start : start + len(h)])
    return out


def dare_drop(
    delta: torch.Tensor, density: float, key: tuple, model_index: int, offset: int = 0, rescale: bool = True
):
    """DARE: keep each entry with probability ``density`` and scale survivors by 1/density.

    The mask is hashed on ``delta``'s device (``keep_mask``) and the division is correctly rounded
    there, so the same seed gives the same bytes on every device.
    """
    if density >= 1.0 or delta.numel() == 0:
        return delta
    keep = keep_mask(delta.numel(), density, key, model_index, offset, delta.device).view(delta.shape)
    kept = times_mask(delta, keep, in_place=False)
    if not rescale:
        return kept
    # CUDA divides by a Python number as a multiply by its rounded reciprocal (1 ulp off the CPU's
    # quotient); by a 0-dim tensor on the device it divides. float32 (or wider), as the CPU computes.
    wide = kept if kept.dtype in (torch.float32, torch.float64) else kept.float()
    return (wide / torch.full((), density, dtype=wide.dtype, device=wide.device)).to(kept.dtype)


L1_RESCALE_EPS = 1e-7  # mergekit's ``rescaled_masked_tensor``: below this either norm, no rescale


def l1_rescale(before: float, after: float) -> float:
    """mergekit's ``rescale`` of a sparsified task vector: ‖τ‖₁ / ‖τ̂‖₁, so the survivors keep the
    whole vector's L1 norm; 1 when either norm is below 1e-7 (nothing meaningful to match)."""
    return 1.0 if before < L1_RESCALE_EPS or after < L1_RESCALE_EPS else before / after


def disjoint_merge(weighted: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool):
    """TIES' elect + disjoint mean over already weighted task vectors ``w_i·τ̂_i``.

    The elected sign per entry is the sign of Σ w_i·τ̂_i; only entries whose own sign agrees are
    summed, and with ``normalize`` the sum is divided by the total weight of agreeing entries
    (entries where none agree are left at zero). float32 on the CPU: ``fused``'s one-pass kernel.
    """
    views = kernel_views(weighted)
    if views is not None:
        from mergebench.methods import fused

        return fused.disjoint_merge(views, weights, normalize).view(weighted[0].shape)
    return disjoint_merge_torch(weighted, weights, normalize)


def elect_and_merge(
    weighted: Sequence[torch.Tensor],
    weights: Sequence[float],
    normalize: bool,
    base: torch.Tensor,
    lambda_: float,
    widen: bool = False,
) -> torch.Tensor:
    """θ_base + λ·disjoint_merge(w_i·τ̂_i) (``basic.plus_base``), in one pass on the CPU; ``base`` may
    be a stored chunk with ``widen`` (``Piece.widen``)."""
    views = kernel_views([*weighted, base], widen)
    if views is not None:
        from mergebench.methods import fused

        merged = fused.disjoint_merge(views[:-1], weights, normalize, views[-1], lambda_)
        return merged.view(base.shape)
    return plus_base(disjoint_merge(weighted, weights, normalize), widened([base], widen)[0], lambda_)


def disjoint_merge_torch(weighted: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool):
    """``disjoint_merge`` in torch operations: the GPU's and other dtypes' path, and the kernel's
    reference."""
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
        merged /= ones_where_zero(divisor)  # 0 → 1, others unchanged
    return merged
