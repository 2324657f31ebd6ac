"""Passthrough: the output tensor is one input tensor, optionally scaled (frankenmerges, layer stacking)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergebench.methods.registry import Param, Piece, merge_method


@merge_method(
    "passthrough",
    params=(Param("scale", float, 1.0),),
    base="unused",
    model_count=1,
    elementwise=True,
    is_identity=lambda params: params["scale"] == 1.0,
    summary="copy one model's tensors (one source per slice), optionally scaled; for layer stacking",
)
def passthrough(models: Sequence[torch.Tensor], base: None, *, scale: float, piece: Piece):
    """θ = scale·θ_1 for the single input model (scale 1.0: an exact copy)."""
    (model,) = models
    return model if scale == 1.0 else model * scale
