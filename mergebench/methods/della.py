"""DELLA (Deep et al. 2024): MAGPRUNE — drop each task-vector entry at random with a keep probability
that rises with its magnitude rank — then rescale, and merge TIES-style (``della``) or by a weighted
sum (``della_linear``).

Ranks are taken along each row (dim 1: per output neuron of a weight matrix; a 1-D tensor is one row)
as in the authors' implementation, which mergekit 0.1.5 ships: for a row of m entries, rank r ∈
[0, m) by ascending |τ| (equal magnitudes: lower index first) gets keep probability
p = density − ε + 2ε·r/(m − 1), so p runs from density − ε to density + ε and averages density.
A row of one entry gets p = density (mergekit divides 0 by 0 there).

Survivors are rescaled by 1/p, the paper's 1/(1 − p_drop), which keeps every entry's expected value.
mergekit 0.1.5's ``rescale`` instead scales each sparsified task vector to its original L1 norm; that
is ``rescale_l1: true`` here.

Uniforms come from a counter-based hash of (seed, tensor name, model, flat position)
(``sparsify.uniforms``, computed on the merging device), so a rerun is byte-identical on any device
and thread count. They are DARE's draws: with ε = 0 DELLA keeps DARE's entries (U < p is compared in
float64, DARE's U < density in float32; they differ only for a draw equal to float32(density) <
density, probability 2⁻²⁴ an entry).
Ranks need whole rows, so the method is ``elementwise`` over ``whole_rows``: the executor streams it
through chunks of whole rows (bounded memory, like DARE); only ``rescale_l1`` needs whole-tensor
quantities (each task vector's L1 norms before and after pruning), computed by its stats step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy
import torch

from mergebench.errors import ConfigError
from mergebench.mapper import spans
from mergebench.methods.registry import (
    DENSITY,
    INT8_MASK,
    LAMBDA,
    WEIGHT,
    Param,
    Piece,
    TensorInputs,
    merge_method,
    normalize_param,
    whole_rows_length,
)
from mergebench.methods.selection import KEEP_ALL, KEEP_NONE, kernel_views, numpy_view, widened
from mergebench.methods.sparsify import (
    HASH_LAST_SHIFT,
    HASH_ROUNDS,
    counter_key,
    disjoint_merge,
    l1_rescale,
    uniforms,
)

BLOCK = 1 << 18  # entries per block of whole rows

EPSILON = Param(
    "epsilon", float, 0.15, per_model=True, valid=lambda v: 0.0 <= v < 1.0, expect="in [0, 1)"
)  # half-width of the keep-probability ramp (mergekit's definition and default)
RESCALE = Param("rescale", bool, True)  # survivors ÷ their keep probability
RESCALE_L1 = Param("rescale_l1", bool, False)  # mergekit 0.1.5's rescale instead: keep ‖τ‖₁


def della_problem(density: float, epsilon: float) -> str | None:
    """Why (density, epsilon) cannot be used, or None: below density 1, the probabilities density ± ε
    must lie inside (0, 1) — mergekit's check, with its float expressions."""
    if density < 1.0 and (density + epsilon >= 1.0 or density - epsilon <= 0.0):
        return f"density ± epsilon must lie inside (0, 1), got density {density} and epsilon {epsilon}"
    return None


def della_param_problems(params: Mapping[str, object]) -> list[str]:
    """Cross-parameter problems of one tensor's resolved parameters (YAML names; per-model values as
    sequences in model order), one message per offending model, for the planner to report."""
    densities, epsilons = params["density"], params["epsilon"]
    assert isinstance(densities, Sequence) and isinstance(epsilons, Sequence)
    problems = []
    for index, (d, e) in enumerate(zip(densities, epsilons, strict=True)):
        problem = della_problem(float(d), float(e))
        if problem is not None:
            problems.append(f"model {index}: {problem}")
    return problems


def row_layout(shape: Sequence[int]) -> tuple[int, int, int]:
    """(outer, m, inner): the tensor viewed as outer × m × inner with ranks taken along m (dim 1)."""
    if len(shape) == 0:
        return 1, 1, 1
    if len(shape) == 1:
        return 1, shape[0], 1
    return shape[0], shape[1], math.prod(shape[2:])


# Float32 rows are ordered by one sort per row of distinct int64 keys (|x|'s bits, column): 31 bits for
# the magnitude, 16 for the column.
KEY_MAGNITUDE_SHIFT, KEY_COLUMN_BITS = 16, 16
FLOAT32_ABOVE_INF = 0x7F800001  # every NaN's magnitude bits, clamped: one value, above +inf


def magnitude_order(rows: torch.Tensor) -> torch.Tensor:
    """For each row of a 2-D tensor, its columns (int64) by ascending |x|, equal magnitudes (and every
    NaN, ordered last) by lower column first: a stable argsort of |x| along dim 1.

    For float32 on the CPU it sorts one int64 key per entry instead: a non-negative float orders as
    its bit pattern, so (|x| bits, column) are distinct keys whose plain ascending order is that stable
    order, and the column is their low bits. numpy sorts such integers row by row with SIMD, several
    times faster than torch's stable sort and without holding the GIL. Other dtypes, devices or rows
    longer than 65536 argsort.
    """
    m = rows.shape[1]
    if rows.dtype != torch.float32 or rows.device.type != "cpu" or m > 1 << KEY_COLUMN_BITS:
        return torch.argsort(rows.abs(), dim=1, stable=True)
    keys = rows.abs().view(torch.int32).clamp_(max=FLOAT32_ABOVE_INF).to(torch.int64)
    keys.bitwise_left_shift_(KEY_MAGNITUDE_SHIFT).add_(torch.arange(m))
    return torch.from_numpy(numpy.sort(keys.numpy(), axis=1)).bitwise_and_((1 << KEY_COLUMN_BITS) - 1)


def by_rank(rows: torch.Tensor, ramp: torch.Tensor) -> torch.Tensor:
    """``ramp[r]`` for each entry of a 2-D tensor, r its rank in ``magnitude_order`` within its row:
    one scatter of the per-rank values (the ranks themselves are never formed)."""
    order = magnitude_order(rows)
    out = torch.empty(rows.shape, dtype=ramp.dtype, device=rows.device)
    return out.scatter_(1, order, ramp.to(rows.device).expand(rows.shape))


def ramp_terms(m: int, density: float, epsilon: float) -> tuple[float, float]:
    """(step, lowest): rank r's keep probability in a row of m entries is r·step + lowest, each
    operation rounded to float64 — density − ε + 2ε·r/(m − 1), density for a row of one."""
    return (0.0, density) if m == 1 else (2.0 * epsilon / (m - 1), density - epsilon)


def keep_ramp(m: int, density: float, epsilon: float) -> torch.Tensor:
    """The keep probability (float64) of each ascending-magnitude rank of a row of m entries
    (``ramp_terms``)."""
    step, lowest = ramp_terms(m, density, epsilon)
    return torch.arange(m, dtype=torch.float64).mul_(step).add_(lowest)


def magprune_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """Keep probabilities (float64) of an (outer, m, inner) block of τ: density − ε + 2ε·r/(m − 1),
    r the ascending-magnitude rank along dim 1 (equal magnitudes: lower index first)."""
    m = delta.shape[1]
    if m == 1:
        return torch.full(delta.shape, density, dtype=torch.float64, device=delta.device)
    ramp = keep_ramp(m, density, epsilon)
    if delta.shape[2] == 1:
        return by_rank(delta.view(delta.shape[0], m), ramp).view(delta.shape)
    # ranks along dim 1 of each (m, inner) slab: the rows of its transpose
    slabs = by_rank(delta.transpose(1, 2).reshape(-1, m), ramp)
    return slabs.view(delta.shape[0], delta.shape[2], m).transpose(1, 2)


def magprune(
    delta: torch.Tensor,
    density: float,
    epsilon: float,
    key: tuple,
    model_index: int,
    offset: int,
    divide: bool,
) -> torch.Tensor:
    """MAGPRUNE of one (outer, m, inner) block of τ starting at flat ``offset``: entry j kept when
    U_j < p_j; survivors ÷ p_j with ``divide``. Returned in τ's dtype and shape."""
    if density >= 1.0:
        return delta
    p = magprune_probabilities(delta, density, epsilon)
    uniform = uniforms(delta.numel(), key, model_index, offset, device=delta.device).view(delta.shape)
    arrays = [numpy_view(tensor) for tensor in (delta, p, uniform)]
    if all(array is not None for array in arrays):  # CPU float32/64: numpy, 7× faster than torch here
        values, probabilities, draws = arrays
        keep = numpy.less(draws, probabilities)  # compared in float64, as below
        # inf·0 → NaN and overflow → inf, silently, as torch
        with numpy.errstate(invalid="ignore", over="ignore"):
            if not divide:
                return torch.from_numpy(numpy.multiply(values, keep))
            quotient = numpy.divide(values, probabilities)  # float64
            quotient *= keep
            quotient += 0.0
            return torch.from_numpy(quotient.astype(values.dtype))
    keep = uniform.to(torch.float64) < p
    if divide:  # where(keep, δ/p, 0) as a product (+ 0.0 makes a dropped −0 a +0): 5× faster here
        return (delta.to(torch.float64) / p).mul_(keep).add_(0.0).to(delta.dtype)
    return delta * keep


def magnitude_ranks(model: numpy.ndarray, base: numpy.ndarray, m: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(δ, ranks) of a block of whole rows of m entries (CPU arrays, ``fused.magnitude_ranks``):
    δ = θ − θ_base in float32 and each entry's rank in its row by ``magnitude_order``. The kernel
    counts most rows; the rows it leaves are sorted here."""
    from mergebench.methods import fused

    delta, ranks, unranked = fused.magnitude_ranks(model, base, m)
    if unranked.size:
        order = magnitude_order(torch.from_numpy(delta.reshape(-1, m)[unranked])).numpy()
        row_ranks = numpy.empty(order.shape, dtype=numpy.int32)
        numpy.put_along_axis(row_ranks, order, numpy.arange(m, dtype=numpy.int32)[None, :], axis=1)
        ranks.reshape(-1, m)[unranked] = row_ranks
    return delta, ranks


def block_length(shape: Sequence[int]) -> int:
    """Entries of a block of whole rows, about BLOCK: MAGPRUNE's sorts and temporaries stay small."""
    _, m, inner = row_layout(shape)
    return whole_rows_length(m * inner, BLOCK)


def della_stats(
    inputs: TensorInputs,
    *,
    density: Sequence[float],
    epsilon: Sequence[float],
    rescale: bool,
    rescale_l1: bool,
    **_,
) -> list[float]:
    """Each task vector's factor: 1, or with ``rescale_l1`` ‖τ_i‖₁ / ‖MAGPRUNE(τ_i)‖₁ over the whole
    tensor (mergekit's rescale), so that chunks of rows can then be merged one at a time."""
    scales = [1.0] * len(density)
    if not (rescale and rescale_l1):
        return scales
    for index, (d, e) in enumerate(zip(density, epsilon, strict=True)):
        if d < 1.0:
            scales[index] = l1_rescale(*_l1_norms(inputs, index, d, e))
    return scales


def _l1_norms(inputs: TensorInputs, index: int, density: float, epsilon: float) -> tuple[float, float]:
    """(‖τ_index‖₁, ‖MAGPRUNE(τ_index)‖₁) over the whole tensor: float64 sums per block of whole rows,
    added in block order."""
    _, m, inner = row_layout(inputs.shape)
    key = (inputs.seed, inputs.name)

    def norms(start: int, stop: int) -> tuple[float, float]:
        delta = inputs.model(index, start, stop) - inputs.base(start, stop)
        kept = magprune(delta.view(-1, m, inner), density, epsilon, key, index, start, divide=False)
        return float(delta.abs().sum(dtype=torch.float64)), float(kept.abs().sum(dtype=torch.float64))

    before, after = inputs.sums(norms, 2, block_length(inputs.shape))
    return before, after


def della(
    models: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    weight: Sequence[float],
    density: Sequence[float],
    epsilon: Sequence[float],
    normalize: bool,
    lambda_: float,
    rescale: bool,
    rescale_l1: bool,
    int8_mask: bool,
    piece: Piece,
    elect_signs: bool,
) -> torch.Tensor:
    """θ = θ_base + λ·combine_i(w_i·τ̂_i), τ̂_i = MAGPRUNE(τ_i): entry kept with probability p (ramped
    by magnitude rank in its row from density − ε to density + ε), ÷ p with ``rescale`` (×‖τ‖₁/‖τ̂‖₁
    with ``rescale_l1``, factors from ``della_stats``). combine: TIES' sign election and disjoint sum,
    ÷ the agreeing weight with ``normalize`` (``della``), or Σ, ÷ Σ w_i with ``normalize``
    (``della_linear``). ``models``/``base`` hold whole rows of the tensor from flat ``piece.offset``."""
    for index, (d, e) in enumerate(zip(density, epsilon, strict=True)):
        if (problem := della_problem(d, e)) is not None:
            raise ConfigError(f"tensor {piece.name!r}, model {index}: {problem}")
    _, m, inner = row_layout(piece.shape)
    key = (piece.seed, piece.name)
    divide = rescale and not rescale_l1
    views = kernel_views([*models, base], piece.widen)
    if views is not None and inner == 1 and m <= 1 << KEY_COLUMN_BITS:
        counters = [counter_key(key, index, piece.offset, base.numel()) for index in range(len(models))]
        if all(counter is not None for counter in counters):  # no block crosses a hash segment
            merge = functools.partial(
                _fused_blocks, views, piece, m, weight, density, epsilon, counters, divide, elect_signs
            )
            return merge(normalize, lambda_).view(base.shape)
    *models, base = widened([*models, base], piece.widen)
    flat_base = base.reshape(-1)
    flats = [model.reshape(-1) for model in models]
    out = torch.empty_like(flat_base)
    for start, stop in spans(flat_base.numel(), block_length(piece.shape)):
        weighted = []
        for index, (flat, w) in enumerate(zip(flats, weight, strict=True)):
            delta = (flat[start:stop] - flat_base[start:stop]).view(-1, m, inner)
            offset = piece.offset + start
            kept = magprune(delta, density[index], epsilon[index], key, index, offset, divide).reshape(-1)
            if piece.stats[index] != 1.0:
                kept = kept * piece.stats[index]
            weighted.append(kept * w)
        if elect_signs:
            update = disjoint_merge(weighted, weight, normalize)
        else:
            update = weighted[0]
            for part in weighted[1:]:
                update += part
            if normalize:
                update /= sum(weight)
        if lambda_ != 1.0:
            update *= lambda_
        out[start:stop] = update
    return out.add_(flat_base).view(base.shape)


def _fused_blocks(
    views: tuple,
    piece: Piece,
    m: int,
    weight: Sequence[float],
    density: Sequence[float],
    epsilon: Sequence[float],
    counters: Sequence[tuple[int, int]],
    divide: bool,
    elect_signs: bool,
    normalize: bool,
    lambda_: float,
) -> torch.Tensor:
    """``della``'s blocks through ``fused``'s kernels (rows of m ≤ 2¹⁶ entries, float32 on the CPU):
    the same keys, draws and arithmetic, one pass per step instead of one per operation."""
    from mergebench.methods import fused

    flat_base = views[-1]
    out = torch.empty(flat_base.shape, dtype=torch.float32)
    for start, stop in spans(flat_base.size, block_length(piece.shape)):
        base_block = flat_base[start:stop]
        parts = []
        for index, model in enumerate(views[:-1]):
            block = model[start:stop]
            scale, w = piece.stats[index], weight[index]
            if density[index] >= 1.0:
                parts.append(fused.kept(block, base_block, KEEP_ALL, KEEP_NONE, 0, w, scale))  # τ whole
                continue
            first, k1 = counters[index]
            step, lowest = ramp_terms(m, density[index], epsilon[index])
            parts.append(
                fused.magpruned(
                    *magnitude_ranks(block, base_block, m),
                    step,
                    lowest,
                    first + start,
                    k1,
                    HASH_ROUNDS,
                    HASH_LAST_SHIFT,
                    divide,
                    scale,
                    w,
                )
            )
        if elect_signs:
            merged = fused.disjoint_merge(tuple(parts), weight, normalize, base_block, lambda_)
        else:
            divisor = sum(weight) if normalize else None
            merged = fused.combination(
                tuple(parts),
                base_block,
                None,
                subtract=False,
                fused_adds=False,
                divisor=divisor,
                lambda_=lambda_,
            )
        out[start:stop] = merged
    return out


for _name, _elect, _normalize, _then in (
    ("della", True, True, "TIES sign election + disjoint mean"),
    ("della_linear", False, False, "θ_base + λ Σ w_i τ̂_i"),
):
    merge_method(
        _name,
        params=(
            WEIGHT,
            DENSITY,
            EPSILON,
            normalize_param(_normalize),
            LAMBDA,
            RESCALE,
            RESCALE_L1,
            INT8_MASK,
        ),
        base="required",
        elementwise=True,
        whole_rows=True,
        stats=della_stats,
        check=della_param_problems,
        summary=f"τ̂_i keeps entry j w.p. p_j = density ± ε by magnitude rank in its row, ÷ p_j; {_then}",
        widens=True,
    )(functools.partial(della, elect_signs=_elect))
