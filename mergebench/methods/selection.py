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
from mergebench.methods.registry import STATS_CHUNK, TensorInputs

SAMPLE = 1 << 16  # entries in the strided sample that brackets the k-th value
BRACKET = 0.01  # quantile half-width of the bracket
SLICE = 1 << 18  # entries of a materialised tensor counted at a time: the masks stay in cache


# (start, stop, step) → 1-D float values at flat positions start, start + step, … below stop
Values = Callable[[int, int, int], torch.Tensor]
# Top-k cuts (threshold, tie cutoff) that keep every entry (k ≥ n) and none (k ≤ 0); NaN is in neither.
KEEP_ALL, KEEP_NONE = (float("-inf"), -1), (float("inf"), -1)
# (start, stop, ranges) → ``count_and_bands`` of the values at flat positions start … stop − 1
Band = Callable[[int, int, Sequence[tuple[float, float]]], list[tuple[int, torch.Tensor, torch.Tensor]]]


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
    return count_and_bands(chunk, [(lo, hi)])[0]


def count_and_bands(
    chunk: torch.Tensor, ranges: Sequence[tuple[float, float]], first: int = 0
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """``count_and_band`` of a 1-D chunk for each (lo, hi) of ``ranges``, positions counted from
    ``first`` (the chunk's flat offset)."""
    views = kernel_views([chunk]) if chunk.dim() == 1 else None
    if views is not None:
        from mergebench.methods import fused

        return fused.band(views[0], ranges, None, first)
    results = []
    array = numpy_view(chunk)
    for lo, hi in ranges:
        if array is not None:
            # x > hi ⇔ x ≥ lo and not x ≤ hi (hi ≥ lo; NaN fails both): two compares serve both answers
            at_least = array >= lo
            where = np.flatnonzero(at_least & (array <= hi))
            above = np.count_nonzero(at_least) - where.size
            results.append((int(above), torch.from_numpy(array[where]), torch.from_numpy(where + first)))
            continue
        where = ((chunk >= lo) & (chunk <= hi)).nonzero().reshape(-1)
        results.append((int(torch.count_nonzero(chunk > hi)), chunk[where], where + first))
    return results


def streamed_top_k_cuts(
    values: Sequence[Values],
    ks: Sequence[int],
    n: int,
    materialize: Callable[[int], torch.Tensor],
    step: int,
    map: Mapper = in_order,
    bands: Sequence[Band] | None = None,
) -> list[tuple[float, int]]:
    """For each i, the (threshold, cutoff) keeping exactly the ``ks[i]`` largest of n values: |x| >
    threshold, plus entries equal to the threshold up to flat index ``cutoff`` (ties broken toward lower
    index).

    ``values[i](start, stop, step)`` gives those flat positions (recomputed on demand: the sample is
    ``values[i](0, n, stride)``, the count walks slices ``values[i](a, b, 1)``); ``step`` is the slice
    length to walk with, ``map`` how the slices are counted (``TensorInputs.map``: on idle cores);
    ``bands[i](start, stop, ranges)``, where given, is ``count_and_bands`` of ``values[i](start,
    stop, 1)`` computed without them (``fused.band``); ``materialize(i)`` returns all n values as one
    tensor, used only when the sampled bracket misses.

    All cuts are counted in one walk over the slices: a slice's brackets one after another while its
    inputs are in cache (TIES' models share the base). Cuts given the same ``values`` callable share
    one sample and one count per slice (breadcrumbs' two cuts of a model, Arcee Fusion's three
    quartiles: ``fused.band`` checks each value against two ranges per pass)."""
    cuts: list[tuple[float, int] | None] = [None] * len(ks)
    brackets = []  # (cut, lo, hi)
    samples: dict[Values, np.ndarray] = {}
    for i, k in enumerate(ks):
        if k >= n:
            cuts[i] = KEEP_ALL
        elif k <= 0:
            cuts[i] = KEEP_NONE
        elif n > 1 << 20:
            if values[i] not in samples:
                samples[values[i]] = _sorted_sample(values[i](0, n, n // SAMPLE).float())
            q = 1.0 - k / n
            brackets.append(
                (i, *_quantiles(samples[values[i]], [max(q - BRACKET, 0.0), min(q + BRACKET, 1.0)]))
            )
    if brackets:
        groups: dict[Values, list[int]] = {}  # brackets of one values callable: counted in one call
        for position, (i, _, _) in enumerate(brackets):
            groups.setdefault(values[i], []).append(position)

        def count_slice(span: tuple[int, int]) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
            start, stop = span
            counted: list = [None] * len(brackets)
            for members in groups.values():
                i = brackets[members[0]][0]
                ranges = [brackets[member][1:] for member in members]
                if bands is None:
                    found = count_and_bands(values[i](start, stop, 1), ranges, start)
                else:
                    found = bands[i](start, stop, ranges)
                for member, result in zip(members, found, strict=True):
                    counted[member] = result
            return counted

        counted = map(count_slice, spans(n, step))
        for position, (i, _, _) in enumerate(brackets):
            found = [per_slice[position] for per_slice in counted]
            above = sum(count for count, _, _ in found)
            if above < ks[i]:
                inside = [band for _, band, _ in found]
                flat_positions = torch.cat([where for _, _, where in found])
                if 0 < ks[i] - above <= flat_positions.numel():
                    cuts[i] = _cut(torch.cat(inside), ks[i] - above, flat_positions)
    for i, cut in enumerate(cuts):
        if cut is None:
            cuts[i] = _cut(materialize(i), ks[i], None)
    return cuts  # type: ignore[return-value]


def task_vector_cuts(inputs: TensorInputs, wanted: Sequence[tuple[int, int]]) -> list[tuple[float, int]]:
    """``streamed_top_k_cuts`` of |τ| = |θ_index − θ_base| over a whole tensor for each (index, k) of
    ``wanted``: |τ| is recomputed slice by slice where it is needed — the brackets' counts read the
    stored inputs straight into ``fused.band`` — and a tensor-sized workspace is filled only for a cut
    whose sampled bracket misses."""
    n = inputs.numel
    step = STATS_CHUNK if inputs.device.type == "cpu" else max(1, n)  # a GPU wants whole tensors

    def magnitude(index: int) -> Values:
        return lambda start, stop, step: torch.sub(
            inputs.model(index, start, stop, step), inputs.base(start, stop, step)
        ).abs_()

    magnitudes = {index: magnitude(index) for index, _ in wanted}  # one callable (one sample) a model

    def materialize(cut: int) -> torch.Tensor:
        whole = inputs.workspace()
        values = magnitudes[wanted[cut][0]]

        def fill(start: int, stop: int) -> None:
            whole[start:stop] = values(start, stop, 1)

        inputs.slices(fill)
        return whole

    def band(index: int) -> Band:
        def count(
            start: int, stop: int, ranges: Sequence[tuple[float, float]]
        ) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
            views = kernel_views(
                [inputs.stored(index, start, stop), inputs.stored(None, start, stop)], inputs.widen
            )
            if views is None:
                return count_and_bands(magnitudes[index](start, stop, 1), ranges, start)
            from mergebench.methods import fused

            return fused.band(views[0], ranges, views[1], start)

        return count

    return streamed_top_k_cuts(
        [magnitudes[index] for index, _ in wanted],
        [k for _, k in wanted],
        n,
        materialize,
        step,
        inputs.map,
        [band(index) for index, _ in wanted],
    )


def top_k_cut(magnitude: torch.Tensor, k: int, map: Mapper = in_order) -> tuple[float, int]:
    """``top_k_cuts`` of one k."""
    return top_k_cuts(magnitude, [k], map)[0]


def top_k_cuts(magnitude: torch.Tensor, ks: Sequence[int], map: Mapper = in_order) -> list[tuple[float, int]]:
    """``streamed_top_k_cuts`` over a materialised 1-D tensor, counted in cache-sized slices (one
    tensor-sized pass allocates and faults in tensor-sized masks: 1.5× slower on 11M entries)."""

    def values(start: int, stop: int, step: int) -> torch.Tensor:
        return magnitude[start:stop:step]

    return streamed_top_k_cuts([values] * len(ks), ks, magnitude.numel(), lambda _: magnitude, SLICE, map)


def _sorted_sample(sample: torch.Tensor) -> np.ndarray:
    """The sample in ascending order, for its quantiles. Sorted whole (``_sorted``: 0.05–0.25 ms for a
    64K sample), where its selection (``np.quantile``'s partition) degrades to ~1 ms on bf16
    magnitudes' many equal values."""
    array = numpy_view(sample)
    return _sorted(array) if array is not None else sample.sort().values.cpu().numpy()


def _sorted(array: np.ndarray) -> np.ndarray:
    """A flat float array in ascending order: ``fused.sorted_floats`` for NaN-free float32 (a radix
    sort, several times faster than ``np.sort`` where numpy's vectorised sort is slow), else numpy."""
    if array.dtype == np.float32:
        from mergebench.methods import fused

        ordered = fused.sorted_floats(array.reshape(-1))
        if ordered is not None:
            return ordered
    return np.sort(array)


def _quantiles(ordered: np.ndarray, qs: list[float]) -> list[float]:
    """Quantiles of a sorted sample, the nearest entries (a bracket's guess: the answer never depends
    on it)."""
    last = ordered.size - 1
    return [float(ordered[min(last, max(0, round(q * last)))]) for q in qs]


def _cut(values: torch.Tensor, k: int, positions: torch.Tensor | None) -> tuple[float, int]:
    """Threshold and tie cutoff for the k largest of ``values`` (flat indices mapped by ``positions``)."""
    array = numpy_view(values) if positions is not None else None
    if array is not None:
        # A band: NaN-free, on the CPU. Sorted whole, not selected: a band of bf16 magnitudes holds few
        # distinct values, and np.partition degrades on them (3 ms for 290K entries; sorted: 0.2 ms by
        # numpy where its vectorised sort is fast, 7 ms where not, ~1 ms by ``_sorted``'s radix sort).
        ordered = _sorted(array)
        threshold = ordered[array.size - k]
        missing = k - (array.size - int(np.searchsorted(ordered, threshold, side="right")))
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
