"""TIES (Yadav et al. 2023) and DARE (Yu et al. 2023) over task vectors τ_i = θ_i − θ_base."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from mergebench.methods.basic import plus_base, weighted_sum
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
)
from mergebench.methods.selection import KEEP_NONE, kernel_views, task_vector_cuts, widened
from mergebench.methods.sparsify import dare_drop, dropped_views, elect_and_merge, keep_count, trimmed_merge


def ties_stats(inputs: TensorInputs, *, density: Sequence[float], **_) -> list[tuple[float, int]]:
    """Each task vector's trim (threshold, tie cutoff) over the whole tensor, streamed from the inputs
    (``task_vector_cuts``)."""
    return task_vector_cuts(inputs, [(i, keep_count(inputs.numel, d)) for i, d in enumerate(density)])


@merge_method(
    "ties",
    params=(WEIGHT, DENSITY, normalize_param(True), LAMBDA, INT8_MASK),
    base="required",
    elementwise=True,
    stats=ties_stats,
    summary="trim task vectors to top-density magnitudes, elect signs, disjoint mean",
    widens=True,
)
def ties(
    models: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    weight: Sequence[float],
    density: Sequence[float],
    normalize: bool,
    lambda_: float,
    int8_mask: bool,
    piece: Piece,
):
    """θ = θ_base + λ·disjoint_mean_i(w_i·trim(τ_i, density_i)).

    trim keeps the max(1, ⌊density·n⌋) largest-magnitude entries of the whole τ_i (thresholds from
    ``ties_stats``); the elected sign is sign(Σ w_i·τ̂_i); only agreeing entries are summed, divided
    (``normalize``) by the weight of agreeing entries.
    """
    trims = [(cut, KEEP_NONE, 1.0) for cut in piece.stats]
    return trimmed_merge(
        models,
        base,
        trims,
        weight,
        offset=piece.offset,
        widen=piece.widen,
        elect_signs=True,
        normalize=normalize,
        lambda_=lambda_,
    )


def _dropped(models, base, density, piece: Piece, rescale: bool):
    key = (piece.seed, piece.name)
    return [
        dare_drop(model - base, d, key, i, piece.offset, rescale)
        for i, (model, d) in enumerate(zip(models, density, strict=True))
    ]


def dare(
    models: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    weight: Sequence[float],
    density: Sequence[float],
    normalize: bool,
    lambda_: float,
    rescale: bool,
    int8_mask: bool,
    piece: Piece,
    elect_signs: bool,
):
    """θ = θ_base + λ·combine_i(w_i·DARE(τ_i)): each entry of τ_i kept with probability density_i,
    survivors ÷ density_i; combined by a weighted sum (``dare_linear``, ÷ Σ w_i with ``normalize``) or
    by TIES' sign election and disjoint mean (``dare_ties``)."""
    views = kernel_views([*models, base], piece.widen)
    if views is not None:  # one pass per model, then one to combine (``fused``)
        from mergebench.methods import fused

        flat_base = views[-1]
        key = (piece.seed, piece.name)
        parts = [
            dropped_views(model, flat_base, d, key, i, piece.offset, rescale, w if elect_signs else 1.0)
            for i, (model, d, w) in enumerate(zip(views[:-1], density, weight, strict=True))
        ]
        if elect_signs:
            merged = elect_and_merge(parts, weight, normalize, base.reshape(-1), lambda_, piece.widen)
        else:
            tensors = tuple(part.numpy() for part in parts)
            divisor = sum(weight) if normalize else None
            merged = fused.combination(
                tensors, flat_base, weight, subtract=False, fused_adds=True, divisor=divisor, lambda_=lambda_
            )
        return merged.view(base.shape)
    *models, base = widened([*models, base], piece.widen)
    dropped = _dropped(models, base, density, piece, rescale)
    if elect_signs:
        weighted = [d.mul_(w) for d, w in zip(dropped, weight, strict=True)]
        return elect_and_merge(weighted, weight, normalize, base, lambda_)
    update = weighted_sum(dropped, weight)
    if normalize:
        update /= sum(weight)
    return plus_base(update, base, lambda_)


for _name, _elect, _then in (
    ("dare_linear", False, "weighted sum"),
    ("dare_ties", True, "TIES sign election"),
):
    merge_method(
        _name,
        params=(WEIGHT, DENSITY, normalize_param(False), LAMBDA, Param("rescale", bool, True), INT8_MASK),
        base="required",
        elementwise=True,
        summary=f"random drop (keep p=density) + rescale 1/density, then {_then} of task vectors",
        widens=True,
    )(functools.partial(dare, elect_signs=_elect))
