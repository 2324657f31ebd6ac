"""Spherical linear interpolation between exactly two models."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mergebench.methods.registry import MergeMethod, Param, register

PARALLEL_COSINE = 0.9995  # above this |cos|, the angle is too small to divide by: interpolate linearly
NORM_EPS = 1e-8


def slerp(models: Sequence[torch.Tensor], base: torch.Tensor, *, t: float):
    """θ = sin((1−t)Ω)/sin Ω · θ_base + sin(tΩ)/sin Ω · θ_1, Ω the angle between the flattened tensors.

    t = 0 gives the base model, t = 1 the other. When the two are (nearly) parallel, or either is
    all zeros, the angle is ill-defined and the result is the linear (1−t)·θ_base + t·θ_1.
    """
    (other,) = models
    v0, v1 = base.reshape(-1), other.reshape(-1)
    norm0, norm1 = float(v0.double().norm()), float(v1.double().norm())
    cosine = (
        float(torch.dot(v0.double(), v1.double())) / (norm0 * norm1)
        if norm0 > NORM_EPS and norm1 > NORM_EPS
        else 1.0
    )
    if abs(cosine) > PARALLEL_COSINE:
        return torch.lerp(base, other, t)
    omega = math.acos(max(-1.0, min(1.0, cosine)))
    sin_omega = math.sin(omega)
    scale0 = math.sin((1.0 - t) * omega) / sin_omega
    scale1 = math.sin(t * omega) / sin_omega
    merged = base * scale0
    merged.add_(other, alpha=scale1)
    return merged


register(
    MergeMethod(
        "slerp",
        slerp,
        (Param("t", float, None, valid=lambda v: 0.0 <= v <= 1.0, expect="in [0, 1]"),),
        base="required",
        models_other_than_base=1,
        summary="spherical interpolation from base_model (t=0) to the other model (t=1)",
    )
)
