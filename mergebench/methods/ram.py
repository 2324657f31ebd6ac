"""RAM, Reinforced Agent Merging (arXiv:2601.13572), as mergekit defines it: entries changed by one model
take that model's change; entries changed by several take the mean of their changes. RAM+ (tensor-local)
boosts each model's unique changes by how much of it overlaps with the others."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np
import torch

from mergebench.methods.registry import Param, Piece, TensorInputs, merge_method
from mergebench.methods.selection import compared, kernel_views, numpy_view, widened

EPSILON = Param("epsilon", float, 1e-5, valid=lambda v: v >= 0, expect="≥ 0")


def changed(models: Sequence[torch.Tensor], base: torch.Tensor, epsilon: float):
    """Task vectors τ_i = θ_i − θ_base, their masks |τ_i| > ε and how many models change each entry;
    masks and counts in τ's dtype (0/1 and whole numbers: a product with them equals one with a bool
    mask)."""
    taus = [model - base for model in models]
    masks = [compared(tau.abs(), operator.gt, epsilon, as_numbers=True) for tau in taus]
    counts = masks[0].clone()
    for mask in masks[1:]:
        counts += mask
    return taus, masks, counts


def alone_and_shared(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n = 1] and [n > 1] for the change counts n of ``changed``, as 0/1 in their dtype."""
    alone = compared(counts, operator.eq, 1.0, as_numbers=True)
    return alone, compared(counts, operator.gt, 1.0, as_numbers=True)


def ram_merge(
    models: Sequence[torch.Tensor],
    base: torch.Tensor,
    epsilon: float,
    boosts: Sequence[float],
    widen: bool = False,
) -> torch.Tensor:
    """θ_base + Σ_i τ_i·[|τ_i| > ε]·(λ_i·[n = 1] + [n > 1]/n), n = #models with |τ| > ε at the entry;
    the chunks may be stored ones with ``widen`` (``Piece.widen``)."""
    views = kernel_views([*models, base], widen)
    if views is not None:  # one pass (``fused``)
        from mergebench.methods import fused

        return fused.ram_merge(views[:-1], views[-1], epsilon, boosts).view(base.shape)
    *models, base = widened([*models, base], widen)
    taus, masks, counts = changed(models, base, epsilon)
    unique, overlap = alone_and_shared(counts)
    shared = counts.clamp_(min=1)
    merged = torch.zeros_like(base)
    for tau, mask, boost in zip(taus, masks, boosts, strict=True):  # in place: same operations, order
        kept = tau.mul_(mask)
        part = torch.mul(kept, unique)
        if boost != 1.0:
            part *= boost
        merged += part.add_(kept.mul_(overlap).div_(shared))
    return merged.add_(base)


@merge_method(
    "ram",
    params=(EPSILON,),
    base="required",
    elementwise=True,
    summary="θ_base + per entry: the one τ_i with |τ_i| > ε, or the mean of those τ_i when several",
    widens=True,
)
def ram(models: Sequence[torch.Tensor], base: torch.Tensor, *, epsilon: float, piece: Piece) -> torch.Tensor:
    """θ = θ_base + Σ_i τ_i·m_i·([n = 1] + [n > 1]/n), τ_i = θ_i − θ_base, m_i = [|τ_i| > ε], n = Σ m_i.

    An entry only one model changed (beyond ε) takes that change whole; one several changed takes the
    mean of their changes (a disjoint mean, no signs elected); unchanged entries stay the base's.
    """
    return ram_merge(models, base, epsilon, [1.0] * len(models), piece.widen)


def overlap_counts(
    models: Sequence[torch.Tensor], base: torch.Tensor, epsilon: float
) -> tuple[list[int], list[int]]:
    """Per model i, over one slice: (#entries i changes (|τ_i| > ε) that another model changes too,
    #entries only i changes)."""
    arrays = [numpy_view(model) for model in models]
    base_array = numpy_view(base)
    if base_array is None or any(array is None for array in arrays):
        _, masks, counts = changed(models, base, epsilon)
        alone, several = (mask.float() for mask in alone_and_shared(counts))
        # counts as float32 dot products of 0/1 slices: exact below 2²⁴
        shared = [int(torch.dot(mask.float(), several)) for mask in masks]
        return shared, [int(torch.dot(mask.float(), alone)) for mask in masks]
    # numpy on the CPU: bool masks, in-place scratch; the same float32 τ and compare as ``changed``
    scratch = np.empty_like(base_array)
    masks_np = []
    counts_np = np.zeros(base_array.shape, dtype=np.uint8 if len(arrays) < 256 else np.int32)
    for array in arrays:
        np.abs(np.subtract(array, base_array, out=scratch), out=scratch)
        mask = scratch > epsilon
        counts_np += mask
        masks_np.append(mask)
    several, alone = counts_np > 1, counts_np == 1
    shared = [int(np.count_nonzero(mask & several)) for mask in masks_np]
    return shared, [int(np.count_nonzero(mask & alone)) for mask in masks_np]


def ramplus_boosts(inputs: TensorInputs, *, r: float, alpha: float, epsilon: float) -> list[float]:
    """λ_i = 1 + r·clamp(ρ_i, 0, α), ρ_i = #(entries i shares with another) / max(#(entries only i changed), ε),
    counted over the whole tensor (tensor-local)."""

    def counts(start: int, stop: int) -> list[int]:
        stored = [inputs.stored(i, start, stop) for i in range(inputs.count)]
        views = kernel_views([*stored, inputs.stored(None, start, stop)], inputs.widen)
        if views is not None:  # one pass (``fused``)
            from mergebench.methods import fused

            return fused.overlap_counts(views[:-1], views[-1], epsilon)
        models = [inputs.model(i, start, stop) for i in range(inputs.count)]
        shared_here, unique_here = overlap_counts(models, inputs.base(start, stop), epsilon)
        return [*shared_here, *unique_here]

    totals = inputs.sums(counts, 2 * inputs.count)
    shared, unique = totals[: inputs.count], totals[inputs.count :]
    rhos = [s / max(u, epsilon) for s, u in zip(shared, unique, strict=True)]
    return [1.0 + r * min(max(rho, 0.0), alpha) for rho in rhos]


@merge_method(
    "ramplus_tl",
    params=(Param("r", float, 0.1), Param("alpha", float, 0.2), EPSILON),
    base="required",
    elementwise=True,
    stats=ramplus_boosts,
    summary="ram with each model's unique changes scaled by λ_i = 1 + r·clamp(shared_i/unique_i, 0, α)",
    widens=True,
)
def ramplus_tl(
    models: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    r: float,
    alpha: float,
    epsilon: float,
    piece: Piece,
) -> torch.Tensor:
    """θ = θ_base + Σ_i τ_i·m_i·(λ_i·[n = 1] + [n > 1]/n), λ_i = 1 + r·clamp(ρ_i, 0, α).

    ρ_i = (entries model i changes that others change too) / max(entries only model i changes, ε),
    counted over this tensor (RAM+, tensor-local variant, mergekit's definition): a model whose changes
    mostly overlap has its unique changes amplified, by at most r·α.
    """
    return ram_merge(models, base, epsilon, piece.stats, piece.widen)
