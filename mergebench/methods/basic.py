"""Weighted averaging and task arithmetic."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergebench.methods.registry import LAMBDA, WEIGHT, Piece, merge_method, normalize_param


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ w_i·x_i, accumulated in place (one output-sized buffer)."""
    total = tensors[0] * weights[0]
    for tensor, weight in zip(tensors[1:], weights[1:], strict=True):
        total.add_(tensor, alpha=weight)
    return total


def plus_base(update: torch.Tensor, base: torch.Tensor, lambda_: float) -> torch.Tensor:
    """θ_base + λ·update, computed in ``update`` (which the caller made and gives up): the same two
    operations as the expression, without two tensor-sized allocations, which cost more than the
    arithmetic on a VM where fresh memory is expensive."""
    return update.mul_(lambda_).add_(base)


@merge_method(
    "linear",
    params=(WEIGHT, normalize_param(True)),
    base="unused",
    elementwise=True,
    summary="weighted average of the models: Σ w_i θ_i / Σ w_i",
)
def linear(
    models: Sequence[torch.Tensor], base: None, *, weight: Sequence[float], normalize: bool, piece: Piece
):
    """θ = Σ w_i·θ_i / Σ w_i   (without ``normalize``: θ = Σ w_i·θ_i)."""
    merged = weighted_sum(models, weight)
    return merged / sum(weight) if normalize else merged


@merge_method(
    "task_arithmetic",
    params=(WEIGHT, normalize_param(False), LAMBDA),
    base="required",
    elementwise=True,
    summary="θ_base + λ Σ w_i (θ_i − θ_base); negative weights subtract a behaviour",
)
def task_arithmetic(
    models: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    weight: Sequence[float],
    normalize: bool,
    lambda_: float,
    piece: Piece,
):
    """θ = θ_base + λ·Σ w_i·τ_i with τ_i = θ_i − θ_base (÷ Σ w_i with ``normalize``).

    A negative w_i subtracts model i's behaviour ("task negation", Ilharco et al. 2022).
    """
    deltas = [model - base for model in models]
    update = weighted_sum(deltas, weight)
    if normalize:
        update /= sum(weight)
    return plus_base(update, base, lambda_)
