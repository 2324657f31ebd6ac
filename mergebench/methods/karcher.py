"""Karcher mean (mergekit): the Riemannian (Fréchet) mean of the models' directions on the unit
hypersphere, found by fixed-point iteration, rescaled to the models' mean norm."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mergebench.methods.geometry import Vectors, gram
from mergebench.methods.registry import Param, Piece, TensorInputs, merge_method
from mergebench.methods.selection import kernel_views, widened


def is_count(value: float) -> bool:
    return value >= 0 and value == int(value)


def karcher_coefficients(g: torch.Tensor, max_iter: int, tol: float) -> list[float]:
    """w with θ = Σ w_i·θ_i the Karcher result, from the float64 Gram matrix G_ij = ⟨θ_i, θ_j⟩.

    Every vector the iteration forms (the mean μ, the tangent T) is a combination of the inputs, so it is
    held as its coefficients m and measured through G (⟨μ, θ_i⟩ = (G·m)_i, ‖μ‖² = mᵀ·G·m): the whole
    iteration costs one pass over the tensor (G) instead of several per step, and runs in float64.
    """
    count = g.shape[0]
    norms = g.diagonal().clamp(min=0).sqrt().tolist()
    valid = [i for i, norm in enumerate(norms) if norm > tol]
    if not valid:
        return [0.0] * count
    alpha = 1.0 / len(valid)

    def length(coefficients: torch.Tensor) -> float:
        return math.sqrt(max(0.0, float(coefficients @ g @ coefficients)))

    def unit(i: int) -> torch.Tensor:  # u_i = θ_i/‖θ_i‖
        coefficients = torch.zeros(count, dtype=torch.float64)
        coefficients[i] = 1.0 / norms[i]
        return coefficients

    mean = sum(alpha * unit(i) for i in valid)
    mean_norm = length(mean)
    mean = unit(valid[0]) if mean_norm < tol else mean / mean_norm
    for _ in range(max_iter):
        tangent = torch.zeros(count, dtype=torch.float64)
        dots = g @ mean  # ⟨μ, θ_i⟩
        for i in valid:
            cos = min(1.0, max(-1.0, float(dots[i]) / norms[i]))
            theta = math.acos(cos)
            if theta < tol or theta == 0.0:  # on the mean: no pull (also tol = 0 without 0/0)
                continue
            tangent += alpha * theta / math.sin(theta) * (unit(i) - cos * mean)
        tangent_norm = length(tangent)
        if tangent_norm < tol or tangent_norm == 0.0:
            break
        mean = math.cos(tangent_norm) * mean + math.sin(tangent_norm) / tangent_norm * tangent
        unit_norm = length(mean)
        if unit_norm > tol:
            mean = mean / unit_norm
    return (mean * (sum(norms) / count)).tolist()


def karcher_stats(inputs: TensorInputs, *, max_iter: float, tol: float) -> list[float] | None:
    """The coefficients of θ = Σ w_i·θ_i over [models…, base] (None for a single input)."""
    if inputs.count + inputs.has_base == 1:
        return None
    # the Gram matrix comes from the inputs' device; the iteration on it is a few scalars: CPU float64
    g = gram(inputs, Vectors.whole(), minus_base=False, base_as_point=inputs.has_base)
    return karcher_coefficients(g[0].cpu(), int(max_iter), tol)


@merge_method(
    "karcher",
    params=(
        Param("max_iter", int, 10, valid=is_count, expect="a whole number ≥ 0"),
        Param("tol", float, 1e-5, valid=lambda v: v >= 0, expect="≥ 0"),
    ),
    base="optional",
    elementwise=True,
    stats=karcher_stats,
    summary="(Σ‖θ_i‖/N)·argmin_μ Σ d²(μ, θ_i/‖θ_i‖), d the great-circle distance (base_model, if given, is one of θ_i)",
    widens=True,
)
def karcher(
    models: Sequence[torch.Tensor], base: torch.Tensor | None, *, max_iter: float, tol: float, piece: Piece
) -> torch.Tensor:
    """θ = (1/N)·Σ‖θ_i‖ · μ, μ the Karcher mean of the unit vectors u_i = θ_i/‖θ_i‖ (equal weights).

    μ starts at Σ u_i normalized (or the first u_i when that vanishes) and moves by the exponential map
    along the mean log map T = Σ α_i·θ_i/sin θ_i·(u_i − cos θ_i·μ), θ_i = ∠(μ, u_i), until ‖T‖ < tol or
    ``max_iter`` steps: mergekit's algorithm. Models with ‖θ_i‖ ≤ tol take no part in μ (they still count
    in the norm); all of them that small gives zeros. The base_model, when given, is one more of the N
    points, as in mergekit (which treats it as an ordinary input). The iteration is a whole-tensor
    quantity: the stats step runs it in float64 on the inputs' Gram matrix and hands each chunk the
    coefficients of θ as a combination of the inputs.
    """
    points = [*models, base] if base is not None else list(models)
    if piece.stats is None:
        return widened(points[:1], piece.widen)[0]
    if not any(piece.stats):
        return torch.zeros_like(widened(points[:1], piece.widen)[0])
    views = kernel_views(points, piece.widen)
    if views is not None:  # one pass (``fused``)
        from mergebench.methods import fused

        merged = fused.combination(views, None, piece.stats, subtract=False, fused_adds=True)
        return merged.view(points[0].shape)
    tensors = widened(points, piece.widen)
    merged = tensors[0] * piece.stats[0]
    for tensor, coefficient in zip(tensors[1:], piece.stats[1:], strict=True):
        merged.add_(tensor, alpha=coefficient)
    return merged
