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
    units = [tensors[i] / norms[i] for i in valid]
    mean = units[0] * alphas[0]
    for alpha, unit in zip(alphas[1:], units[1:], strict=True):
        mean.add_(unit, alpha=alpha)
    mean_norm = norm64(mean)
    mean = units[0].clone() if mean_norm < tol else mean.div_(mean_norm)
    for _ in range(int(max_iter)):
        tangent = torch.zeros_like(mean)
        for alpha, unit in zip(alphas, units, strict=True):
            cos = min(1.0, max(-1.0, dot64(mean, unit)))
            theta = math.acos(cos)
            if theta < tol or theta == 0.0:  # on the mean: no pull (also tol = 0 without 0/0)
                continue
            tangent.add_(unit - mean * cos, alpha=alpha * theta / math.sin(theta))
        tangent_norm = norm64(tangent)
        if tangent_norm < tol or tangent_norm == 0.0:
            break
        mean = mean * math.cos(tangent_norm) + tangent * (math.sin(tangent_norm) / tangent_norm)
        unit_norm = norm64(mean)
        if unit_norm > tol:
            mean /= unit_norm
    return mean * (sum(norms) / count)
