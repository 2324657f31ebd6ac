"""Multi-SLERP (mergekit; goddard.blog/posts/multislerp-wow-what-a-cool-idea): weighted interpolation of N
models (or task vectors over a base) on the hypersphere, rescaled to their weighted mean norm."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mergebench.errors import ConfigError
from mergebench.methods.geometry import Vectors, gram, read_stacked
from mergebench.methods.registry import WEIGHT, Param, Piece, TensorInputs, merge_method
from mergebench.methods.selection import kernel_views, widened


def multislerp_weights(weight: Sequence[float], normalize_weights: bool) -> list[float]:
    if not normalize_weights:
        return list(weight)
    total = sum(weight)
    if total == 0:
        raise ConfigError("merge_method 'multislerp': weights sum to 0, cannot normalize_weights")
    return [w / total for w in weight]


# ‖m‖² read off the Gram matrix (sᵀGs) unless it is below this fraction of Σ s_i²·G_ii: there the terms
# cancel, and m is summed entry by entry instead (an exact 0 for exactly opposite vectors, no
# cancellation error). Above it, sᵀGs carries at most ~k/CANCELLATION_FLOOR times the rounding of the
# float64 sums themselves (relative ~1e-12 here): far below what a float32 or bf16 result can show.
CANCELLATION_FLOOR = 1e-3


def multislerp_stats(
    inputs: TensorInputs, *, weight: Sequence[float], normalize_weights: bool, eps: float
) -> list[float] | None:
    """The coefficients c_i of θ = [θ_base +] Σ c_i·τ_i (None for a single model).

    One float64 pass gives the Gram matrix G of the task vectors: the norms ‖τ_i‖ = √G_ii and ‖m‖² =
    sᵀGs for m = Σ s_i·τ_i, s_i = w_i/(‖τ_i‖ + eps). Where sᵀGs cancels (``CANCELLATION_FLOOR``), a
    second pass sums m entry by entry, so that cancelling vectors give exactly 0.
    """
    if inputs.count == 1:
        return None
    w = multislerp_weights(weight, normalize_weights)
    g = gram(inputs, Vectors.whole(), minus_base=inputs.has_base)[0].cpu()
    norms = g.diagonal().sqrt().tolist()
    # u_i = τ_i / (‖τ_i‖ + eps); a zero τ_i has u_i = 0 even with eps = 0 (mergekit: NaN)
    floors = [n + eps for n in norms]
    scales = torch.tensor(
        [wi / f if f > 0 else 0.0 for wi, f in zip(w, floors, strict=True)], dtype=torch.float64
    )
    square = float(scales @ g @ scales)
    if square < CANCELLATION_FLOOR * float(scales.square() @ g.diagonal()):

        def squared_norm(start: int, stop: int) -> float:
            # products rounded, then added: exactly opposite terms give exactly 0. A matrix-vector
            # product may fuse them (an FMA leaves s·x's rounding error: with eps 0, ‖m‖ > 0 and the
            # result a unit step along noise — seen with torch 2.11 on an AVX-512 Xeon)
            x = read_stacked(inputs, minus_base=inputs.has_base)(start, stop)
            return float((scales.to(x.device)[:, None] * x).sum(dim=0).square().sum())

        square = sum(inputs.slices(squared_norm))  # the slices' sums added in slice order
    mean_norm = math.sqrt(square)
    if mean_norm < eps or mean_norm == 0:
        return w  # the weighted sum: mergekit's fallback for two models (it raises for more)
    average_norm = sum(wi * n for wi, n in zip(w, norms, strict=True))
    return [average_norm * math.cos(eps) * s / mean_norm for s in scales.tolist()]


@merge_method(
    "multislerp",
    params=(
        WEIGHT,
        Param("normalize_weights", bool, True),
        Param("eps", float, 1e-8, valid=lambda v: v >= 0, expect="≥ 0"),
    ),
    base="optional",
    elementwise=True,
    stats=multislerp_stats,
    summary="[θ_base +] (Σ w_i‖τ_i‖)·m/‖m‖, m = Σ w_i τ_i/‖τ_i‖, τ_i = θ_i [− θ_base]: spherical weighted mean",
    widens=True,
)
def multislerp(
    models: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    *,
    weight: Sequence[float],
    normalize_weights: bool,
    eps: float,
    piece: Piece,
) -> torch.Tensor:
    """θ = [θ_base +] (Σ w_i‖τ_i‖)·cos(eps)·m/‖m‖, m = Σ w_i·τ_i/(‖τ_i‖ + eps), τ_i = θ_i [− θ_base].

    mergekit projects the unit vectors onto the tangent space at m/‖m‖, averages there and maps back
    with the exponential map; the tangent average is identically zero (Σ w_i(u_i − ⟨u_i, m̂⟩m̂) =
    m − ‖m‖m̂ = 0), so its result is exactly this closed form (the cos(eps) is its exp map of a
    zero-length tangent, |0| + eps). Weights are normalized to sum 1 unless ``normalize_weights: false``.
    When m vanishes (opposite task vectors with balanced weights) the result is the weighted sum
    Σ w_i·τ_i [+ θ_base]: mergekit's fallback for two models; for more mergekit raises an error.
    A single model is returned unchanged. Norms are float64 whole-tensor quantities (stats step).
    """
    if piece.stats is None:
        return widened(models, piece.widen)[0]
    views = kernel_views([*models, base] if base is not None else models, piece.widen)
    if views is not None:  # one pass (``fused``)
        from mergebench.methods import fused

        flat_base = views[-1] if base is not None else None
        count = len(models)
        merged = fused.combination(views[:count], flat_base, piece.stats, subtract=True, fused_adds=True)
        return merged.view(models[0].shape)
    models = widened(models, piece.widen)
    base = widened([base], piece.widen)[0] if base is not None else None
    merged = models[0] - base if base is not None else models[0] * 1.0
    merged *= piece.stats[0]
    for model, c in zip(models[1:], piece.stats[1:], strict=True):
        merged.add_(model - base if base is not None else model, alpha=c)
    if base is not None:
        merged += base
    return merged
