"""Arcee Fusion (mergekit, arcee.ai): keep only the other model's most important changes, importance being
|Δθ| times how much its row's softmax distribution moved (KL divergence), with an outlier threshold."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from mergebench.mapper import Mapper, in_order
from mergebench.methods.registry import Piece, TensorInputs, merge_method, whole_rows_length
from mergebench.methods.selection import compared, kernel_views, times_mask, top_k_cuts, widened

SOFTMAX_EPS = 1e-8  # mergekit: p = softmax(θ_1) + 1e-8, q = softmax(θ_base) + 1e-8
BLOCK = 1 << 18  # entries of whole rows scored at a time by the stats step


def importance(model: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """I = |θ_1 − θ_base|·KL(p ‖ q), p and q the softmax (+ 1e-8) of each row along the last dimension
    in ``model`` and ``base`` (a 1-D tensor is one row); in the inputs' precision, op for op as mergekit."""
    p = torch.softmax(model, dim=-1) + SOFTMAX_EPS
    q = torch.softmax(base, dim=-1) + SOFTMAX_EPS
    divergence = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    return (model - base).abs() * divergence


def row_length(shape: Sequence[int]) -> int:
    """Entries of one softmax row: the last dimension (a 0-D tensor is one entry)."""
    return shape[-1] if len(shape) else 1


def flat_importance(model: torch.Tensor, base: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``importance`` of flat slices holding whole rows of a tensor of ``shape``, flat, on the inputs'
    device but always computed on the CPU: CUDA's softmax, log and row sums round differently, and an
    entry whose score lies at the threshold would then be kept on one device and dropped on the other."""
    last = row_length(shape)
    scores = importance(model.reshape(-1, last).cpu(), base.reshape(-1, last).cpu())
    return scores.reshape(-1).to(model.device)


def order_statistics(values: torch.Tensor, ks: Sequence[int], map: Mapper = in_order) -> list[float]:
    """The (k + 1)-th smallest of a 1-D tensor for each k: ``kthvalue(k + 1)``, but on large tensors
    through the sampled brackets of ``top_k_cuts`` (the (n − k)-th largest; one sample and one walk for
    all of them), which is exact and copies no tensor."""
    n = values.numel()
    if n <= 1 << 20:
        return [float(values.kthvalue(k + 1).values) for k in ks]
    cuts = top_k_cuts(values, [n - k for k in ks], map)  # k = 0 keeps all: no threshold, the minimum
    return [float(values.min()) if k == 0 else threshold for k, (threshold, _) in zip(ks, cuts, strict=True)]


def fusion_stats(inputs: TensorInputs) -> torch.Tensor | None:
    """Which entries to keep (flat, bool; None for an empty tensor): I ≥ τ, τ = median + 1.5·(Q3 − Q1)
    of the whole tensor's importance I, each quantile the sorted value at index ⌊q·(n − 1)⌋
    (mergekit's). I is computed once, in blocks of whole rows into one workspace; the pieces only
    apply the mask (n bytes), instead of recomputing I's softmaxes and logs."""
    n = inputs.numel
    if not n:
        return None
    scores = inputs.workspace()[:n]

    def score(start: int, stop: int) -> None:
        views = kernel_views(
            [inputs.stored(0, start, stop), inputs.stored(None, start, stop), scores[start:stop]],
            inputs.widen,
        )
        if views is None:
            scores[start:stop] = flat_importance(
                inputs.model(0, start, stop), inputs.base(start, stop), inputs.shape
            )
            return
        from mergebench.methods import fused

        last = row_length(inputs.shape)
        p = torch.softmax(inputs.model(0, start, stop).view(-1, last), dim=-1)
        ratio = torch.softmax(inputs.base(start, stop).view(-1, last), dim=-1)
        fused.softmax_ratio(p.numpy().reshape(-1), ratio.numpy().reshape(-1), SOFTMAX_EPS)
        terms = ratio.log_().mul_(p)  # p·log(p/q): the same float32 products as importance's
        divergence = torch.sum(terms, dim=-1)
        fused.scaled_magnitudes(views[0], views[1], divergence.numpy(), views[2])

    inputs.slices(score, whole_rows_length(row_length(inputs.shape), BLOCK))
    last = n - 1
    q1, median, q3 = order_statistics(scores, [last // 4, last // 2, 3 * last // 4], inputs.map)
    return compared(scores, operator.ge, median + 1.5 * (q3 - q1))


@merge_method(
    "arcee_fusion",
    params=(),
    base="required",
    model_count=1,
    elementwise=True,
    stats=fusion_stats,
    summary="θ_base + Δ·[I ≥ median(I) + 1.5·IQR(I)], I = |Δ|·KL(softmax θ_1 ‖ softmax θ_base) per row, Δ = θ_1 − θ_base",
    widens=True,
)
def arcee_fusion(models: Sequence[torch.Tensor], base: torch.Tensor, *, piece: Piece) -> torch.Tensor:
    """θ = θ_base + Δ·[I ≥ τ], Δ = θ_1 − θ_base, I = |Δ|·KL(softmax(θ_1) ‖ softmax(θ_base)) with the
    softmax and KL taken per row along the last dimension, τ = median(I) + 1.5·(Q3(I) − Q1(I)).

    mergekit's definition. The KL needs whole rows and τ the whole tensor's importance, so the stats step
    scores the whole tensor and hands the pieces the mask [I ≥ τ]. I is a selection score, not a result: it is
    computed in the compute precision with mergekit's exact operations, so the kept entries are the
    same as mergekit's (in float64 the score would differ in its last float32 bits and swap entries
    lying at the threshold). Above 10⁶ entries mergekit takes its quantiles from 10⁶ entries sampled at
    random (unseeded); we do not reproduce that: our quantiles are exact.
    """
    (model,) = models
    if model.numel() == 0:
        return widened([base], piece.widen)[0].clone()
    keep = piece.part_of(piece.stats, model)
    views = kernel_views([model, base], piece.widen)
    if views is not None:  # one pass (``fused``)
        from mergebench.methods import fused

        return fused.masked_update(*views, keep.numpy().reshape(-1)).view(base.shape)
    model, base = widened([model, base], piece.widen)
    return times_mask(model - base, keep, in_place=True).add_(base)  # θ_base + Δ·[I ≥ τ], in Δ's memory
