"""Model Breadcrumbs (Davari & Belilovsky 2023): drop each task vector's largest outliers and its smallest
entries, then add what is left (``breadcrumbs``) or merge it TIES-style (``breadcrumbs_ties``).

The count rules are mergekit 0.1.5's ``magnitude_outliers``: with n entries, keep = ⌊density·n⌋,
top = ⌊gamma·n⌋ and bottom = max(0, n − keep − top) dropped, i.e. of τ's entries sorted by descending
magnitude the ranks [top', top' + keep) survive, top' = min(top, n − keep) (gamma yields when
density + gamma > 1). Ties between equal magnitudes are broken by flat index, lower index first, as in
our TIES trim (mergekit's unstable sort leaves them to chance), so gamma = 0 is exactly a TIES trim.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import torch

from mergebench.methods.registry import (
    DENSITY,
    INT8_MASK,
    LAMBDA,
    WEIGHT,
    Param,
    Piece,
    TensorInputs,
    merge_method,
    normalize_param,
)
from mergebench.methods.selection import (
    kernel_views,
    task_vector_cuts,
    times_mask,
    top_k_cuts,
)
from mergebench.methods.sparsify import WHOLE, fraction_count, kept_mask, l1_rescale, trimmed_merge

GAMMA = Param(
    "gamma", float, 0.01, per_model=True, valid=lambda v: 0.0 <= v <= 1.0, expect="in [0, 1]"
)  # the fraction of largest-magnitude entries dropped (mergekit's default 0.01)
# mergekit's ``rescale``: scale the survivors so the task vector keeps its L1 norm (‖τ‖₁ / ‖τ̂‖₁)
RESCALE_L1 = Param("rescale", bool, False)


class Band(NamedTuple):
    """A task vector's survivors: descending-magnitude ranks [top, top + keep), as two top-k cuts
    (threshold, tie cutoff) of ``top_k_cut``, and the L1 rescale factor (1.0 without ``rescale``)."""

    top: tuple[float, int]
    top_and_kept: tuple[float, int]
    scale: float


def breadcrumbs_stats(
    inputs: TensorInputs, *, density: Sequence[float], gamma: Sequence[float], rescale: bool, **_
) -> list[Band | None]:
    """Each task vector's band cuts over the whole tensor (None: density 1, nothing dropped), and with
    ``rescale`` its L1 norms before and after. Without ``rescale`` the cuts are streamed from the
    inputs (``task_vector_cuts``); with it |τ_i| is built slice by slice in one workspace, which the
    norms read too."""
    n = inputs.numel
    magnitude: torch.Tensor | None = None
    bands: list[Band | None] = []
    streamed: list[tuple[int, int]] = []  # (model, k) of every cut taken from the stored inputs
    for index, (d, g) in enumerate(zip(density, gamma, strict=True)):
        if d >= 1.0:
            bands.append(None)  # mergekit returns τ untouched (gamma and rescale included)
            continue
        keep = fraction_count(n, d)
        top = min(fraction_count(n, g), n - keep)
        if not rescale:
            streamed += [(index, top), (index, top + keep)]
            bands.append(None)  # filled in below, with every model's cuts from one walk
            continue
        magnitude = _magnitudes(inputs, index, inputs.workspace() if magnitude is None else magnitude)
        band = Band(*top_k_cuts(magnitude, [top, top + keep], inputs.map), 1.0)
        before = float(magnitude.sum(dtype=torch.float64))
        after = _kept_l1(inputs, magnitude, band)
        bands.append(band._replace(scale=l1_rescale(before, after)))
    cuts = task_vector_cuts(inputs, streamed) if streamed else []
    for (index, _), upper, lower in zip(streamed[::2], cuts[::2], cuts[1::2], strict=True):
        bands[index] = Band(upper, lower, 1.0)
    return bands


def _magnitudes(inputs: TensorInputs, index: int, out: torch.Tensor) -> torch.Tensor:
    """|τ_index| of the whole tensor, into ``out`` slice by slice."""

    def fill(start: int, stop: int) -> None:
        part = out[start:stop]
        views = kernel_views(
            [inputs.stored(index, start, stop), inputs.stored(None, start, stop)], inputs.widen
        )
        if views is None:
            torch.sub(inputs.model(index, start, stop), inputs.base(start, stop), out=part).abs_()
        else:
            from mergebench.methods import fused

            fused.magnitudes(*views, part.numpy())

    inputs.slices(fill)
    return out


def _kept_l1(inputs: TensorInputs, magnitude: torch.Tensor, band: Band) -> float:
    """‖τ̂‖₁: the band's share of |τ|, float64 sums per slice added in slice order."""

    def kept(start: int, stop: int) -> float:
        part = magnitude[start:stop]
        mask = kept_mask(part, band.top_and_kept, band.top, start)
        return float(times_mask(part, mask, in_place=False).sum(dtype=torch.float64))

    return sum(inputs.slices(kept), 0.0)


def breadcrumbs(
    models: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    weight: Sequence[float],
    density: Sequence[float],
    gamma: Sequence[float],
    normalize: bool,
    lambda_: float,
    rescale: bool,
    int8_mask: bool,
    piece: Piece,
    elect_signs: bool,
) -> torch.Tensor:
    """θ = θ_base + λ·combine_i(w_i·τ̂_i), τ̂_i = τ_i with the ⌊gamma·n⌋ largest and the smallest
    magnitudes dropped so that ⌊density·n⌋ remain (bands from ``breadcrumbs_stats``), ×‖τ_i‖₁/‖τ̂_i‖₁
    with ``rescale``. combine: Σ (÷ Σ w_i with ``normalize``), or with ``elect_signs`` TIES' election
    of sign(Σ w_i τ̂_i) and the sum of agreeing entries (÷ their total weight with ``normalize``)."""
    trims = [(band.top_and_kept, band.top, band.scale) if band is not None else WHOLE for band in piece.stats]
    return trimmed_merge(
        models,
        base,
        trims,
        weight,
        offset=piece.offset,
        widen=piece.widen,
        elect_signs=elect_signs,
        normalize=normalize,
        lambda_=lambda_,
    )


for _name, _elect, _then in (
    ("breadcrumbs", False, "θ_base + λ Σ w_i τ̂_i"),
    ("breadcrumbs_ties", True, "TIES sign election and disjoint sum of w_i τ̂_i"),
):
    merge_method(
        _name,
        params=(WEIGHT, DENSITY, GAMMA, normalize_param(False), LAMBDA, RESCALE_L1, INT8_MASK),
        base="required",
        elementwise=True,
        stats=breadcrumbs_stats,
        summary=f"τ̂_i = τ_i without its top-gamma and bottom magnitudes (density kept); {_then}",
        widens=True,
    )(functools.partial(breadcrumbs, elect_signs=_elect))
