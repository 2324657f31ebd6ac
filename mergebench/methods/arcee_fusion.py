"""Arcee Fusion (mergekit, arcee.ai): keep only the other model's most important changes, importance being
|Δθ| times how much its row's softmax distribution moved (KL divergence), with an outlier threshold."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergebench.methods.registry import Piece, merge_method

SOFTMAX_EPS = 1e-8  # mergekit: p = softmax(θ_1) + 1e-8, q = softmax(θ_base) + 1e-8


def importance(model: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """I = |θ_1 − θ_base|·KL(p ‖ q), p and q the softmax (+ 1e-8) of each row along the last dimension
    in ``model`` and ``base`` (a 1-D tensor is one row); in the inputs' precision, op for op as mergekit."""
    p = torch.softmax(model, dim=-1) + SOFTMAX_EPS
    q = torch.softmax(base, dim=-1) + SOFTMAX_EPS
    divergence = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    return (model - base).abs() * divergence


def fusion_threshold(values: torch.Tensor) -> torch.Tensor:
    """median + 1.5·(Q3 − Q1), each quantile the sorted value at index ⌊q·(n − 1)⌋ (mergekit's)."""
    flat = values.reshape(-1)
    last = flat.numel() - 1
    q1, median, q3 = (flat.kthvalue(k + 1).values for k in (last // 4, last // 2, 3 * last // 4))
    return median + 1.5 * (q3 - q1)


@merge_method(
    "arcee_fusion",
    params=(),
    base="required",
    model_count=1,
    summary="θ_base + Δ·[I ≥ median(I) + 1.5·IQR(I)], I = |Δ|·KL(softmax θ_1 ‖ softmax θ_base) per row, Δ = θ_1 − θ_base",
)
def arcee_fusion(models: Sequence[torch.Tensor], base: torch.Tensor, *, piece: Piece) -> torch.Tensor:
    """θ = θ_base + Δ·[I ≥ τ], Δ = θ_1 − θ_base, I = |Δ|·KL(softmax(θ_1) ‖ softmax(θ_base)) with the
    softmax and KL taken per row along the last dimension, τ = median(I) + 1.5·(Q3(I) − Q1(I)).

    mergekit's definition. Whole-tensor (not elementwise): the KL needs whole rows and the threshold
    quantiles the whole tensor's importance. I is a selection score, not a result: it is computed in the
    compute precision with mergekit's exact operations, so the kept entries are the same as mergekit's
    (in float64 the score would differ in its last float32 bits and swap entries lying at the
    threshold). Above 10⁶ entries mergekit takes its quantiles from 10⁶ entries sampled at random
    (unseeded); we do not reproduce that: our quantiles are exact.
    """
    (model,) = models
    if model.numel() == 0:
        return base.clone()
    scores = importance(model, base)
    keep = scores >= fusion_threshold(scores)
    return base + (model - base) * keep
