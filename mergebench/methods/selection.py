"""Exact top-k selection over a tensor that need not exist: the values are produced slice by slice.

TIES keeps the k largest |τ| of a whole tensor. Materialising |τ| costs a tensor-sized float32
buffer and five passes over it in memory (count above, two bracket compares, their AND, nonzero):
on many cores memory traffic, not arithmetic, bounds it. Here the values are recomputed per
cache-sized slice from the inputs instead: a strided sample (only the sampled entries are computed),
then one pass that counts and keeps the few entries near the cut; only when the sample's bracket
misses is the whole tensor materialised.
The answer never depends on the sample: the bracket is verified by counting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mergebench.mapper import Mapper, in_order, spans

SAMPLE = 1 << 16  # entries in the strided sample that brackets the k-th value
BRACKET = 0.01  # quantile half-width of the bracket
SLICE = 1 << 18  # entries of a materialised tensor counted at a time: the masks stay in cache


# (start, stop, step) → 1-D float values at flat positions start, start + step, … below stop
Values = Callable[[int, int, int], torch.Tensor]
# Top-k cuts (threshold, tie cutoff) that keep every entry (k ≥ n) and none (k ≤ 0); NaN is in neither.
KEEP_ALL, KEEP_NONE = (float("-inf"), -1), (float("inf"), -1)
# (start, stop, lo, hi) → ``count_and_band`` of the values at flat positions start … stop − 1
Band = Callable[[int, int, float, float], tuple[int, torch.Tensor, torch.Tensor]]


def numpy_view(tensor: torch.Tensor) -> np.ndarray | None:
    """The tensor's memory as a numpy array where numpy can compute on it (a float32/float64 CPU
    tensor), else None. Comparisons, counts and nonzero over a chunk run 7–18× faster in numpy (SIMD,
    no GIL) than in torch, whose comparisons to a bool result and ``nonzero`` are scalar loops."""
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64):
        return tensor.numpy()
    return None


def kernel_views(tensors: Sequence[torch.Tensor], widen: bool = False) -> tuple[np.ndarray, ...] | None:
    """Flat numpy views (no copies) of CPU tensors for ``fused``'s one-pass kernels: float32, and with
    ``widen`` stored bfloat16 too (its bits as uint16, widened to float32 as each entry is read: the
    chunk's values are the float32 ones, as the executor's conversion would give). None where a kernel
    does not apply (another dtype or device, a tensor not contiguous)."""
    views = []
    for tensor in tensors:
        if tensor.device.type != "cpu" or not tensor.is_contiguous():
            return None
        if tensor.dtype == torch.float32:
            views.append(tensor.numpy().reshape(-1))
        elif widen and tensor.dtype == torch.bfloat16:
            views.append(tensor.view(torch.uint16).numpy().reshape(-1))
        else:
            return None
    return tuple(views)


def widened(tensors: Sequence[torch.Tensor], widen: bool) -> list[torch.Tensor]:
    """The tensors with stored bfloat16 widened to float32 where ``widen`` (chunks the executor passed
    as stored, ``Piece.widen``): what a method's torch path computes on when no kernel applies."""
    if not widen:
        return list(tensors)
    return [tensor.float() if tensor.dtype == torch.bfloat16 else tensor for tensor in tensors]


def compared(
    values: torch.Tensor, compare: Callable[[Any, float], Any], value: float, *, as_numbers: bool = False
) -> torch.Tensor:
    """``compare(values, value)`` entry by entry (``operator.gt``, ``operator.eq``, …): a bool mask,
    or with ``as_numbers`` 1/0 in values' dtype, ready to multiply by. numpy computes it wherever
    ``numpy_view`` allows; same results as torch's (IEEE comparisons, ``value`` taken in the dtype)."""
    array = numpy_view(values)
    if array is not None:
        result = np.asarray(compare(array, value))  # a 0-d array compares to a numpy scalar
        return torch.from_numpy(result.astype(array.dtype) if as_numbers else result)
    result = compare(values, value)
    return result.to(values.dtype) if as_numbers else result


def times_mask(values: torch.Tensor, mask: torch.Tensor, *, in_place: bool) -> torch.Tensor:
    """``values * mask`` for a bool ``mask`` of values' shape: kept entries unchanged, dropped ones ±0
    (the float product's zeros), into ``values`` when ``in_place``. numpy computes it wherever
    ``numpy_view`` allows: torch multiplies by a bool tensor through a per-entry cast, ~3× slower here
    (132 vs 48 µs per 256K entries)."""
    array = numpy_view(values)
    if array is not None and mask.device.type == "cpu":
        with np.errstate(invalid="ignore"):  # ±inf · 0 is NaN, silently, as in torch
            if in_place:
                np.multiply(array, mask.numpy(), out=array)
                return values
            return torch.from_numpy(np.asarray(np.multiply(array, mask.numpy())))  # 0-d: numpy gives a scalar
    return values.mul_(mask) if in_place else values * mask


def ones_where_zero(values: torch.Tensor) -> torch.Tensor:
    """``values += (values == 0)`` in place: ±0 becomes 1, every other entry (NaN included) unchanged
    — the guard of a divisor that may be empty. numpy where it can: torch's compare to bool and its
    mixed bool/float add are scalar loops (269 vs 72 µs per 256K entries here)."""
    array = numpy_view(values)
    if array is not None:
        np.add(array, array == 0, out=array)
    else:
        values += values == 0
    return values


def count_and_band(chunk: torch.Tensor, lo: float, hi: float) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(#entries > hi, the entries in [lo, hi], their positions in the chunk) of a 1-D chunk; lo ≤ hi."""
    views = kernel_views([chunk]) if chunk.dim() == 1 else None
    if views is not None:
        from mergebench.methods import fused

        return fused.band(views[0], lo, hi)
    array = numpy_view(chunk)
    if array is not None:
        # x > hi ⇔ x ≥ lo and not x ≤ hi (hi ≥ lo; NaN fails both): two compares serve both answers
        at_least = array >= lo
        band = at_least & (array <= hi)
        where = np.flatnonzero(band)
        above = np.count_nonzero(at_least) - where.size
        return int(above), torch.from_numpy(array[where]), torch.from_numpy(where)
    where = ((chunk >= lo) & (chunk <= hi)).nonzero().reshape(-1)
    return int(torch.count_nonzero(chunk > hi)), chunk[where], where


def streamed_top_k_cut(
    values: Values,
    n: int,
    k: int,
    materialize: Callable[[], torch.Tensor],
    step: int,
    map: Mapper = in_order,
    band: Band | None = None,
) -> tuple[float, int]:
    """(threshold, cutoff) keeping exactly the k largest of n values: |x| > threshold, plus entries
    equal to the threshold up to flat index ``cutoff`` (ties broken toward lower index).

    ``values(start, stop, step)`` gives those flat positions (recomputed on demand: the sample is
    ``values(0, n, stride)``, the count walks slices ``values(a, b, 1)``);
    ``step`` is the slice length to walk with, ``map`` how the slices are counted (``TensorInputs.map``:
    on idle cores); ``band(start, stop, lo, hi)``, where given, is ``count_and_band`` of
    ``values(start, stop, 1)`` computed without them (``fused.band``); ``materialize()``
    returns all n values as one tensor, used only when the sampled bracket misses.
    """
    if k >= n:
        return KEEP_ALL
    if k <= 0:
        return KEEP_NONE
    slices = spans(n, step)
    if n > 1 << 20:
        stride = n // SAMPLE
        sample = values(0, n, stride).float()
        q = 1.0 - k / n
        lo, hi = _quantiles(sample, [max(q - BRACKET, 0.0), min(q + BRACKET, 1.0)])
        if band is None:
            counted = map(lambda span: count_and_band(values(span[0], span[1], 1), lo, hi), slices)
        else:
            counted = map(lambda span: band(span[0], span[1], lo, hi), slices)
        above = sum(count for count, _, _ in counted)
        if above < k:
            inside = [band for _, band, _ in counted]
            positions = [where + a for (_, _, where), (a, _) in zip(counted, slices, strict=True)]
            flat_positions = torch.cat(positions)
            if 0 < k - above <= flat_positions.numel():
                return _cut(torch.cat(inside), k - above, flat_positions)
    return _cut(materialize(), k, None)


def top_k_cut(magnitude: torch.Tensor, k: int, map: Mapper = in_order) -> tuple[float, int]:
    """``streamed_top_k_cut`` over a materialised 1-D tensor, counted in cache-sized slices (one
    tensor-sized pass allocates and faults in tensor-sized masks: 1.5× slower on 11M entries)."""
    n = magnitude.numel()
    return streamed_top_k_cut(lambda a, b, step: magnitude[a:b:step], n, k, lambda: magnitude, SLICE, map)


def _quantiles(sample: torch.Tensor, qs: list[float]) -> list[float]:
    """Linear-interpolated quantiles of a sample (a bracket's guess: the answer never depends on it);
    numpy selects them on the CPU where torch sorts the whole sample."""
    array = numpy_view(sample)
    if array is not None:
        return [float(x) for x in np.quantile(array, qs)]
    return torch.quantile(sample, torch.tensor(qs, device=sample.device)).tolist()


def _cut(values: torch.Tensor, k: int, positions: torch.Tensor | None) -> tuple[float, int]:
    """Threshold and tie cutoff for the k largest of ``values`` (flat indices mapped by ``positions``)."""
    array = numpy_view(values) if positions is not None else None
    if array is not None:  # a band: NaN-free, on the CPU (selection by partition, counts in numpy)
        threshold = np.partition(array, array.size - k)[array.size - k]
        missing = k - int(np.count_nonzero(array > threshold))
        if missing <= 0:
            return float(threshold), -1
        tied = np.flatnonzero(array == threshold)[missing - 1]
        return float(threshold), int(positions[tied])
    threshold = torch.kthvalue(values, values.numel() - k + 1).values
    missing = k - int(torch.count_nonzero(values > threshold))
    if missing <= 0:
        return float(threshold), -1
    tied = (values == threshold).nonzero().reshape(-1)[missing - 1]
    return float(threshold), int(positions[tied] if positions is not None else tied)
