"""SCE (Wan et al. 2025, FuseChat): Select the entries where the task vectors disagree most, Calculate
per-model weights from their energy, Erase entries against the majority sign — as mergekit 0.1.5's
``sce``, formula for formula.

Select: the ⌊select_topk·nz⌋ entries of largest variance Var_i(τ_i) (population variance across the
models; nz = entries of non-zero variance) are kept in every τ_i, the rest zeroed; select_topk 1 keeps
all. Ties between equal variances: lower flat index first. Calculate: w_i = mean(τ̂_i²) / Σ_j mean(τ̂_j²)
over the whole tensor (uniform 1/N when that sum is below 1e-6, mergekit's guard — note it is absolute,
so task vectors with mean square ≲ 1e-6/N all get uniform weights). Erase: the elected sign is + where
Σ τ̂_i ≥ 0, else −; only entries of that sign count. θ = θ_base + Σ w_i [agree] τ̂_i / max(Σ w_i [agree],
1e-6).

Variances are computed per entry in float64 and ranked after one rounding to the compute precision,
identically in the stats step and in every chunk, so the selection does not depend on chunking.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from mergebench.methods.registry import INT8_MASK, Param, Piece, TensorInputs, merge_method
from mergebench.methods.selection import kernel_views, times_mask, top_k_cut, widened
from mergebench.methods.sparsify import fraction_count, trim_mask

WEIGHT_SUM_GUARD = 1e-6  # mergekit's sce_weight: below this total, uniform weights
DIVISOR_FLOOR = 1e-6  # mergekit's clamp of the agreeing weight

SELECT_TOPK = Param("select_topk", float, 1.0, valid=lambda v: 0.0 <= v <= 1.0, expect="in [0, 1]")


class SceStats(NamedTuple):
    """Which entries the variance selection keeps (flat, bool; None: select_topk 1, keep all) and the
    model weights."""

    selected: torch.Tensor | None
    weights: list[float]


def variance(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Population variance across the task vectors, per entry: Σ (τ_i − τ̄)² / N in float64, rounded
    once to the task vectors' dtype. Elementwise only, so any slice gives the same bits.

    Two task vectors (the common case) take the closed form ((τ_1 − τ_2)/2)²: the general form's
    float64 value (its differences, halving and doubling are exact for float32 task vectors within
    2²⁹ of each other), in 5 passes instead of ~12 — 0.18 vs 0.74 ms per 256K entries here."""
    if len(deltas) == 2:
        wide = deltas[0].to(torch.float64, copy=True).sub_(deltas[1])
        return wide.square_().mul_(0.25).to(deltas[0].dtype)
    wide = [delta.to(torch.float64) for delta in deltas]
    mean = wide[0].clone()
    for delta in wide[1:]:
        mean += delta
    mean /= len(wide)
    total = torch.zeros_like(mean)
    for delta in wide:
        spread = delta - mean
        total += spread * spread
    return (total / len(wide)).to(deltas[0].dtype)


def sce_weights(energy: Sequence[float]) -> list[float]:
    """w_i = e_i / Σ e_j from each τ̂_i's mean square e_i; uniform when Σ e_j < 1e-6 (mergekit)."""
    total = sum(energy)
    if abs(total) < WEIGHT_SUM_GUARD:
        return [1.0 / len(energy)] * len(energy)
    return [e / total for e in energy]


def _deltas(inputs: TensorInputs, start: int, stop: int) -> list[torch.Tensor]:
    base = inputs.base(start, stop)
    return [inputs.model(i, start, stop) - base for i in range(inputs.count)]


def sce_stats(inputs: TensorInputs, *, select_topk: float, **_) -> SceStats:
    """The entries of the variance cut keeping ⌊select_topk·nz⌋ (variances built slice by slice in one
    workspace; the mask is kept, n bytes, so the pieces need not recompute the variances) and the
    weights from the selected task vectors' mean squares (float64 sums)."""
    n = inputs.numel
    selected = None
    if select_topk < 1.0:
        var = inputs.workspace()

        def fill(start: int, stop: int) -> int:
            if inputs.count == 2:
                parts = [
                    inputs.stored(0, start, stop),
                    inputs.stored(1, start, stop),
                    inputs.stored(None, start, stop),
                ]
                views = kernel_views([*parts, var[start:stop]], inputs.widen)
                if views is not None:  # one pass (``fused``)
                    from mergebench.methods import fused

                    return fused.variance2(*views)
            var[start:stop] = variance(_deltas(inputs, start, stop))
            return int(torch.count_nonzero(var[start:stop]))

        nonzero = sum(inputs.slices(fill))
        select = top_k_cut(var, fraction_count(nonzero, select_topk), inputs.map)
        selected = torch.empty(n, dtype=torch.bool, device=var.device)

        def mark(start: int, stop: int) -> None:
            if (views := kernel_views([var[start:stop]])) is not None:  # variances: never negative
                from mergebench.methods import fused

                fused.cut_mask(views[0], *select, start, selected[start:stop].numpy())
                return
            selected[start:stop] = trim_mask(var[start:stop], *select, start)

        inputs.slices(mark)

    def energies(start: int, stop: int) -> list[float]:
        if selected is not None:
            models = [inputs.stored(i, start, stop) for i in range(inputs.count)]
            views = kernel_views([*models, inputs.stored(None, start, stop)], inputs.widen)
            if views is not None:  # Σ (τ·selected)² in one pass each (``fused``)
                from mergebench.methods import fused

                mask = selected[start:stop].numpy()
                return [fused.masked_square_sum(view, views[-1], mask) for view in views[:-1]]
        deltas = _deltas(inputs, start, stop)
        if selected is not None:
            deltas = [delta * selected[start:stop] for delta in deltas]
        return [float(wide @ wide) for wide in (delta.to(torch.float64) for delta in deltas)]

    energy = inputs.sums(energies, inputs.count)
    return SceStats(selected, sce_weights([e / max(n, 1) for e in energy]))


@merge_method(
    "sce",
    params=(SELECT_TOPK, INT8_MASK),
    base="required",
    elementwise=True,
    stats=sce_stats,
    summary="θ_base + Σ w_i[agree]τ̂_i / Σ w_i[agree]: τ̂ top-variance entries, w_i ∝ mean τ̂_i², majority sign",
    widens=True,
)
def sce(
    models: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    select_topk: float,
    int8_mask: bool,
    piece: Piece,
) -> torch.Tensor:
    """θ = θ_base + Σ_i w_i·[sign τ̂_i = s]·τ̂_i / max(Σ_i w_i·[sign τ̂_i = s], 1e-6), where τ̂_i is τ_i
    on the top-variance entries (``sce_stats``), w_i ∝ mean(τ̂_i²) and s = +1 where Σ τ̂_i ≥ 0 else −1."""
    selected, weights = piece.stats
    views = kernel_views([*models, base], piece.widen)
    if views is not None:  # one pass (``fused``)
        from mergebench.methods import fused

        mask = piece.part_of(selected, base).numpy().reshape(-1) if selected is not None else None
        return fused.sce_merge(views[:-1], views[-1], mask, weights, DIVISOR_FLOOR).view(base.shape)
    *models, base = widened([*models, base], piece.widen)
    deltas = [model - base for model in models]
    if selected is not None:
        mask = piece.part_of(selected, base)
        for delta in deltas:
            times_mask(delta, mask, in_place=True)
    total = deltas[0].clone()
    for delta in deltas[1:]:
        total += delta
    # Vectorized arithmetic for what reads as where/==: torch's comparisons to bool are scalar loops.
    # The stats step refused non-finite inputs, so sign() gives −1, 0 or 1 here.
    elected = torch.sign(total).add_(0.5).sign_()  # +1 where Σ τ̂_i ≥ 0, else −1
    merged = torch.zeros_like(total)
    divisor = torch.zeros_like(total)
    for delta, w in zip(deltas, weights, strict=True):
        agrees = torch.sign(delta).mul_(elected).clamp_(min=0).mul_(w)  # w where sign τ̂_i = s, else 0
        merged += delta * agrees
        divisor += agrees
    return merged.div_(divisor.clamp_(min=DIVISOR_FLOOR)).add_(base)  # θ_base + Σ/divisor, in place
