"""Spherical linear interpolation between exactly two models."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from mergebench.methods.registry import MergeMethod, Param, register

PARALLEL_COSINE = 0.9995  # above this |cos|, the angle is too small to divide by: interpolate linearly
NORM_EPS = 1e-8
STATS_CHUNK = 1 << 20


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


def slerp(
    models: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    t: float,
    offset: int = 0,
    scales: tuple[float, float] | None = None,
):
    """θ = sin((1−t)Ω)/sin Ω · θ_base + sin(tΩ)/sin Ω · θ_1, Ω the angle between the flattened tensors.

    t = 0 gives the base model, t = 1 the other. When the two are (nearly) parallel, or either is
    all zeros, the angle is ill-defined and the result is the linear (1−t)·θ_base + t·θ_1.
    Angles are computed in float64. ``scales`` carries (a, b) when this runs on a chunk.
    """
    (other,) = models
    if scales is None:
        v0, v1 = base.reshape(-1).double(), other.reshape(-1).double()
        scales = slerp_scales(float(v0 @ v1), float(v0.norm()), float(v1.norm()), t)
    merged = base * scales[0]
    merged.add_(other, alpha=scales[1])
    return merged


def slerp_prepare(
    models, base, convert: Callable[[torch.Tensor], torch.Tensor], scratch, *, t: float, **_
) -> dict:
    """The angle between the whole tensors, accumulated chunk by chunk in float64."""
    v0, v1 = base.reshape(-1), models[0].reshape(-1)
    dot = sq0 = sq1 = 0.0
    for start in range(0, v0.numel(), STATS_CHUNK):
        a = convert(v0[start : start + STATS_CHUNK]).double()
        b = convert(v1[start : start + STATS_CHUNK]).double()
        dot += float(a @ b)
        sq0 += float(a @ a)
        sq1 += float(b @ b)
    return {"scales": slerp_scales(dot, math.sqrt(sq0), math.sqrt(sq1), t)}


register(
    MergeMethod(
        "slerp",
        slerp,
        (Param("t", float, None, valid=lambda v: 0.0 <= v <= 1.0, expect="in [0, 1]"),),
        base="required",
        models_other_than_base=1,
        elementwise=True,
        prepare=slerp_prepare,
        summary="spherical interpolation from base_model (t=0) to the other model (t=1)",
    )
)
