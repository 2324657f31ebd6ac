"""Spherical linear interpolation between exactly two models."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mergebench.methods.registry import Param, Piece, TensorInputs, merge_method
from mergebench.methods.selection import kernel_views, widened

PARALLEL_COSINE = 0.9995  # above this |cos|, the angle is too small to divide by: interpolate linearly
NORM_EPS = 1e-8
DOT_CHUNK = 1 << 20  # entries per slice of its float64 dot products (its own summation order)


def slerp_scales(dot: float, norm0: float, norm1: float, t: float) -> tuple[float, float]:
    """Coefficients (a, b) of θ = a·θ_base + b·θ_1, from the angle Ω between the two tensors."""
    if norm0 <= NORM_EPS or norm1 <= NORM_EPS:
        return 1.0 - t, t
    cosine = dot / (norm0 * norm1)
    if abs(cosine) > PARALLEL_COSINE:
        return 1.0 - t, t
    omega = math.acos(max(-1.0, min(1.0, cosine)))
    sin_omega = math.sin(omega)
    return math.sin((1.0 - t) * omega) / sin_omega, math.sin(t * omega) / sin_omega


def slerp_stats(inputs: TensorInputs, *, t: float) -> tuple[float, float]:
    """The angle between the whole tensors, accumulated in float64 over slices: the scales (a, b)."""

    def products(start: int, stop: int) -> tuple[float, float, float]:
        views = kernel_views([inputs.stored(None, start, stop), inputs.stored(0, start, stop)], inputs.widen)
        if views is not None:  # the three sums in one pass over the stored slices (``fused``)
            from mergebench.methods import fused

            g = fused.gram(views, None)
            return float(g[0, 1]), float(g[0, 0]), float(g[1, 1])
        a = inputs.base(start, stop).double()
        b = inputs.model(0, start, stop).double()
        return float(a @ b), float(a @ a), float(b @ b)

    dot, sq0, sq1 = inputs.sums(products, 3, DOT_CHUNK)
    return slerp_scales(dot, math.sqrt(sq0), math.sqrt(sq1), t)


@merge_method(
    "slerp",
    params=(Param("t", float, None, valid=lambda v: 0.0 <= v <= 1.0, expect="in [0, 1]"),),
    base="required",
    model_count=1,
    elementwise=True,
    stats=slerp_stats,
    summary="spherical interpolation from base_model (t=0) to the other model (t=1)",
    widens=True,
)
def slerp(models: Sequence[torch.Tensor], base: torch.Tensor, *, t: float, piece: Piece):
    """θ = sin((1−t)Ω)/sin Ω · θ_base + sin(tΩ)/sin Ω · θ_1, Ω the angle between the flattened tensors.

    t = 0 gives the base model, t = 1 the other. When the two are (nearly) parallel, or either is
    all zeros, the angle is ill-defined and the result is the linear (1−t)·θ_base + t·θ_1.
    Angles are computed in float64 (``slerp_stats``, over the whole tensors).
    """
    (other,) = models
    a, b = piece.stats
    views = kernel_views([base, other], piece.widen)
    if views is not None:  # one pass (``fused``)
        from mergebench.methods import fused

        return fused.combination(views, None, [a, b], subtract=False, fused_adds=True).view(base.shape)
    base, other = widened([base, other], piece.widen)
    merged = base * a
    merged.add_(other, alpha=b)
    return merged
