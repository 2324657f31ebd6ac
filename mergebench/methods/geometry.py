"""Shared geometry of the angle-based methods: how a tensor splits into the vectors they measure, float64
Gram matrices of those vectors accumulated over small slices, and the map from a chunk's entries back to
the vector each belongs to. No method is registered here.

Angles, norms and cosines are whole-vector quantities: a method's ``stats`` step computes them once
(float64 sums of exact float32 products) and its elementwise function applies per-vector coefficients
to any flat chunk through :meth:`Vectors.per_entry`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mergebench.mapper import spans
from mergebench.methods.registry import STATS_CHUNK, TensorInputs
from mergebench.methods.selection import kernel_views


@dataclass(frozen=True)
class Vectors:
    """A tensor read as ``count`` vectors: flat entry j belongs to vector (j // stride) % count.

    ``whole()``: one vector. ``rows(shape)``: vectors along the last dimension (each a contiguous run
    of shape[-1] entries: mergekit's row-wise cosines, ``dim=-1``). ``columns(shape)``: vectors along
    the first dimension (entry j in vector j % (numel / shape[0]): mergekit's ``dim=0``).
    """

    count: int
    stride: int

    @classmethod
    def whole(cls) -> Vectors:
        return cls(1, 1)

    @classmethod
    def rows(cls, shape: Sequence[int]) -> Vectors:
        length = shape[-1] if len(shape) else 1
        return cls(math.prod(shape) // length if length else 0, max(length, 1))

    @classmethod
    def columns(cls, shape: Sequence[int]) -> Vectors:
        first = shape[0] if len(shape) else 1
        return cls(math.prod(shape) // first if first else 0, 1)

    def per_entry(self, values: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor | float:
        """``values[v]`` (one per vector, first axis) for each entry of ``like``, a flat slice starting
        at ``offset`` or the whole tensor; shaped like ``like`` and in its dtype and device (a Python
        float when there is one vector)."""
        if self.count == 1:
            return float(values[0])
        index = torch.arange(offset, offset + like.numel(), device=like.device)
        if self.stride > 1:
            index = index.div_(self.stride, rounding_mode="floor")
        index = index.remainder_(self.count)
        return values.to(device=like.device, dtype=like.dtype)[index].reshape(like.shape)


def gram(
    inputs: TensorInputs, vectors: Vectors, *, minus_base: bool, base_as_point: bool = False
) -> torch.Tensor:
    """G[v, i, k] = Σ x_i[e]·x_k[e] over the entries e of vector v, accumulated in float64, x_i the
    points ``read_stacked`` forms from ``inputs`` (task vectors with ``minus_base``; the base as one
    more point with ``base_as_point``).

    Slices hold whole vectors (rows) or whole periods of interleaved ones (columns), at most
    ~STATS_CHUNK entries; ``inputs.map`` computes their products (on idle cores), summed in slice
    order. One vector of 2 or 3 points on the CPU goes through ``fused.gram`` (one pass over the
    stored slices), the rest through a float64 buffer of each slice and its products.
    """
    read = read_stacked(inputs, minus_base=minus_base, base_as_point=base_as_point)
    numel, count, stride = inputs.numel, vectors.count, vectors.stride
    if numel == 0:
        n = read(0, 0).shape[0]
        return torch.zeros(count, n, n, dtype=torch.float64)
    layout: tuple[int, bool] | None = None  # (vector length or period, rows?) for _pairwise
    step = STATS_CHUNK
    if count > 1 and count * stride == numel:  # contiguous vectors of ``stride`` entries
        layout, step = (stride, True), max(1, STATS_CHUNK // stride) * stride
    elif count > 1:
        assert stride == 1 and numel % count == 0, (count, stride, numel)
        layout, step = (count, False), max(1, STATS_CHUNK // count) * count

    def products(span: tuple[int, int]) -> torch.Tensor:
        if layout is None and (whole := _fused_gram(inputs, span, minus_base, base_as_point)) is not None:
            return whole
        x = read(*span)
        if layout is None:
            return x @ x.T
        length, rows = layout
        return _pairwise(x.reshape(x.shape[0], -1, length), rows=rows)

    parts = inputs.map(products, spans(numel, step))
    if layout is not None and layout[1]:
        return torch.cat(parts)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total if count > 1 else total.unsqueeze(0)


def _fused_gram(
    inputs: TensorInputs, span: tuple[int, int], minus_base: bool, base_as_point: bool
) -> torch.Tensor | None:
    """The Gram matrix of one slice of 2 or 3 points from ``fused.gram``; None where it does not apply
    (another device, dtype or count)."""
    count = inputs.count + (1 if base_as_point else 0)
    if inputs.device.type != "cpu" or count not in (2, 3) or (minus_base and base_as_point):
        return None
    stored = [inputs.stored(index, *span) for index in range(inputs.count)]
    if base_as_point or minus_base:
        stored.append(inputs.stored(None, *span))
    views = kernel_views(stored, inputs.widen)
    if views is None:
        return None
    from mergebench.methods import fused

    return fused.gram(views[:-1], views[-1]) if minus_base else fused.gram(views, None)


def _pairwise(x: torch.Tensor, *, rows: bool) -> torch.Tensor:
    """Σ x_i·x_k per vector for a (N, p, q) slice of the N inputs: the vectors are its rows (summing
    over q) when ``rows``, else its columns (summing over p). One product per pair: faster than a
    batched matmul of tiny matrices."""
    n, count = x.shape[0], x.shape[1] if rows else x.shape[2]
    out = torch.empty(count, n, n, dtype=x.dtype, device=x.device)
    for i in range(n):
        for k in range(i, n):
            out[:, i, k] = out[:, k, i] = (x[i] * x[k]).sum(dim=1 if rows else 0)
    return out


def reused(scratch: threading.local, numel: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """This thread's float64 buffer of at least ``numel`` entries, kept between slices: a fresh
    multi-MB buffer per slice on several threads left glibc holding ~0.5 GB more (peak RSS 1.9 vs
    1.3 GB for model_stock) in freed chunks it did not hand back."""
    buffer = getattr(scratch, "buffer", None)
    if buffer is None or buffer.numel() < numel:
        buffer = scratch.buffer = torch.empty(numel, dtype=torch.float64, device=device)
    return buffer


def read_stacked(
    inputs: TensorInputs, *, minus_base: bool, base_as_point: bool = False
) -> Callable[[int, int], torch.Tensor]:
    """A ``read`` for :func:`gram`: the models' slices in float64 (in a buffer this thread reuses: the
    caller is done with a slice before it reads the next), as task vectors θ_i − θ_base when
    ``minus_base``, with the base as one more row after them when ``base_as_point``. Each slice (a task
    vector's in the compute precision: exact for bf16/fp16 weights of like magnitude, one rounding for
    float32 ones) is widened straight into its row of one float64 buffer, whose products are then exact:
    one float64 pass instead of a float64 subtraction over every row (25% of the stats step)."""

    scratch = threading.local()

    def read(start: int, stop: int) -> torch.Tensor:
        rows = inputs.count + (1 if base_as_point else 0)
        x = reused(scratch, rows * (stop - start), inputs.device)[: rows * (stop - start)].view(rows, -1)
        on_cpu = x.device.type == "cpu"
        stored_base = inputs.stored(None, start, stop) if on_cpu and (minus_base or base_as_point) else None
        base = None  # converted on first use: the kernels read the stored slice
        for row in range(rows):
            is_base = row == inputs.count  # the base as a point (``base_as_point``)
            if on_cpu:
                stored = [stored_base] if is_base else [inputs.stored(row, start, stop)]
                if minus_base and not is_base:
                    stored.append(stored_base)
                views = kernel_views(stored, inputs.widen)
                if views is not None:  # one pass, no temporary (``fused``)
                    from mergebench.methods import fused

                    fused.widened_difference(views[0], views[1] if len(views) > 1 else None, x[row].numpy())
                    continue
            if base is None and (minus_base or base_as_point):
                base = inputs.base(start, stop)
            if is_base:
                x[row].copy_(base)
                continue
            # the model's slice may be a view of the input itself: never changed in place
            model = inputs.model(row, start, stop)
            x[row].copy_(model - base if minus_base else model)
        return x

    return read
