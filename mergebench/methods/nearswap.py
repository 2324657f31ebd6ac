"""NearSwap (alchemonaut, huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001): keep the other model's
value where it is near the base's, elsewhere move from the base toward it by at most t."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergebench.methods.registry import Param, Piece, merge_method

DIFFERENCE_FLOOR = 1e-6  # mergekit: w = t / max(|θ_1 − θ_base|, 1e-6)


@merge_method(
    "nearswap",
    params=(Param("t", float, None),),
    base="required",
    model_count=1,
    elementwise=True,
    summary="θ_base + w·(θ_1 − θ_base), w = clamp(t / |θ_1 − θ_base|, 0, 1): swap in values within t of the base",
)
def nearswap(models: Sequence[torch.Tensor], base: torch.Tensor, *, t: float, piece: Piece) -> torch.Tensor:
    """θ = w·θ_1 + (1 − w)·θ_base, w = clamp(t / max(|θ_1 − θ_base|, 1e-6), 0, 1), entry by entry.

    Where the two differ by at most t the other model's value is taken whole (w = 1); farther apart
    the result moves from the base toward it by exactly t. t ≤ 0 gives the base. mergekit's formula.
    """
    (other,) = models
    weight = (t / torch.sub(base, other).abs_().clamp_(min=DIFFERENCE_FLOOR)).clamp_(min=0.0, max=1.0)
    merged = weight * other
    return merged.add_(weight.neg_().add_(1.0).mul_(base))  # w·θ_1 + (1 − w)·θ_base; −w + 1 is 1 − w
