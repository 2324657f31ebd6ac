"""NuSLERP (mergekit): spherical interpolation of two models, or of their task vectors over a base, with
the interpolation factor from per-model weights, over the whole tensor or per row/column."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergebench.methods.geometry import Vectors, gram
from mergebench.methods.registry import WEIGHT, Param, Piece, TensorInputs, merge_method
from mergebench.methods.selection import kernel_views, widened

UNIT_FLOOR = 1e-7  # mergekit's _normalize: x / max(‖x‖, 1e-7)
COLINEAR = 1e-8**2  # 1 − cos²θ at or below this: interpolate linearly


def nuslerp_factor(weight: Sequence[float]) -> float:
    """t = w_2 / (w_1 + w_2); 0.5 when the weights (nearly) cancel, as mergekit."""
    total = weight[0] + weight[1]
    return 0.5 if abs(total) < 1e-6 else weight[1] / total


def nuslerp_vectors(shape: Sequence[int], row_wise: bool, flatten: bool) -> Vectors:
    """mergekit's layout: the flattened tensor; else vectors along dim 0 (``nuslerp_row_wise``) or
    along the last dimension."""
    if flatten:
        return Vectors.whole()
    return Vectors.columns(shape) if row_wise else Vectors.rows(shape)


def slerp_coefficients(g: torch.Tensor, t: float, precision: torch.dtype) -> torch.Tensor:
    """(a, b) per vector with slerp(v_0, v_1) = a·v_0 + b·v_1, from float64 Gram matrices (vectors × 2 × 2).

    a = sin((1 − t)θ)/sin θ, b = sin(tθ)/sin θ; (1 − t, t) where the vectors are parallel or opposite:
    mergekit's test 1 − cos²θ ≤ 1e-16, on cos θ rounded to the compute ``precision`` (float32: where
    cos θ rounds to ±1). A zero vector has cosine 0 with the other (mergekit's unit-vector floor), so
    θ = π/2. cos θ = G_01/√(G_00·G_11) is exactly ±1 for exactly (anti)parallel vectors.
    """
    squares = g.diagonal(dim1=1, dim2=2)
    floored = squares.sqrt().clamp(min=UNIT_FLOOR)
    above = (squares > UNIT_FLOOR**2).all(dim=1)
    denominator = torch.where(above, (squares[:, 0] * squares[:, 1]).sqrt(), floored[:, 0] * floored[:, 1])
    cos = (g[:, 0, 1] / denominator).clamp(-1.0, 1.0)
    colinear = (1 - cos.to(precision).double().square()) <= COLINEAR
    theta = torch.acos(torch.where(colinear, 0.0, cos))
    sin = torch.where(colinear, 1.0, torch.sin(theta))
    a = torch.where(colinear, 1.0 - t, torch.sin((1.0 - t) * theta) / sin)
    b = torch.where(colinear, t, torch.sin(t * theta) / sin)
    return torch.stack([a, b], dim=1)


def nuslerp_stats(
    inputs: TensorInputs, *, weight: Sequence[float], nuslerp_row_wise: bool, nuslerp_flatten: bool
) -> torch.Tensor:
    """(a, b) per vector, from the float64 Gram matrices of the two models (or task vectors)."""
    vectors = nuslerp_vectors(inputs.shape, nuslerp_row_wise, nuslerp_flatten)
    g = gram(inputs, vectors, minus_base=inputs.has_base)
    return slerp_coefficients(g, nuslerp_factor(weight), inputs.model(0, 0, 0).dtype)


@merge_method(
    "nuslerp",
    params=(WEIGHT, Param("nuslerp_row_wise", bool, False), Param("nuslerp_flatten", bool, True)),
    base="optional",
    model_count=2,
    elementwise=True,
    stats=nuslerp_stats,
    summary="[θ_base +] slerp(τ_1, τ_2; t = w_2/(w_1+w_2)), τ_i = θ_i [− θ_base]; whole tensor, rows or columns",
    widens=True,
)
def nuslerp(
    models: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    *,
    weight: Sequence[float],
    nuslerp_row_wise: bool,
    nuslerp_flatten: bool,
    piece: Piece,
) -> torch.Tensor:
    """θ = θ_base + sin((1−t)Ω)/sin Ω · τ_1 + sin(tΩ)/sin Ω · τ_2, t = w_2/(w_1 + w_2), Ω = ∠(τ_1, τ_2).

    With a base_model τ_i = θ_i − θ_base; without one τ_i = θ_i and there is no θ_base term. Ω is
    taken over the flattened tensor (``nuslerp_flatten``, the default), else per vector along the last
    dimension, or along dim 0 with ``nuslerp_row_wise`` — mergekit's exact layouts. Angles are float64
    whole-vector quantities (stats step); (nearly) parallel vectors interpolate linearly.
    """
    vectors = nuslerp_vectors(piece.shape, nuslerp_row_wise, nuslerp_flatten)
    inputs = [*models, base] if base is not None else list(models)
    views = kernel_views(inputs, piece.widen)
    if views is not None and vectors.count == 1:  # one (a, b): one pass (``fused``)
        from mergebench.methods import fused

        coefficients = [float(piece.stats[0, 0]), float(piece.stats[0, 1])]
        flat_base = views[2] if base is not None else None
        merged = fused.combination(views[:2], flat_base, coefficients, subtract=True, fused_adds=False)
        return merged.view(models[0].shape)
    first, second, *rest = widened(inputs, piece.widen)
    base = rest[0] if rest else None
    if base is not None:
        first, second = first - base, second - base
    a = vectors.per_entry(piece.stats[:, 0], piece.offset, first)
    b = vectors.per_entry(piece.stats[:, 1], piece.offset, first)
    merged = first * a
    merged += second * b
    if base is not None:
        merged += base
    return merged
