"""Model Stock (Jang et al. 2024, arXiv:2403.19522): interpolate between the finetunes' average and the
base by a ratio read off the angle between the finetunes' task vectors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergebench.errors import ConfigError
from mergebench.methods.geometry import Vectors, gram
from mergebench.methods.registry import Param, Piece, TensorInputs, merge_method
from mergebench.methods.selection import kernel_views, widened

NORM_PRODUCT_FLOOR = 1e-6  # mergekit: cos = ⟨τ_a, τ_b⟩ / max(‖τ_a‖‖τ_b‖, 1e-6)
SINGULAR = 1e-6  # |1 + (k − 1) cos θ| below this: no finite ratio, keep the base (t = 0)


def stock_vectors(shape: Sequence[int], filter_wise: bool) -> Vectors:
    """The whole tensor, or (``filter_wise``) each row along the last dimension (a 1-D tensor is one row)."""
    return Vectors.rows(shape) if filter_wise else Vectors.whole()


def stock_ratio(g: torch.Tensor) -> torch.Tensor:
    """t = k·cos θ / (1 + (k − 1)·cos θ) per vector, cos θ the mean pairwise cosine of the k task vectors
    (Gram matrices ``g``: vectors × k × k, float64); t = 0 where the denominator vanishes."""
    k = g.shape[-1]
    squares = g.diagonal(dim1=1, dim2=2)
    cosines = [  # ‖τ_a‖‖τ_b‖ as √(G_aa·G_bb): exactly ±1 for exactly (anti)parallel task vectors
        (g[:, a, b] / (squares[:, a] * squares[:, b]).sqrt().clamp(min=NORM_PRODUCT_FLOOR)).clamp(-1.0, 1.0)
        for a in range(k)
        for b in range(a + 1, k)
    ]
    cos = torch.stack(cosines).mean(dim=0)
    denominator = 1 + (k - 1) * cos
    singular = denominator.abs() < SINGULAR
    return torch.where(singular, 0.0, k * cos / torch.where(singular, 1.0, denominator))


def model_stock_stats(inputs: TensorInputs, *, filter_wise: bool) -> torch.Tensor:
    """t for each vector (one, or one per row), from float64 Gram matrices of the task vectors."""
    if inputs.count < 2:
        raise ConfigError(
            f"merge_method 'model_stock' needs at least 2 models besides base_model, got {inputs.count}"
        )
    vectors = stock_vectors(inputs.shape, filter_wise)
    return stock_ratio(gram(inputs, vectors, minus_base=True))


@merge_method(
    "model_stock",
    params=(Param("filter_wise", bool, False),),
    base="required",
    min_models=2,
    elementwise=True,
    stats=model_stock_stats,
    summary="t·mean(θ_i) + (1−t)·θ_base, t = k·cosθ / (1 + (k−1)·cosθ), cosθ the mean pairwise cosine of τ_i",
    widens=True,
)
def model_stock(
    models: Sequence[torch.Tensor], base: torch.Tensor, *, filter_wise: bool, piece: Piece
) -> torch.Tensor:
    """θ = t·θ̄ + (1 − t)·θ_base, θ̄ = (1/k)·Σ θ_i, t = k·cos θ / (1 + (k − 1)·cos θ).

    cos θ is the mean over pairs of cos(τ_a, τ_b), τ_i = θ_i − θ_base, over the whole tensor (the
    paper's per-layer angle) or, with ``filter_wise``, per row along the last dimension (mergekit's
    option). Cosines are whole-vector quantities, computed in float64 by the stats step; a zero task
    vector has cosine 0 with every other (mergekit's floor on the norm product), and where
    1 + (k − 1)·cos θ vanishes t = 0 (the base), as in mergekit. Needs k ≥ 2 finetunes.
    """
    vectors = stock_vectors(piece.shape, filter_wise)
    views = kernel_views([*models, base], piece.widen)
    if views is not None and vectors.count == 1:  # one t: one pass (``fused``)
        from mergebench.methods import fused

        t = float(piece.stats[0])
        return fused.stock(views[:-1], views[-1], t).view(base.shape)
    *models, base = widened([*models, base], piece.widen)
    t = vectors.per_entry(piece.stats, piece.offset, base)
    average = models[0].clone()
    for model in models[1:]:
        average.add_(model)
    average /= len(models)
    return average.mul_(t).add_(base * (1 - t))  # t·θ̄ + (1 − t)·θ_base, in θ̄'s memory
