"""Passthrough: the output tensor is one input tensor, optionally scaled (frankenmerges, layer stacking)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergebench.methods.registry import MergeMethod, Param, register


def passthrough(models: Sequence[torch.Tensor], base: None, *, scale: float):
    """θ = scale·θ_1 for the single input model (scale 1.0: an exact copy)."""
    if len(models) != 1:
        raise ValueError(f"passthrough takes exactly one model, got {len(models)}")
    return models[0] if scale == 1.0 else models[0] * scale


PASSTHROUGH = register(
    MergeMethod(
        "passthrough",
        passthrough,
        (Param("scale", float, 1.0),),
        base="unused",
        models_other_than_base=1,
        summary="copy one model's tensors (one source per slice), optionally scaled; for layer stacking",
    )
)
