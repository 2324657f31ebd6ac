"""The one-pass CPU kernels (``mergebench.methods.fused``) give the bits of the torch expressions they
stand for — the GPU's path and the methods' definition — on data made to catch a difference: many
equal magnitudes (bf16 inputs), entries tied at the threshold, ±0, NaN, ±inf and an overflowing
difference."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

import mergebench.execute as execute
from mergebench.io.writer import TensorSpec
from mergebench.methods import all_methods, fused, get_method, sparsify, ties_dare
from mergebench.methods import arcee_fusion as arcee_module
from mergebench.methods import breadcrumbs as breadcrumbs_module
from mergebench.methods import della as della_module
from mergebench.methods import karcher as karcher_module
from mergebench.methods import model_stock as model_stock_module
from mergebench.methods import multislerp as multislerp_module
from mergebench.methods import nuslerp as nuslerp_module
from mergebench.methods import ram as ram_module
from mergebench.methods import sce as sce_module
from mergebench.methods import slerp as slerp_module
from mergebench.methods.basic import plus_base, weighted_sum
from mergebench.methods.registry import Piece, TensorInputs
from mergebench.methods.selection import KEEP_NONE, count_and_band, count_and_bands, kernel_views
from mergebench.methods.sparsify import disjoint_merge, disjoint_merge_torch, elect_and_merge
from mergebench.planner import Merge

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
            got = fused.kept(model.numpy(), base.numpy(), (threshold, cutoff), KEEP_NONE, offset, -0.6)
            assert torch.equal(bits(torch.from_numpy(got)), bits(expected)), (threshold, cutoff)


@pytest.mark.parametrize("n", [0, 1, 4099])
def test_magnitude_band_kernel_counts_like_count_and_band(n):
    """``fused.band`` of |model − base| (one range; two in one pass; three: two and one; four: two pairs)
    counts and collects what torch's comparisons do, positions counted from ``first``; so does
    ``count_and_bands`` of the materialised magnitudes through numpy (strided) and the kernel."""
    (model,), base = inputs(1, n, seed=9)
    magnitude = (model - base).abs()
    finite = magnitude[torch.isfinite(magnitude)]
    lo, hi = (float(finite.quantile(0.4)), float(finite.quantile(0.6))) if finite.numel() else (0.0, 1.0)
    ranges = [(lo, hi), (hi, hi), (0.0, 0.0), (0.0, float("inf"))]
    for chosen in ([r] for r in ranges), (ranges[:2], ranges[2:]), (ranges[1:],), (ranges,):
        for group in chosen:
            first = 1000
            found = fused.band(model.numpy(), group, base.numpy(), first)
            numpy_path = count_and_bands(strided(magnitude), group, first)
            kernel_path = count_and_bands(magnitude, group, first)
            assert len(found) == len(numpy_path) == len(kernel_path) == len(group)
            for (low, high), result, *others in zip(group, found, numpy_path, kernel_path, strict=True):
                above, values, positions = result
                band = ((magnitude >= low) & (magnitude <= high)).nonzero().reshape(-1)
                assert above == int((magnitude > high).sum())
                assert torch.equal(positions, band + first)
                assert torch.equal(bits(values), bits(magnitude[band]))
                for other in others:
                    assert other[0] == above and torch.equal(other[2], positions)
                    assert torch.equal(bits(other[1]), bits(values))
    assert count_and_band(magnitude, lo, hi)[0] == int((magnitude > hi).sum())


def strided(tensor: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous view: no kernel takes it, so the torch operations run."""
    wide = torch.empty(2 * tensor.numel())
    wide[::2] = tensor
    return wide[::2]


def dare(elect_signs: bool):
    return functools.partial(ties_dare.dare, elect_signs=elect_signs)


def breadcrumbs(elect_signs: bool):
    return functools.partial(breadcrumbs_module.breadcrumbs, elect_signs=elect_signs, gamma=[0.01, 0.01])


def bands(models, base, offset):
    """Breadcrumbs' cuts: the first model's band, the second's None (density 1: τ whole)."""
    magnitude = (models[0] - base).abs().nan_to_num(0.0)
    high, low = float(magnitude.quantile(0.95)), float(magnitude.quantile(0.5))
    return [breadcrumbs_module.Band((high, offset + 3000), (low, offset + 2000), 1.25), None]


SPARSE = {
    "breadcrumbs": (breadcrumbs(False), dict(density=[0.45, 1.0], rescale=True, int8_mask=False)),
    "breadcrumbs_ties": (breadcrumbs(True), dict(density=[0.45, 1.0], rescale=True, int8_mask=False)),
    "ties": (ties_dare.ties.function, dict(density=[0.2, 0.2], int8_mask=False)),
    "dare_ties": (dare(True), dict(density=[0.3, 1.0], rescale=True, int8_mask=False)),
    "dare_ties_no_rescale": (dare(True), dict(density=[0.0, 0.6], rescale=False, int8_mask=False)),
    "dare_linear": (dare(False), dict(density=[0.3, 0.7], rescale=True, int8_mask=False)),
}


@pytest.mark.parametrize("method", sorted(SPARSE))
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("offset", [17, (1 << 32) - 2000])  # the second chunk crosses a hash segment
def test_methods_take_the_kernels_only_for_contiguous_float32_and_get_the_torch_bits(
    method, normalize, offset
):
    """A method on float32 CPU chunks (kernels) and on strided views of the same values (torch's
    operations) gives the same bits; a strided or float64 tensor never reaches a kernel."""
    function, keywords = SPARSE[method]
    models, base = inputs(2, 4099, seed=11)
    if method.startswith("breadcrumbs"):
        stats = bands(models, base, offset)
    else:
        stats = [(float((m - base).abs().nan_to_num(0.0).quantile(0.8)), offset + 2000) for m in models]
    piece = Piece("t", seed=5, stats=stats, offset=offset)
    keywords = dict(keywords, weight=[0.6, -0.4], normalize=normalize, lambda_=0.9)
    assert kernel_views([strided(base)]) is None and kernel_views([base.double()]) is None
    fast = function([m.clone() for m in models], base.clone(), piece=piece, **keywords)
    slow = function([strided(m) for m in models], strided(base), piece=piece, **keywords)
    assert torch.equal(bits(fast), bits(slow))


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("elect_signs", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_trimmed_merge_of_one_or_three_models_is_the_torch_path_bit_for_bit(count, elect_signs, normalize):
    """``sparsify.trimmed_merge`` (TIES, breadcrumbs) through ``fused.trimmed_merge`` equals its torch
    operations (strided inputs) for one and three task vectors: a TIES trim, a breadcrumbs band with a
    scale, a whole τ."""
    models, base = inputs(count, 4099, seed=43 + count)
    base[10:20] = -0.0  # trimmed-away negative entries over a −0 base: every term −0, and so the sum
    for model in models:
        model[10:20] = -1e-30
    magnitude = (models[0] - base).abs().nan_to_num(0.0)
    cut = [float(magnitude.quantile(q)) for q in (0.5, 0.7, 0.9)]
    trims = [((cut[0], 2100), KEEP_NONE, 1.0), ((cut[1], 1500), (cut[2], 3000), 1.25), sparsify.WHOLE][:count]
    weights = [0.6, -0.4, 0.3][:count]
    keywords = dict(offset=0, widen=False, elect_signs=elect_signs, normalize=normalize, lambda_=0.9)
    fast = sparsify.trimmed_merge([m.clone() for m in models], base.clone(), trims, weights, **keywords)
    slow = sparsify.trimmed_merge([strided(m) for m in models], strided(base), trims, weights, **keywords)
    assert torch.equal(bits(fast), bits(slow))


@pytest.mark.parametrize("count", [1, 3])
def test_sum_kernel_is_weighted_sum_and_plus_base_bit_for_bit(count):
    """``fused.combination`` as a sum: Σ w_i·x_i with torch's fused multiply-adds
    (``basic.weighted_sum``), or already weighted x_i added in order; ÷ a divisor; then θ_base + λ·(…)
    — as torch rounds each."""
    models, base = inputs(count, 4099, seed=13)
    weights = [0.7, -0.3, 0.45][:count]
    views = tuple(m.numpy() for m in models)
    for divisor in (None, 0.85, 0.0):
        expected = weighted_sum(models, weights)
        plain = models[0].clone()
        for m in models[1:]:
            plain += m
        if divisor is not None:
            expected /= divisor
            plain /= divisor
        got = fused.combination(
            views, base.numpy(), weights, subtract=False, fused_adds=True, divisor=divisor, lambda_=0.9
        )
        assert torch.equal(bits(got), bits(plus_base(expected, base, 0.9)))
        got = fused.combination(
            views, base.numpy(), None, subtract=False, fused_adds=False, divisor=divisor, lambda_=0.9
        )
        assert torch.equal(bits(got), bits(plus_base(plain, base, 0.9)))


def test_dare_kernel_hash_wraps_its_counter_like_triple32_in_numpy():
    """The kernel's keep decisions are triple32 of (counter + k0) mod 2³², k1 xored after the first
    multiply — here recomputed in numpy uint32 (wrapping) for a piece whose counter wraps."""
    n, first, k1 = 3000, (1 << 32) - 1000, 0x9E3779B9
    h = (np.arange(n, dtype=np.uint64) + first).astype(np.uint32)  # wraps at 2³²
    for index, (shift, multiplier) in enumerate(sparsify.HASH_ROUNDS):
        h ^= h >> np.uint32(shift)
        h *= np.uint32(multiplier)
        if index == 0:
            h ^= np.uint32(k1)
    h ^= h >> np.uint32(sparsify.HASH_LAST_SHIFT)
    bound = sparsify.keep_bound(0.4)
    ones, zeros = np.ones(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
    got = fused.dropped(
        ones,
        zeros,
        [(0, n, first, k1)],
        sparsify.HASH_ROUNDS,
        sparsify.HASH_LAST_SHIFT,
        bound,
        0.4,
        False,
        1.0,
    )
    assert np.array_equal(got, (h < bound).astype(np.float32))
    assert 0.3 < got.mean() < 0.5


@pytest.mark.parametrize("elect_signs", [True, False])
@pytest.mark.parametrize("rescale, scales", [(True, [1.0, 1.0]), (False, [1.0, 1.0]), (True, [1.3, 0.8])])
def test_della_kernels_are_the_torch_path_bit_for_bit(elect_signs, rescale, scales):
    """DELLA on float32 rows (keys, numpy's row sort, keep/divide/weigh as ranks come up) and on
    strided views (torch/numpy operations): same bits, over three blocks of whole rows, with a model
    at density 1, NaN/±inf/overflowing differences, and L1 factors from the stats (``scales``)."""
    rows, m = 600, 1000  # 2¹⁸-entry blocks of whole rows: three blocks
    models, base = inputs(2, rows * m, seed=17)
    piece = Piece("della.t", seed=3, stats=scales, offset=5 * rows * m, shape=(rows, m))
    keywords = dict(
        weight=[0.6, -0.4],
        density=[0.5, 1.0] if scales[0] != 1.0 else [0.5, 0.35],
        epsilon=[0.1, 0.05],
        normalize=True,
        lambda_=0.9,
        rescale=rescale,
        rescale_l1=scales[0] != 1.0,
        int8_mask=False,
        elect_signs=elect_signs,
    )
    fast = della_module.della([x.view(rows, m) for x in models], base.view(rows, m), piece=piece, **keywords)
    slow = della_module.della([strided(x) for x in models], strided(base), piece=piece, **keywords)
    assert torch.equal(bits(fast.reshape(-1)), bits(slow.reshape(-1)))


@pytest.mark.parametrize("n", [0, 1, 2, 5000, 70_001])
def test_sorted_floats_is_numpy_sort(n):
    """``fused.sorted_floats`` orders float32 values as ``np.sort`` does (signs, ±inf, subnormals,
    bf16 magnitudes' many ties, one repeated value whose digit passes are skipped), −0 before +0, and
    gives None for an array holding a NaN."""
    generator = np.random.default_rng(n)
    mixed = generator.standard_normal(n).astype(np.float32) * np.float32(1e3)
    mixed[::7] = np.abs(mixed[::7]).astype(np.float32).view(np.uint32) & 0xFFFF0000  # bf16 values: ties
    specials = np.array([np.inf, -np.inf, 1e-45, -1e-45, 1e-40, 0.0, -0.0, 3.4e38], dtype=np.float32)
    mixed[: min(n, specials.size)] = specials[: min(n, specials.size)]
    for values in (mixed, np.full(n, 0.75, dtype=np.float32)):
        got = fused.sorted_floats(values.copy())
        expected = np.sort(values)
        assert np.array_equal(got, expected)  # ±0 compare equal; their order is checked below
        zeros = got[got == 0]
        assert np.all(np.diff(np.signbit(zeros).astype(np.int8)) <= 0)  # every −0 before every +0
        assert np.array_equal(got[got != 0].view(np.uint32), expected[expected != 0].view(np.uint32))
    if n:
        mixed[n // 2] = np.nan
        assert fused.sorted_floats(mixed) is None


def rows_for_ranking(m: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(model, base) of 12 rows of m bf16 entries, one case of ``fused.magnitude_ranks`` per row, and
    the rows its counting pass must leave to the sort (the rest it must rank itself)."""
    generator = torch.Generator().manual_seed(m)
    base = torch.randn(12, m, generator=generator).bfloat16()
    model = (base.float() + 0.02 * torch.randn(12, m, generator=generator)).bfloat16()  # 0: a finetune
    model[1] = base[1]  # 1: all zero
    model[2, ::3] = base[2, ::3]  # 2: a third zero, and −0 beside +0
    base[2, 1], model[2, 1] = -0.0, 0.0
    model[3, 7] = float("inf")  # 3: ±inf and NaN: too wide a range
    model[4, 9] = float("nan")
    base[5] = 0.0  # 5: θ itself, magnitudes from 1e-30 to 1e2 and subnormals: too wide
    model[5] = torch.randn(m, generator=generator).mul(torch.logspace(-30, 2, m)).bfloat16()
    model[5, :40] = torch.full((40,), 1e-40)
    # 6: 200 inexact keys (1 − j·2⁻²⁰) in one bucket, descending by column: more clashes than are
    # re-sorted (with m = 300, more inexact keys than a quarter of the row)
    base[6], model[6] = 0.0, 0.0
    model[6, :200], base[6, :200] = 1.0, (torch.arange(1, 201) * 2.0**-20).bfloat16()
    # 7: 40 inexact keys (2^e − j·2⁻²⁰) sharing 4 buckets, the rest zero: re-sorted
    base[7], model[7] = 0.0, 0.0
    model[7, 3::7][:40] = (2.0 ** (torch.arange(40) % 4)).bfloat16()
    base[7, 3::7][:40] = (torch.arange(1, 41) * 2.0**-20).bfloat16()
    model[8, :] = base[8]  # 8: one entry moved, and two inexact keys of one bucket, descending
    model[8, m // 2] = base[8, m // 2].float() + 0.5
    model[8, 10], base[8, 10], model[8, 20], base[8, 20] = 1.0, 2.0**-20, 1.0, 2.0**-19
    expected_unranked = [3, 4, 5, 6]
    return model, base, expected_unranked


@pytest.mark.parametrize("m", [300, 2048])
@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float32])
def test_magnitude_ranks_are_the_stable_order_of_magnitudes(m, stored):
    """Each entry's rank in its row from ``della.magnitude_ranks`` (the counting kernel and the rows
    it leaves to the sort) is its position in a stable argsort of |θ − θ_base|'s clamped bits (NaN
    last, equal magnitudes by column), computed here by numpy; and the kernel itself ranks every row
    but those of a too wide range or too many clashing inexact keys."""
    model, base, expected_unranked = rows_for_ranking(m)

    def arrays(x: torch.Tensor) -> np.ndarray:
        return (
            x.reshape(-1).view(torch.uint16).numpy()
            if stored == torch.bfloat16
            else x.float().reshape(-1).numpy()
        )

    delta = (model.float() - base.float()).numpy()
    keys = np.minimum(np.abs(delta).view(np.int32), 0x7F800001)
    expected = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1).astype(np.int32)
    got_delta, ranks = della_module.magnitude_ranks(arrays(model), arrays(base), m)
    assert np.array_equal(got_delta.view(np.int32), delta.reshape(-1).view(np.int32))
    assert np.array_equal(ranks.reshape(-1, m), expected)
    _, counted, unranked = fused.magnitude_ranks(arrays(model), arrays(base), m)
    assert unranked.tolist() == expected_unranked
    rows = [r for r in range(12) if r not in expected_unranked]
    assert np.array_equal(counted.reshape(-1, m)[rows], expected[rows])


def test_magnitude_ranks_count_rows_longer_than_two_to_the_sixteen():
    """The counting kernel has no row-length limit of its own: two inexact keys of one bucket past
    column 2¹⁶, in descending order, are re-sorted into the stable order (a column kept in 16 bits
    would rank other entries)."""
    m = 70_000
    model, base = torch.zeros(m, dtype=torch.bfloat16), torch.zeros(m, dtype=torch.bfloat16)
    model[::5] = 0.5  # exact keys
    model[66_000], base[66_000] = 1.0, 2.0**-20  # 1 − 2⁻²⁰ ranks after 1 − 2⁻¹⁹ (column 69 000)
    model[69_000], base[69_000] = 1.0, 2.0**-19
    stored = [x.view(torch.uint16).numpy() for x in (model, base)]
    keys = np.abs((model.float() - base.float()).numpy()).view(np.int32)
    expected = np.argsort(np.argsort(keys, kind="stable"), kind="stable").astype(np.int32)
    _, ranks, unranked = fused.magnitude_ranks(*stored, m)
    assert unranked.size == 0
    assert np.array_equal(ranks, expected)


@pytest.mark.parametrize("divide", [True, False])
def test_magprune_kernel_is_magprune_bit_for_bit(divide):
    """One model's w·s·MAGPRUNE(τ) from ``fused.magpruned`` equals ``della.magprune`` then the two
    products: every kept value, and the sign of every dropped zero (a dropped −0 is +0 after ÷ p)."""
    rows, m = 40, 300
    (model,), base = inputs(1, rows * m, seed=19)
    key, offset = ("s", "della.t"), 12345
    first, k1 = sparsify.counter_key(key, 0, offset, rows * m)
    step, lowest = della_module.ramp_terms(m, 0.4, 0.15)
    got = fused.magpruned(
        *della_module.magnitude_ranks(model.numpy(), base.numpy(), m),
        step,
        lowest,
        first,
        k1,
        sparsify.HASH_ROUNDS,
        sparsify.HASH_LAST_SHIFT,
        divide,
        1.5,
        -0.7,
    )
    delta = (model - base).view(rows, m, 1)
    expected = della_module.magprune(delta, 0.4, 0.15, key, 0, offset, divide).reshape(-1) * 1.5 * -0.7
    assert torch.equal(bits(torch.from_numpy(got)), bits(expected))


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("select_topk", [1.0, 0.4])
def test_sce_kernels_are_the_torch_path_bit_for_bit(count, select_topk):
    """SCE's stats (variances, their cut, the energies) and merge through the kernels equal the torch
    operations (strided inputs) bit for bit: the same selection, weights and output."""
    models, base = inputs(count, 4099, seed=23 + count)
    models = [m.nan_to_num(0.0, 1e30, -1e30) for m in models]  # the stats step refuses non-finite input
    base = base.nan_to_num(0.0)
    results = []
    for prepare in (torch.clone, strided):
        workspace = functools.partial(torch.empty, 4099)
        tensor_inputs = TensorInputs([prepare(m) for m in models], prepare(base), lambda t: t, workspace)
        stats = sce_module.sce_stats(tensor_inputs, select_topk=select_topk)
        piece = Piece("t", stats=stats, offset=0, shape=(4099,))
        merged = sce_module.sce.function(
            [prepare(m) for m in models], prepare(base), select_topk=select_topk, int8_mask=False, piece=piece
        )
        results.append((stats, merged))
    (fast_stats, fast), (slow_stats, slow) = results
    assert fast_stats.weights == slow_stats.weights
    assert (fast_stats.selected is None) == (slow_stats.selected is None)
    if fast_stats.selected is not None:
        assert torch.equal(fast_stats.selected, slow_stats.selected)
    assert torch.equal(bits(fast), bits(slow))


@pytest.mark.parametrize("masked", [True, False])
def test_kernels_given_no_mask_or_base_read_only_inside_their_arrays(monkeypatch, masked):
    """Compiled kernels skip bounds checks, so a kernel reading past an array reads whatever lies
    there (SCE's merge once read a 1-entry dummy mask at every position: a segfault now and then on
    16 cores). Their Python bodies run here instead, where numpy raises IndexError for any such read:
    SCE without a variance mask, the disjoint merge without a base, the trimmed merge."""
    models, base = inputs(2, 4099, seed=31)
    views = tuple(m.nan_to_num(0.0).numpy() for m in models)
    flat_base = base.nan_to_num(0.0).numpy()
    for name in ("_sce_merge", "_disjoint_merge", "_trimmed_merge"):
        monkeypatch.setattr(fused, name, getattr(fused, name).py_func)
    mask = np.arange(4099) % 3 == 0 if masked else None
    cuts = [((0.01, 100), KEEP_NONE, 1.0)] * 2
    with np.errstate(all="ignore"):  # numpy's scalars warn where the kernels' float math does not
        fused.sce_merge(views, flat_base, mask, [0.6, 0.4], 1e-6)
        fused.disjoint_merge(views, [0.6, 0.4], True, flat_base if masked else None)
        fused.trimmed_merge(
            views, flat_base, cuts, 0, [0.6, 0.4], elect_signs=masked, normalize=True, lambda_=1.0
        )


@pytest.mark.parametrize("count", [1, 2, 3])
def test_ram_kernels_are_the_torch_path_bit_for_bit(count):
    """RAM's merge (with RAM+ boosts) and RAM+'s overlap counts through the kernels equal the torch/numpy
    operations: changes at, below and above ε, NaN/±inf/overflowing differences."""
    models, base = inputs(count, 4099, seed=29 + count)
    base[100:150] = 0.0
    models[0][100:120] = 1e-5  # |τ| exactly ε in float32, just below and above it
    models[0][120:135] = float(np.nextafter(np.float32(1e-5), np.float32(0)))
    models[0][135:150] = float(np.nextafter(np.float32(1e-5), np.float32(1)))
    boosts = [1.0, 1.7, 0.9][:count]
    fast = ram_module.ram_merge([m.clone() for m in models], base.clone(), 1e-5, boosts)
    slow = ram_module.ram_merge([strided(m) for m in models], strided(base), 1e-5, boosts)
    assert torch.equal(bits(fast), bits(slow))
    finite = [m.nan_to_num(0.0, 1e30, -1e30) for m in models]
    shared, alone = ram_module.overlap_counts(finite, base.nan_to_num(0.0), 1e-5)
    assert fused.overlap_counts(tuple(m.numpy() for m in finite), base.nan_to_num(0.0).numpy(), 1e-5) == [
        *shared,
        *alone,
    ]


def test_model_stock_kernels_are_the_torch_path_bit_for_bit():
    """model_stock's Gram rows (float64 task vectors, one pass each) and its merge through the kernels
    equal the torch operations (strided inputs): the same t and output bits."""
    generator = torch.Generator().manual_seed(31)
    base = torch.randn(64, 67, generator=generator).bfloat16().float()
    models = [(base + 0.02 * torch.randn(64, 67, generator=generator)).bfloat16().float() for _ in range(3)]
    results = []
    for prepare in (torch.clone, lambda t: strided(t.reshape(-1)).view(t.shape)):
        tensor_inputs = TensorInputs([prepare(m) for m in models], prepare(base))
        stats = model_stock_module.model_stock_stats(tensor_inputs, filter_wise=False)
        piece = Piece("t", stats=stats, offset=0, shape=tuple(base.shape))
        merged = model_stock_module.model_stock.function(
            [prepare(m) for m in models], prepare(base), filter_wise=False, piece=piece
        )
        results.append((stats, merged))
    (fast_stats, fast), (slow_stats, slow) = results
    assert torch.equal(fast_stats, slow_stats) and torch.equal(bits(fast), bits(slow))


def test_cut_mask_kernel_is_trim_mask():
    """``fused.cut_mask`` (SCE's selection from its variances) keeps what ``sparsify.trim_mask`` keeps:
    ties at the threshold up to the cutoff only, wherever the cutoff falls against the slice, and
    the cuts that keep all or nothing."""
    values = torch.tensor([0.0, 2.0, 1.0, 2.0, 3.0, 2.0, float("inf"), 2.0, 0.5]).repeat(3)
    first = 100
    cuts = [(2.0, cutoff) for cutoff in (50, 99, 101, 103, 110, 126, 127, 200)]
    cuts += [(float(values.max()), 106), KEEP_NONE, sparsify.KEEP_ALL, (0.0, 0)]
    for threshold, cutoff in cuts:
        out = np.empty(values.numel(), dtype=bool)
        fused.cut_mask(values.numpy(), threshold, cutoff, first, out)
        expected = sparsify.trim_mask(values, threshold, cutoff, first)
        assert torch.equal(torch.from_numpy(out), expected), (threshold, cutoff)


@pytest.mark.parametrize("count, with_base", [(2, True), (3, True), (2, False), (3, False)])
def test_gram_kernel_sums_the_float64_products(count, with_base):
    """``fused.gram`` (float64 sums in vector lanes, another order than BLAS'): equal to numpy's
    float64 products to rounding on full float32 mantissas, a stored bf16 model among float32 ones,
    and lengths around the vector width; bit for bit where every partial sum is exact (small
    integers), so a wrong term, pair or base cannot hide in the tolerance."""
    generator = torch.Generator().manual_seed(53 + count)
    for n in (0, 1, 7, 8, 9, 4099):
        values = [torch.randn(n, generator=generator) for _ in range(count + 1)]
        values[1] = values[1].bfloat16()  # read as stored: its bits, widened in the kernel
        integers = [torch.randint(-40, 40, (n,), generator=generator).float() for _ in range(count + 1)]
        for case, exact in ((values, False), (integers, True)):
            points, base = case[:count], case[count] if with_base else None
            views = kernel_views([*points, *([base] if with_base else [])], widen=True)
            got = fused.gram(views[:count], views[count] if with_base else None).numpy()
            x = np.stack([p.float().numpy() - (base.numpy() if with_base else 0) for p in points]).astype(
                np.float64
            )
            expected = x @ x.T
            if exact:
                assert np.array_equal(got, expected), (n, got, expected)
            else:
                assert np.allclose(got, expected, rtol=1e-13, atol=0), (n, got - expected)
            assert np.array_equal(got, got.T)


# Parameters that make each method that ``widens`` do all of its work (the rest: their defaults).
WIDENED_CASES = {
    "ties": {"weight": 0.6, "density": 0.3},
    "dare_ties": {"weight": 0.6, "density": 0.4},
    "dare_linear": {"weight": 0.6, "density": 0.4},
    "breadcrumbs": {"weight": 0.6, "density": 0.5, "gamma": 0.05, "rescale": True},
    "breadcrumbs_ties": {"weight": 0.6, "density": 0.3, "gamma": 0.05},
    "della": {"weight": 0.6, "density": 0.5, "epsilon": 0.1},
    "della_linear": {"weight": 0.6, "density": 0.5, "epsilon": 0.1},
    "sce": {"select_topk": 0.5},
    "ram": {"epsilon": 0.01},
    "ramplus_tl": {"epsilon": 0.01, "r": 0.5, "alpha": 0.3},
    "model_stock": {},
    "model_stock/filter_wise": {"filter_wise": True},
    "arcee_fusion": {},
    "slerp": {"t": 0.3},
    "nuslerp": {"weight": 0.7},
    "nuslerp/rows": {"weight": 0.7, "nuslerp_flatten": False},
    "nuslerp/no_base": {"weight": 0.7},
    "multislerp": {"weight": 0.7},
    "multislerp/no_base": {"weight": 0.7},
    "karcher": {},
    "karcher/no_base": {},
}


def widened_job(case: str, shape: tuple[int, ...], count: int) -> Merge:
    """The merge of ``count`` models (and a base, unless the case ends in ``no_base``)."""
    method = get_method(case.split("/")[0])
    chosen = WIDENED_CASES[case]
    params = {}
    for param in method.params:
        value = chosen.get(param.name, param.default)
        params[param.name] = (value,) * count if param.per_model else value
    return Merge(
        output=TensorSpec("model.layers.0.mlp.up_proj.weight", shape, torch.bfloat16),
        method=method,
        base=None if case.endswith("no_base") else Stored(),
        models=(Stored(),) * count,
        params=params,
        compute_dtype=None,
        seed=3,
    )


class Stored:
    """An input whose stored tensor the test passes in directly."""

    refs = (None,)

    def build(self, tensors):
        return tensors[0]


def test_every_method_that_widens_is_flagged_here():
    flagged = {name for name, method in all_methods().items() if method.widens}
    assert flagged == {case.split("/")[0] for case in WIDENED_CASES}


@pytest.mark.parametrize("case", sorted(WIDENED_CASES))
@pytest.mark.parametrize("shape", [(70, 131), (9, 40, 23)])
def test_stored_bf16_chunks_give_the_bits_of_their_float32_values(monkeypatch, case, shape):
    """A method that ``widens`` reads bf16 chunks as stored (kernels widen each entry as they read it;
    where no kernel applies — 3-D DELLA, filter-wise model_stock — ``widened`` converts first): the
    output has the bits of the same merge of float32 copies of those values, chunked and whole."""
    monkeypatch.setattr(execute, "CHUNK", 1000)  # many chunks, misaligned with rows
    generator = torch.Generator().manual_seed(37)
    base = torch.randn(*shape, generator=generator)
    # quantised deltas: ties at RAM's ε and at the trims' thresholds
    stored = [base, *(base + torch.randint(-3, 4, shape, generator=generator) * 0.01 for _ in range(2))]
    stored[1][:2] *= 3.0  # rows far from the base: arcee_fusion keeps some of their entries
    stored = [t.bfloat16() for t in stored]
    job = widened_job(case, shape, 1 if case in ("arcee_fusion", "slerp") else 2)
    stored = stored[: len(job.models) + 1]
    if job.base is None:
        stored = stored[1:]
    as_bf16 = execute.run_op(job, stored)
    as_float32 = execute.run_op(job, [t.float() for t in stored])
    assert torch.equal(as_bf16.view(torch.int16), as_float32.view(torch.int16))
    assert not torch.equal(as_bf16, stored[0])  # the merge did something


@pytest.mark.parametrize("with_base", [True, False])
def test_combination_kernel_is_the_closed_forms_bit_for_bit(with_base):
    """nuslerp (products added), multislerp and karcher (torch's fused multiply-adds) through
    ``fused.combination`` equal their torch operations (strided inputs) bit for bit."""
    models, base = inputs(3, 4099, seed=41)
    base = base if with_base else None
    cases = [
        (
            nuslerp_module.nuslerp.function,
            models[:2],
            torch.tensor([[0.6, -0.35]]),
            dict(weight=[1.0, 1.0], nuslerp_row_wise=False, nuslerp_flatten=True),
        ),
        (
            multislerp_module.multislerp.function,
            models,
            [0.4, -0.7, 1.3],
            dict(weight=[1.0] * 3, normalize_weights=True, eps=1e-8),
        ),
        (
            karcher_module.karcher.function,
            models,
            [0.4, -0.7, 1.3, 0.2] if with_base else [0.4, -0.7, 1.3],
            dict(max_iter=10, tol=1e-5),
        ),
    ]
    for function, chosen, stats, keywords in cases:
        piece = Piece("t", stats=stats, shape=(4099,))
        fast = function([m.clone() for m in chosen], base, piece=piece, **keywords)
        slow = function(
            [strided(m) for m in chosen], strided(base) if base is not None else None, piece=piece, **keywords
        )
        assert torch.equal(bits(fast), bits(slow)), function


def test_masked_update_kernel_is_arcee_fusions_torch_bits():
    (model,), base = inputs(1, 4099, seed=43)
    keep = torch.rand(4099, generator=torch.Generator().manual_seed(1)) > 0.5
    piece = Piece("t", stats=keep, shape=(4099,))
    function = arcee_module.arcee_fusion.function
    fast = function([model.clone()], base.clone(), piece=piece)
    slow = function([strided(model)], strided(base), piece=piece)
    assert torch.equal(bits(fast), bits(slow))


@pytest.mark.parametrize("shape", [(37, 211), (4099,)])
def test_arcee_scores_through_kernels_are_importance_bit_for_bit(shape):
    """Arcee Fusion's stats on stored slices (torch's softmax, log and row sums; the elementwise steps
    in ``fused``) score every entry with ``importance``'s bits — on strided inputs, where no kernel
    applies — so the same entries sit at the threshold: same scores, same mask."""
    n = math.prod(shape)
    (model,), base = inputs(1, n, seed=47)
    model, base = model.nan_to_num(0.0, 30.0, -30.0), base.nan_to_num(0.0)  # the stats refuse non-finite
    results = []
    for prepare in (torch.clone, strided):
        workspace = torch.full((n,), float("nan"))
        tensor_inputs = TensorInputs(
            [prepare(model).view(shape)], prepare(base).view(shape), workspace=lambda kept=workspace: kept
        )
        keep = arcee_module.fusion_stats(tensor_inputs)
        results.append((workspace.clone(), keep))
    (fast_scores, fast_keep), (slow_scores, slow_keep) = results
    expected = arcee_module.importance(model.view(-1, shape[-1]), base.view(-1, shape[-1])).reshape(-1)
    assert torch.equal(bits(slow_scores), bits(expected))
    assert torch.equal(bits(fast_scores), bits(slow_scores)) and torch.equal(fast_keep, slow_keep)


def test_slerp_kernels_are_the_torch_path_bit_for_bit():
    """SLERP's float64 dot products from widened stored slices (a reused, aligned buffer) and its
    combination kernel equal the torch operations (strided inputs) bit for bit, stats and output."""
    generator = torch.Generator().manual_seed(47)
    base = torch.randn(3 * (1 << 20) + 12345, generator=generator).bfloat16().float()  # a partial last slice
    other = (base + 0.3 * torch.randn(base.shape, generator=generator)).bfloat16().float()
    results = []
    for prepare in (torch.clone, strided):
        stats = slerp_module.slerp_stats(TensorInputs([prepare(other)], prepare(base)), t=0.3)
        piece = Piece("t", stats=stats, shape=tuple(base.shape))
        results.append(
            (stats, slerp_module.slerp.function([prepare(other)], prepare(base), t=0.3, piece=piece))
        )
    (fast_stats, fast), (slow_stats, slow) = results
    assert fast_stats == slow_stats and torch.equal(bits(fast), bits(slow))
