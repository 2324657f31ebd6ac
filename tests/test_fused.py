"""The one-pass CPU kernels (``mergebench.methods.fused``) give the bits of the torch expressions they
stand for — the GPU's path and the methods' definition — on data made to catch a difference: many
equal magnitudes (bf16 inputs), entries tied at the threshold, ±0, NaN, ±inf and an overflowing
difference."""

from __future__ import annotations

import pytest
import torch

from mergebench.methods import fused, ties_dare
from mergebench.methods.registry import Piece
from mergebench.methods.selection import count_and_band, float32_views
from mergebench.methods.sparsify import disjoint_merge, disjoint_merge_torch, elect_and_merge

SPECIAL = [float("nan"), -0.0, 0.0, float("inf"), -float("inf"), 3.0e38, -3.0e38, 0.5, -0.5]


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(torch.int32)


def inputs(count: int, n: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``count`` models and a base of n float32 entries that went through bf16 (so magnitudes tie),
    with the special values sprinkled in at different places per tensor."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=generator).bfloat16().float()
    models = []
    for i in range(count):
        model = (base + 0.05 * torch.randn(n, generator=generator)).bfloat16().float()
        model[: n // 3] = base[: n // 3]  # zero task-vector entries
        for j, value in enumerate(SPECIAL):
            if (position := 7 * j + 3 * i + n // 3) < n:
                model[position] = value
        models.append(model)
    if n > 5:
        base[5] = float("nan")
    return models, base


@pytest.mark.parametrize("n", [0, 1, 97, 4099])
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("normalize", [True, False])
def test_disjoint_merge_kernel_is_torch_bit_for_bit(n, count, normalize):
    models, base = inputs(count, n, seed=n + count)
    weights = [0.7, -0.3, 0.0][:count] if count == 3 else [0.6, 0.4][:count]
    weighted = [(m - base).mul_(w) for m, w in zip(models, weights, strict=True)]
    expected = disjoint_merge_torch(weighted, weights, normalize)
    assert torch.equal(bits(disjoint_merge(weighted, weights, normalize)), bits(expected))
    for lambda_ in (1.0, 0.37):
        plus = elect_and_merge(weighted, weights, normalize, base, lambda_)
        assert torch.equal(bits(plus), bits(expected.clone().mul_(lambda_).add_(base)))


@pytest.mark.parametrize("offset", [0, 50, 200])
def test_trim_kernel_is_torch_bit_for_bit(offset):
    """w·τ·[|τ| > t or (|τ| = t and position ≤ cutoff)] for a chunk at ``offset``: the cutoff before,
    inside and after the chunk, and the thresholds ±inf (keep everything / nothing)."""
    (model,), base = inputs(1, 163, seed=3)
    delta = model - base
    positions = torch.arange(offset, offset + delta.numel())
    tied = float(delta.abs()[40])
    for threshold in (tied, 0.0, float("-inf"), float("inf")):
        for cutoff in (-1, offset - 1, offset + 45, offset + 162, 10**12):
            magnitude = delta.abs()
            keep = (magnitude > threshold) | ((magnitude == threshold) & (positions <= cutoff))
            expected = (delta * keep).mul_(-0.6)
            got = fused.trimmed(model.numpy(), base.numpy(), threshold, cutoff, offset, -0.6)
            assert torch.equal(bits(torch.from_numpy(got)), bits(expected)), (threshold, cutoff)


@pytest.mark.parametrize("n", [0, 1, 4099])
def test_magnitude_band_kernel_counts_like_count_and_band(n):
    (model,), base = inputs(1, n, seed=9)
    magnitude = (model - base).abs()
    finite = magnitude[torch.isfinite(magnitude)]
    lo, hi = (float(finite.quantile(0.4)), float(finite.quantile(0.6))) if finite.numel() else (0.0, 1.0)
    for low, high in ((lo, hi), (hi, hi), (0.0, 0.0), (0.0, float("inf"))):
        above, values, positions = fused.magnitude_band(model.numpy(), base.numpy(), low, high)
        band = ((magnitude >= low) & (magnitude <= high)).nonzero().reshape(-1)
        assert above == int((magnitude > high).sum())
        assert torch.equal(positions, band) and torch.equal(bits(values), bits(magnitude[band]))
        counted = count_and_band(magnitude, low, high)  # the numpy path it replaces
        assert counted[0] == above and torch.equal(counted[2], positions)


def test_ties_takes_the_kernels_only_for_contiguous_float32_and_gets_the_torch_bits():
    """``ties`` on float32 CPU chunks (kernels) and on strided views of the same values (torch's
    operations) give the same bits; float64 never reaches a kernel."""
    models, base = inputs(2, 4099, seed=11)
    stats = [(float((m - base).abs().nan_to_num(0.0).quantile(0.8)), 2000) for m in models]
    keywords = dict(weight=[0.6, 0.4], density=[0.2, 0.2], normalize=True, lambda_=0.9, int8_mask=False)
    piece = Piece("t", stats=stats, offset=17)

    def strided(tensor: torch.Tensor) -> torch.Tensor:
        wide = torch.empty(2 * tensor.numel())
        wide[::2] = tensor
        return wide[::2]

    assert float32_views([strided(base)]) is None and float32_views([base.double()]) is None
    fast = ties_dare.ties([m.clone() for m in models], base.clone(), piece=piece, **keywords)
    slow = ties_dare.ties([strided(m) for m in models], strided(base), piece=piece, **keywords)
    assert torch.equal(bits(fast), bits(slow))
