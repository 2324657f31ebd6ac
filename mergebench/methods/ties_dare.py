"""TIES (Yadav et al. 2023) and DARE (Yu et al. 2023) over task vectors τ_i = θ_i − θ_base."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mergebench.methods.basic import weighted_sum
from mergebench.methods.registry import (
    DENSITY,
    INT8_MASK,
    LAMBDA,
    WEIGHT,
    MergeMethod,
    Param,
    normalize_param,
    register,
)
from mergebench.methods.sparsify import (
    dare_drop,
    disjoint_merge,
    keep_count,
    top_k_cut,
    trim_mask,
    trim_threshold,
)

PREPARE_CHUNK = 1 << 18


def ties(
    models: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    weight: Sequence[float],
    density: Sequence[float],
    normalize: bool,
    lambda_: float,
    int8_mask: bool = False,
    offset: int = 0,
    trims: Sequence[tuple[float, int]] | None = None,
):
    """θ = θ_base + λ·disjoint_mean_i(w_i·trim(τ_i, density_i)).

    trim keeps the round(density·n) largest-magnitude entries of the whole τ_i (``trims`` carries
    their thresholds when this runs on a chunk); the elected sign is sign(Σ w_i·τ̂_i); only agreeing
    entries are summed, divided (``normalize``) by the weight of agreeing entries.
    """
    weighted = []
    for i, (model, w) in enumerate(zip(models, weight, strict=True)):
        delta = model - base
        threshold, cutoff = trims[i] if trims is not None else trim_threshold(delta, density[i])
        delta *= trim_mask(delta, threshold, cutoff, offset)
        weighted.append(delta.mul_(w))
    return base + lambda_ * disjoint_merge(weighted, weight, normalize)


def ties_prepare(
    models, base, convert: Callable[[torch.Tensor], torch.Tensor], scratch, *, density, **_
) -> dict:
    """Each task vector's trim threshold over the whole tensor. |τ_i| is built chunk by chunk in one
    recycled buffer (``scratch``), so no tensor-sized temporaries are allocated."""
    flat_base = base.reshape(-1)
    n = flat_base.numel()
    sample = convert(flat_base[:1])
    buffer = scratch.take(n * sample.element_size())
    magnitude = buffer.view(sample.dtype) if n else sample[:0]
    trims = []
    for model, d in zip(models, density, strict=True):
        flat = model.reshape(-1)
        for start in range(0, n, PREPARE_CHUNK):
            stop = min(start + PREPARE_CHUNK, n)
            torch.sub(
                convert(flat[start:stop]), convert(flat_base[start:stop]), out=magnitude[start:stop]
            ).abs_()
        trims.append(top_k_cut(magnitude, keep_count(n, d)))
    scratch.give(buffer)
    return {"trims": trims}


def _dropped(models, base, density, key, offset, rescale):
    return [
        dare_drop(model - base, d, key, i, offset, rescale)
        for i, (model, d) in enumerate(zip(models, density, strict=True))
    ]


def dare_linear(
    models: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    weight: Sequence[float],
    density: Sequence[float],
    normalize: bool,
    lambda_: float,
    rescale: bool,
    key: tuple,
    int8_mask: bool = False,
    offset: int = 0,
):
    """θ = θ_base + λ·Σ w_i·DARE(τ_i): each entry kept with probability density_i, survivors ÷ density_i."""
    update = weighted_sum(_dropped(models, base, density, key, offset, rescale), weight)
    if normalize:
        update /= sum(weight)
    return base + lambda_ * update


def dare_ties(
    models: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    weight: Sequence[float],
    density: Sequence[float],
    normalize: bool,
    lambda_: float,
    rescale: bool,
    key: tuple,
    int8_mask: bool = False,
    offset: int = 0,
):
    """θ = θ_base + λ·disjoint_mean_i(w_i·DARE(τ_i)): DARE's random drop, then TIES' sign election."""
    dropped = _dropped(models, base, density, key, offset, rescale)
    weighted = [d.mul_(w) for d, w in zip(dropped, weight, strict=True)]
    return base + lambda_ * disjoint_merge(weighted, weight, normalize)


RESCALE = Param("rescale", bool, True)

register(
    MergeMethod(
        "ties",
        ties,
        (WEIGHT, DENSITY, normalize_param(True), LAMBDA, INT8_MASK),
        base="required",
        elementwise=True,
        prepare=ties_prepare,
        summary="trim task vectors to top-density magnitudes, elect signs, disjoint mean",
    )
)
DARE_PARAMS = (WEIGHT, DENSITY, normalize_param(False), LAMBDA, RESCALE, INT8_MASK)
for function, then in ((dare_linear, "weighted sum"), (dare_ties, "TIES sign election")):
    register(
        MergeMethod(
            function.__name__,
            function,
            DARE_PARAMS,
            base="required",
            randomized=True,
            elementwise=True,
            summary=f"random drop (keep p=density) + rescale 1/density, then {then} of task vectors",
        )
    )
