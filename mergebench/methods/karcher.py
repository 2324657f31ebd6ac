"""Karcher mean (mergekit): the Riemannian (Fréchet) mean of the models' directions on the unit
hypersphere, found by fixed-point iteration, rescaled to the models' mean norm."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mergebench.methods.geometry import dot64, norm64
from mergebench.methods.registry import Param, Piece, merge_method


def is_count(value: float) -> bool:
    return value >= 0 and value == int(value)


@merge_method(
    "karcher",
    params=(
        Param("max_iter", int, 10, valid=is_count, expect="a whole number ≥ 0"),
        Param("tol", float, 1e-5, valid=lambda v: v >= 0, expect="≥ 0"),
    ),
    base="optional",
    summary="(Σ‖θ_i‖/N)·argmin_μ Σ d²(μ, θ_i/‖θ_i‖), d the great-circle distance (base_model, if given, is one of θ_i)",
)
def karcher(
    models: Sequence[torch.Tensor], base: torch.Tensor | None, *, max_iter: float, tol: float, piece: Piece
) -> torch.Tensor:
    """θ = (1/N)·Σ‖θ_i‖ · μ, μ the Karcher mean of the unit vectors u_i = θ_i/‖θ_i‖ (equal weights).

    μ starts at Σ u_i normalized (or the first u_i when that vanishes) and moves by the exponential map
    along the mean log map T = Σ α_i·θ_i/sin θ_i·(u_i − cos θ_i·μ), θ_i = ∠(μ, u_i), until ‖T‖ < tol or
    ``max_iter`` steps: mergekit's algorithm. Models with ‖θ_i‖ ≤ tol take no part in μ (they still count
    in the norm); all of them that small gives zeros. The base_model, when given, is one more of the N
    points, as in mergekit (which treats it as an ordinary input). Iterative and whole-tensor:
    vectors in the compute precision, every dot product and norm accumulated in float64.
    """
    tensors = [*models, base] if base is not None else list(models)
    if len(tensors) == 1:
        return tensors[0]
    count = len(tensors)
    norms = [norm64(tensor) for tensor in tensors]
    valid = [i for i, norm in enumerate(norms) if norm > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    alphas = [1.0 / len(valid)] * len(valid)
    # u_i = θ_i/‖θ_i‖ is recomputed into one scratch tensor where it is used, instead of holding a unit
    # copy of every input: the iteration holds the inputs plus four tensors (μ, T and two scratch), with
    # the same operations, so the same numbers, as a version holding every u_i.
    points = [(tensors[i], norms[i], alpha) for i, alpha in zip(valid, alphas, strict=True)]
    unit, product = torch.empty_like(tensors[0]), torch.empty_like(tensors[0])
    mean = torch.zeros_like(tensors[0])
    for tensor, norm, alpha in points:
        mean.add_(torch.div(tensor, norm, out=unit), alpha=alpha)
    mean_norm = norm64(mean)
    if mean_norm < tol:
        torch.div(points[0][0], points[0][1], out=mean)
    else:
        mean.div_(mean_norm)
    tangent = torch.empty_like(mean)
    for _ in range(int(max_iter)):
        tangent.zero_()
        for tensor, norm, alpha in points:
            torch.div(tensor, norm, out=unit)
            cos = min(1.0, max(-1.0, dot64(mean, unit)))
            theta = math.acos(cos)
            if theta < tol or theta == 0.0:  # on the mean: no pull (also tol = 0 without 0/0)
                continue
            unit.sub_(torch.mul(mean, cos, out=product))
            tangent.add_(unit, alpha=alpha * theta / math.sin(theta))
        tangent_norm = norm64(tangent)
        if tangent_norm < tol or tangent_norm == 0.0:
            break
        mean.mul_(math.cos(tangent_norm)).add_(
            torch.mul(tangent, math.sin(tangent_norm) / tangent_norm, out=product)
        )
        unit_norm = norm64(mean)
        if unit_norm > tol:
            mean /= unit_norm
    return mean.mul_(sum(norms) / count)
