"""Breadcrumbs, DELLA and SCE against the numpy references in ``reference_sparse.py``, their randomness
and edge cases, the executor's chunked path, and end-to-end parity with mergekit 0.1.5."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import mergebench.execute as execute
import mergebench.methods.della as della_module
import mergebench.methods.sparsify as sparsify
from mergebench.errors import ConfigError
from mergebench.io.writer import TensorSpec
from mergebench.methods import get_method
from mergebench.methods.della import della_param_problems
from mergebench.methods.sce import variance as sce_variance
from mergebench.methods.sparsify import fraction_count, keep_count, magnitude_mask, uniforms
from mergebench.planner import Merge
from tests import reference_sparse as ref
from tests.conftest import run_cli, write_config
from tests.mergekit_ref import (  # noqa: F401  (bf16_family is a fixture)
    MERGEKIT_YAML,
    assert_matches_mergekit,
    bf16_family,
    load_tensors,
    run_mergekit,
)


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def call(method_name, models, base, key=(0, "tensor"), **params):
    """Whole-tensor application with parameters by YAML name; ``key`` = (seed, tensor name)."""
    seed, name = key
    return get_method(method_name)(models, base, seed=seed, name=name, **params)


def np_(tensors):
    return [t.numpy() for t in tensors]


def draws(models, key):
    """DELLA's randomness contract: model i's entry j uses U_ij = uniforms(…)[j] (as DARE)."""
    return [uniforms(m.numel(), key, i).reshape(m.shape).double().numpy() for i, m in enumerate(models)]


@pytest.fixture
def trio():
    base = rand(40, 30, seed=1)
    return base, [base + 0.1 * rand(40, 30, seed=s) for s in (2, 3, 4)]


@pytest.fixture
def tied():
    """Integer task vectors: many equal magnitudes and variances straddle every cut."""
    base = rand(12, 10, seed=5)
    generator = torch.Generator().manual_seed(6)
    return base, [base + torch.randint(-3, 4, (12, 10), generator=generator).double() for _ in range(4)]


# ------------------------------------------------------------------------------------------------
# counts


def test_fraction_count_floors_the_written_decimal():
    assert fraction_count(100, 0.29) == 29  # mergekit's int(0.29 * 100) is 28: float error
    assert fraction_count(100, 0.3) == 30 and fraction_count(101, 0.3) == 30
    assert fraction_count(7, 0.5) == 3 and fraction_count(10, 1e-05) == 0
    assert fraction_count(5, 1.0) == 5 and fraction_count(5, 0.0) == 0
    sizes = [32, 512, 1024, 2048, 3072, 4096**2, 4096 * 11008, 32000 * 4096, 128256 * 4096]
    for n in sizes:  # elsewhere exactly mergekit's int(density * numel)
        for i in range(1, 100):
            assert fraction_count(n, i / 100) == int(i / 100 * n)


def test_keep_count_is_mergekits_magnitude_count():
    assert keep_count(100, 0.29) == 29 and keep_count(1000, 0.5) == 500
    assert keep_count(32, 0.01) == 1  # max(1, ⌊0.32⌋): a positive density keeps one entry
    assert keep_count(10, 1.0) == 10 and keep_count(0, 0.5) == 0


# ------------------------------------------------------------------------------------------------
# Model Breadcrumbs


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize(
    "densities,gammas,normalize,rescale",
    [
        ([0.5, 0.3, 0.9], [0.01, 0.1, 0.05], False, False),
        ([0.5, 0.3, 0.9], [0.01, 0.1, 0.05], True, True),
        ([0.9, 1.0, 0.05], [0.2, 0.5, 0.0], False, True),  # density + gamma > 1: gamma yields
        ([0.01, 0.6, 0.6], [0.0, 0.0, 0.4], True, False),
    ],
)
def test_breadcrumbs(trio, method, densities, gammas, normalize, rescale):
    base, models = trio
    weights = [0.9, -0.4, 0.6]
    out = call(
        method,
        models,
        base,
        weight=weights,
        density=densities,
        gamma=gammas,
        normalize=normalize,
        rescale=rescale,
        **{"lambda": 1.3},
    )
    expected = ref.breadcrumbs(
        base.numpy(),
        np_(models),
        weights,
        densities,
        gammas,
        1.3,
        normalize,
        rescale,
        method.endswith("ties"),
    )
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
def test_breadcrumbs_exact_with_magnitude_ties(tied, method):
    base, models = tied
    weights, densities, gammas = [1.0, 0.5, 0.25, 0.75], [0.3, 0.55, 0.5, 0.8], [0.1, 0.05, 0.3, 0.15]
    out = call(method, models, base, weight=weights, density=densities, gamma=gammas, rescale=True)
    expected = ref.breadcrumbs(
        base.numpy(), np_(models), weights, densities, gammas, 1.0, False, True, method.endswith("ties")
    )
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-13, atol=1e-13)


def test_breadcrumbs_keeps_exact_counts_and_drops_the_top(tied):
    base, models = tied
    tau = models[0] - base  # 120 entries, integer magnitudes 0..3: ties at both cuts
    out = call("breadcrumbs", models[:1], base, weight=[1.0], density=[0.3], gamma=[0.1]) - base
    mask = ref.breadcrumbs_mask(tau.numpy(), 0.3, 0.1)
    assert int(mask.sum()) == 36  # ⌊0.3·120⌋
    order = ref.descending_order(np.abs(tau.numpy()))
    assert not mask.ravel()[order[:12]].any() and mask.ravel()[order[12:48]].all()  # the top ⌊0.1·120⌋ go
    np.testing.assert_array_equal((out != 0).numpy(), mask & (tau.numpy() != 0))
    # gamma = 0 is exactly TIES' trim (same count, same tie-break)
    plain = call("breadcrumbs", models[:1], base, weight=[1.0], density=[0.3], gamma=[0.0]) - base
    assert torch.equal(plain != 0, magnitude_mask(tau, 0.3) & (tau != 0))


def test_breadcrumbs_ties_with_gamma_zero_is_ties(trio):
    base, models = trio
    params = dict(weight=[0.9, -0.4, 0.6], density=[0.2, 0.5, 0.7], normalize=True, **{"lambda": 0.8})
    ties = call("ties", models, base, **params)
    crumbs = call("breadcrumbs_ties", models, base, gamma=[0.0, 0.0, 0.0], **params)
    assert torch.equal(ties, crumbs)


# ------------------------------------------------------------------------------------------------
# SCE


@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.1, 0.0])
def test_sce(trio, select_topk):
    base, models = trio
    out = call("sce", models, base, select_topk=select_topk)
    np.testing.assert_allclose(
        out.numpy(), ref.sce(base.numpy(), np_(models), select_topk), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("select_topk", [0.3, 0.77])
def test_sce_exact_with_variance_ties(tied, select_topk):
    base, models = tied  # four integer task vectors: variances are exact multiples of 1/16, many equal
    out = call("sce", models, base, select_topk=select_topk)
    np.testing.assert_allclose(
        out.numpy(), ref.sce(base.numpy(), np_(models), select_topk), rtol=1e-13, atol=1e-13
    )


@pytest.mark.parametrize("count", [2, 3])
def test_sce_variance_is_the_float64_population_variance_rounded_once(count):
    """Per entry, numpy's population variance across the task vectors in float64, rounded once to
    float32, bit for bit: for two task vectors (the closed form) as for more, over magnitudes from
    1e-30 to 1e30 and edge values (zeros, subnormals, overflow to inf)."""
    rng = np.random.default_rng(5)
    edges = np.array([0.0, -0.0, 1e-45, 3e38, -3e38, 1.0, 1e-30, 1 + 2**-23], dtype=np.float32)
    deltas = [
        np.concatenate(
            [
                rng.standard_normal(4096).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 4096),
                np.roll(edges, i),
            ]
        ).astype(np.float32)
        for i in range(count)
    ]
    with np.errstate(over="ignore"):
        expected = np.var(np.stack(deltas).astype(np.float64), axis=0).astype(np.float32)
    got = sce_variance([torch.from_numpy(delta) for delta in deltas])
    np.testing.assert_array_equal(got.numpy(), expected)


def test_sce_one_model(trio):
    base, models = trio
    # one model has zero variance everywhere: selecting any fraction selects nothing (as mergekit)
    assert torch.equal(call("sce", models[:1], base, select_topk=0.5), base)
    np.testing.assert_allclose(call("sce", models[:1], base).numpy(), models[0].numpy(), atol=1e-15)


def test_sce_small_task_vectors_get_uniform_weights(trio):
    """mergekit's guard: Σ mean(τ̂²) < 1e-6 → uniform weights (an absolute threshold)."""
    base, models = trio
    small = [base + 1e-4 * (m - base) for m in models]
    np.testing.assert_allclose(
        call("sce", small, base, select_topk=0.4).numpy(),
        ref.sce(base.numpy(), np_(small), 0.4),
        rtol=1e-12,
        atol=1e-15,
    )


# ------------------------------------------------------------------------------------------------
# DELLA


@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize(
    "densities,epsilons,normalize,rescale,rescale_l1",
    [
        ([0.5, 0.3, 0.7], [0.1, 0.2, 0.15], True, True, False),
        ([0.5, 0.3, 0.7], [0.1, 0.2, 0.15], False, True, True),
        ([0.4, 1.0, 0.2], [0.3, 0.9, 0.05], True, False, False),
    ],
)
def test_della(trio, method, densities, epsilons, normalize, rescale, rescale_l1):
    base, models = trio
    weights = [0.7, 0.5, -0.3]
    out = call(
        method,
        models,
        base,
        key=(11, "w"),
        weight=weights,
        density=densities,
        epsilon=epsilons,
        normalize=normalize,
        rescale=rescale,
        rescale_l1=rescale_l1,
        **{"lambda": 0.9},
    )
    expected = ref.della(
        base.numpy(),
        np_(models),
        weights,
        densities,
        epsilons,
        draws(models, (11, "w")),
        0.9,
        normalize,
        rescale,
        rescale_l1,
        ties=method == "della",
    )
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(7,), (1,), (3, 1), (4, 5, 6)])
def test_della_ranks_along_dim_1(shape):
    """1-D: one row; a row of one entry keeps with p = density; n-D: ranks along dim 1 (mergekit)."""
    base = rand(*shape, seed=1)
    models = [base + rand(*shape, seed=2), base + rand(*shape, seed=3)]
    out = call(
        "della_linear", models, base, key=(2, "v"), weight=[1.0, 0.5], density=[0.4, 0.6], epsilon=[0.3, 0.1]
    )
    expected = ref.della(
        base.numpy(),
        np_(models),
        [1.0, 0.5],
        [0.4, 0.6],
        [0.3, 0.1],
        draws(models, (2, "v")),
        normalize=False,
        ties=False,
    )
    np.testing.assert_allclose(out.numpy(), expected.reshape(shape), rtol=1e-12, atol=1e-12)


def della_mask(density, epsilon, tau, key=(0, "t")):
    out = call(
        "della_linear",
        [tau],
        torch.zeros_like(tau),
        key=key,
        weight=[1.0],
        density=[density],
        epsilon=[epsilon],
    )
    return out != 0


@pytest.mark.parametrize("density,epsilon", [(0.1, 0.05), (0.3, 0.2), (0.5, 0.45), (0.9, 0.08)])
def test_della_keep_rate_and_ramp_by_rank(density, epsilon):
    rows, m = 256, 1024
    scales = torch.logspace(-3, 1, rows, dtype=torch.float64)[:, None]  # rows of very different sizes
    tau = rand(rows, m, seed=4) * scales
    kept = della_mask(density, epsilon, tau).double()
    n = tau.numel()
    assert abs(kept.mean().item() - density) < 5 * math.sqrt(density * (1 - density) / n)
    # per row (ranks are per row, so tiny and huge rows keep alike)
    assert abs(kept[:32].mean().item() - density) < 0.02 and abs(kept[-32:].mean().item() - density) < 0.02
    # ramp: the keep rate of rank decile q is the mean of density − ε + 2ε·r/(m − 1) over it
    ranks = tau.abs().argsort(dim=1, stable=True).argsort(dim=1)
    for q in range(10):
        in_decile = (ranks >= q * m // 10) & (ranks < (q + 1) * m // 10)
        ranks_mean = ranks[in_decile].double().mean().item()
        expected = density - epsilon + 2 * epsilon * ranks_mean / (m - 1)
        count = int(in_decile.sum())
        assert abs(kept[in_decile].mean().item() - expected) < 5 * math.sqrt(
            expected * (1 - expected) / count
        )


def test_della_rescale_is_unbiased():
    tau = rand(128, 512, seed=7)
    density, epsilon = 0.3, 0.2
    out = call(
        "della_linear",
        [tau],
        torch.zeros_like(tau),
        key=(5, "x"),
        weight=[1.0],
        density=[density],
        epsilon=[epsilon],
    )
    p = torch.from_numpy(ref.magprune_probabilities(tau.numpy(), density, epsilon))
    kept = out != 0
    torch.testing.assert_close(out[kept], tau[kept] / p[kept], rtol=1e-15, atol=0)  # survivors ÷ p
    multiplier = kept.double() / p  # E[keep/p] = 1 per entry: the expected update is τ
    assert abs(multiplier.mean().item() - 1.0) < 5 * (multiplier.std().item() / math.sqrt(tau.numel()))
    # mergekit's variant keeps the L1 norm exactly
    l1 = call(
        "della_linear", [tau], torch.zeros_like(tau), key=(5, "x"), weight=[1.0], density=[density],
        epsilon=[epsilon], rescale_l1=True,
    )  # fmt: skip
    assert torch.equal(l1 != 0, kept)
    assert abs(l1.abs().sum().item() / tau.abs().sum().item() - 1.0) < 1e-12


def test_della_seeding():
    tau = rand(64, 64, seed=8)
    first = della_mask(0.5, 0.2, tau, key=(1, "a"))
    out = call(
        "della",
        [tau, -tau * 0.5],
        torch.zeros_like(tau),
        key=(1, "a"),
        weight=[1.0, 1.0],
        density=[0.5, 0.5],
        epsilon=[0.2, 0.2],
    )
    again = call(
        "della",
        [tau, -tau * 0.5],
        torch.zeros_like(tau),
        key=(1, "a"),
        weight=[1.0, 1.0],
        density=[0.5, 0.5],
        epsilon=[0.2, 0.2],
    )
    assert out.numpy().tobytes() == again.numpy().tobytes()  # same seed, same bytes
    assert torch.equal(first, della_mask(0.5, 0.2, tau, key=(1, "a")))
    assert not torch.equal(first, della_mask(0.5, 0.2, tau, key=(2, "a")))  # another seed
    assert not torch.equal(first, della_mask(0.5, 0.2, tau, key=(1, "b")))  # another tensor


@pytest.mark.parametrize(
    "della_name,dare_name,normalize", [("della", "dare_ties", True), ("della_linear", "dare_linear", False)]
)
def test_della_with_zero_epsilon_is_dare(trio, della_name, dare_name, normalize):
    base, models = trio
    params = dict(weight=[0.7, 0.5, 0.4], density=[0.2, 0.5, 0.8], normalize=normalize)
    della = call(della_name, models, base, key=(9, "t"), epsilon=[0.0] * 3, **params)
    dare = call(dare_name, models, base, key=(9, "t"), **params)
    np.testing.assert_allclose(della.numpy(), dare.numpy(), rtol=1e-13, atol=1e-14)


def test_della_density_and_epsilon_must_stay_inside_unit_interval(trio):
    base, models = trio
    with pytest.raises(ConfigError, match=r"density ± epsilon must lie inside \(0, 1\)"):
        call("della", models[:1], base, weight=[1.0], density=[0.3], epsilon=[0.3])
    with pytest.raises(ConfigError, match="model 0"):
        call("della_linear", models[:1], base, weight=[1.0], density=[0.9], epsilon=[0.1])  # 0.9 + 0.1 ≥ 1
    call("della", models[:1], base, weight=[1.0], density=[1.0], epsilon=[0.9])  # density 1: no pruning
    problems = della_param_problems({"density": (0.5, 0.1, 1.0), "epsilon": (0.1, 0.15, 0.5)})
    assert problems == ["model 1: density ± epsilon must lie inside (0, 1), got density 0.1 and epsilon 0.15"]


# ------------------------------------------------------------------------------------------------
# DARE's and DELLA's uniforms: a counter-based hash of (seed, tensor name, model, flat position)

KEY = (3, "model.layers.0.mlp.up_proj.weight")
DRAWS = 1 << 20


def chi_square_ok(counts) -> bool:
    """χ² of equally likely bins within 5 standard deviations of its mean (the degrees of freedom):
    too uneven fails, and so does too even (a stratified, not random, sequence)."""
    counts = np.asarray(counts, dtype=np.float64).ravel()
    expected = counts.sum() / counts.size
    dof = counts.size - 1
    return abs(((counts - expected) ** 2 / expected).sum() - dof) < 5 * math.sqrt(2 * dof)


def joint_ok(a: np.ndarray, b: np.ndarray) -> bool:
    """Pairs (a_j, b_j) of uniforms look independent: correlation, and χ² on a 32 × 32 grid of their
    top 5 bits and of bits 19 … 23 (the lowest of the 24)."""
    if abs(np.corrcoef(a, b)[0, 1]) >= 5 / math.sqrt(a.size):
        return False
    top = (a * 32).astype(np.int64) * 32 + (b * 32).astype(np.int64)
    ka, kb = (a * 2**24).astype(np.int64), (b * 2**24).astype(np.int64)
    low = (ka % 32) * 32 + kb % 32
    return chi_square_ok(np.bincount(top, minlength=1024)) and chi_square_ok(np.bincount(low, minlength=1024))


@pytest.fixture(params=["numpy", "torch"])
def hash_impl(request, monkeypatch):
    """Both CPU implementations of the hash: numpy uint32 (the default) and torch int64 (what an
    accelerator runs; here on the CPU, so CI without a GPU checks it too)."""
    monkeypatch.setattr(sparsify, "NUMPY_ON_CPU", request.param == "numpy")
    return request.param


@pytest.mark.parametrize("block", [None, 777])
def test_uniforms_match_the_uint32_reference(monkeypatch, hash_impl, block):
    """Both implementations are exactly the uint32 hash: across 2³² boundaries, far positions, and
    where the counter (j mod 2³²) + k0 wraps around 2³² inside a block."""
    if block is not None:
        monkeypatch.setattr(sparsify, "HASH_BLOCK", block)
    k0 = sparsify.segment_key(sparsify.stream_key(KEY, 1), 0)[0]
    k0_far = sparsify.segment_key(sparsify.stream_key(KEY, 1), 5)[0]
    assert 2000 < k0 < (1 << 32) - 2000 and 2000 < k0_far < (1 << 32) - 2000
    for numel, offset in [
        (3000, 0),
        (4000, (1 << 32) - 1500),  # across the first 2³² boundary
        (2000, (1 << 32) - k0 - 1000),  # the counter wraps mid-range
        (2000, (5 << 32) + (1 << 32) - k0_far - 1000),  # likewise in segment 5
        (1000, (1 << 62) + 12345),
    ]:
        got = uniforms(numel, KEY, 1, offset)
        assert got.dtype == torch.float32 and got.device.type == "cpu"
        assert got.numpy().tobytes() == ref.counter_uniforms(numel, *KEY, 1, offset).tobytes(), offset


def test_uniforms_are_multiples_of_2_pow_minus_24_in_unit_interval():
    u = uniforms(DRAWS, KEY, 0)
    assert u.dtype == torch.float32 and torch.all(u >= 0) and torch.all(u < 1)
    scaled = u.double() * 2**24
    assert torch.equal(scaled, scaled.floor())  # exactly k·2⁻²⁴
    k = scaled.long()
    for bit in range(24):  # all 24 bits random: each set half the time
        assert abs(((k >> bit) & 1).double().mean().item() - 0.5) < 5 * 0.5 / math.sqrt(DRAWS), bit


@pytest.mark.parametrize("key,model,offset", [(KEY, 0, 0), ((4, "lm_head.weight"), 2, 0), (KEY, 1, 5 << 32)])
def test_uniforms_are_uniform(key, model, offset):
    u = uniforms(DRAWS, key, model, offset).double().numpy()
    assert chi_square_ok(np.bincount((u * 1024).astype(np.int64), minlength=1024))  # top 10 bits
    assert chi_square_ok(np.bincount((u * 2**24).astype(np.int64) % 1024, minlength=1024))  # low 10
    ordered = np.sort(u)  # Kolmogorov–Smirnov against U[0, 1): critical value at α = 0.001
    steps = np.arange(1, DRAWS + 1) / DRAWS
    assert max((steps - ordered).max(), (ordered - steps + 1 / DRAWS).max()) < 1.95 / math.sqrt(DRAWS)
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / DRAWS)


def test_uniforms_are_independent():
    """Neighbours (lags 1 … 4096: a row apart), other models, seeds, tensors and 2³² segments."""
    u = uniforms(DRAWS + 4096, KEY, 0).double().numpy()
    first = u[:DRAWS]
    for lag in (1, 2, 3, 7, 64, 4096):
        assert joint_ok(first, u[lag : lag + DRAWS]), lag
    others = {
        "model 1": uniforms(DRAWS, KEY, 1),
        "seed 4": uniforms(DRAWS, (4, KEY[1]), 0),
        "another tensor": uniforms(DRAWS, (KEY[0], "model.layers.0.mlp.down_proj.weight"), 0),
        "positions + 2³²": uniforms(DRAWS, KEY, 0, 1 << 32),
    }
    for what, other in others.items():
        assert joint_ok(first, other.double().numpy()), what


def test_positions_beyond_2_pow_32_get_their_own_draws():
    n = 4096
    low = uniforms(n, KEY, 0, 5)
    for high in ((1 << 32) + 5, (7 << 32) + 5, (1 << 62) + 5):
        assert int((uniforms(n, KEY, 0, high) == low).sum()) < 4, high  # equal by chance only (2⁻²⁴)
    across = (1 << 32) - n // 2  # and a range across the boundary is its two halves
    assert torch.equal(
        uniforms(n, KEY, 0, across),
        torch.cat([uniforms(n // 2, KEY, 0, across), uniforms(n // 2, KEY, 0, 1 << 32)]),
    )


def test_uniforms_of_a_chunk_are_those_of_the_whole(monkeypatch, hash_impl):
    whole = uniforms(10_000, KEY, 2, 123)
    cuts = [0, 1, 17, 4096, 4097, 9000, 10_000]
    pieces = [uniforms(b - a, KEY, 2, 123 + a) for a, b in zip(cuts, cuts[1:], strict=False)]
    assert torch.equal(torch.cat(pieces), whole)
    keep = sparsify.keep_mask(10_000, 0.4, KEY, 2, 123)
    assert torch.equal(
        torch.cat(
            [sparsify.keep_mask(b - a, 0.4, KEY, 2, 123 + a) for a, b in zip(cuts, cuts[1:], strict=False)]
        ),
        keep,
    )
    for block in (7, 1000):  # the hash's own blocking does not matter either
        monkeypatch.setattr(sparsify, "HASH_BLOCK", block)
        assert torch.equal(uniforms(10_000, KEY, 2, 123), whole)
        assert torch.equal(sparsify.keep_mask(10_000, 0.4, KEY, 2, 123), keep)
    assert uniforms(0, KEY, 0).shape == (0,) and sparsify.keep_mask(0, 0.5, KEY, 0).shape == (0,)


def test_keep_mask_is_uniforms_below_density(hash_impl):
    """keep_mask decides on the hash, but exactly as torch compares U < density (in float32)."""
    u = uniforms(DRAWS, KEY, 0)
    drawn = u[123].item()  # a density whose float32 is a drawn value, just above and below it
    densities = [0.0, 1e-9, 2**-24, 0.1, 0.3, 1 / 3, 0.5, 0.7, 0.9, 1 - 2**-26, 1.0, 1.5, -0.5, math.nan]
    for density in [*densities, drawn, drawn + 2**-40, drawn - 2**-40]:
        assert torch.equal(sparsify.keep_mask(DRAWS, density, KEY, 0), u < density), density
    assert not sparsify.keep_mask(DRAWS, drawn + 2**-40, KEY, 0)[123]  # float32(density) == U: dropped


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.9])
def test_keep_rate(density):
    kept = sparsify.keep_mask(DRAWS, density, KEY, 1).double().mean().item()
    assert abs(kept - density) < 5 * math.sqrt(density * (1 - density) / DRAWS)


def test_dare_seeding():
    """Same seed, same bytes; another seed, tensor name or model index, another mask."""
    tau = rand(64, 64, seed=8)

    def dropped(key, models=1):
        params = dict(weight=[1.0] * models, density=[0.5] * models, rescale=False)
        return call("dare_linear", [tau] * models, torch.zeros_like(tau), key=key, **params)

    first = dropped((1, "a"))
    assert first.numpy().tobytes() == dropped((1, "a")).numpy().tobytes()
    mask = first != 0
    assert torch.equal(mask, sparsify.keep_mask(tau.numel(), 0.5, (1, "a"), 0).view(tau.shape))
    assert not torch.equal(mask, dropped((2, "a")) != 0)  # another seed
    assert not torch.equal(mask, dropped((1, "b")) != 0)  # another tensor
    both = dropped((1, "a"), models=2)  # model 1's mask is its own: τ·(m0 + m1) takes 0, 1 and 2
    assert {0.0, 1.0, 2.0} <= set((both / tau).unique().tolist())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("block", [None, 1000])
def test_cuda_draws_are_the_cpu_bytes(monkeypatch, block):
    if block is not None:
        monkeypatch.setattr(sparsify, "HASH_BLOCK_DEVICE", block)
    k0 = sparsify.segment_key(sparsify.stream_key(KEY, 1), 0)[0]
    for numel, offset in [
        (DRAWS, 0),
        (5000, (1 << 32) - 2500),
        (2000, (1 << 32) - k0 - 1000),
        (3000, 7 << 32),
    ]:
        cpu = uniforms(numel, KEY, 1, offset)
        gpu = uniforms(numel, KEY, 1, offset, device="cuda")
        assert gpu.device.type == "cuda" and gpu.cpu().numpy().tobytes() == cpu.numpy().tobytes()
        for density in (0.1, 0.7, 1 / 3):
            keep = sparsify.keep_mask(numel, density, KEY, 1, offset, device=torch.device("cuda"))
            assert keep.device.type == "cuda" and torch.equal(keep.cpu(), cpu < density)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):  # the rescale too: 1/0.3 is inexact
        delta = rand(300, 70, seed=9).to(dtype)
        on_cpu = sparsify.dare_drop(delta, 0.3, KEY, 2, offset=11)
        on_gpu = sparsify.dare_drop(delta.cuda(), 0.3, KEY, 2, offset=11)
        assert on_gpu.device.type == "cuda" and on_gpu.dtype == dtype
        assert torch.equal(on_gpu.cpu().view(torch.uint8), on_cpu.view(torch.uint8)), dtype


# ------------------------------------------------------------------------------------------------
# edge cases shared by all methods

DETERMINISTIC = {
    "breadcrumbs": dict(weight=[1.0, 1.0], density=[0.5, 0.5], gamma=[0.1, 0.1]),
    "breadcrumbs_ties": dict(weight=[1.0, 1.0], density=[0.5, 0.5], gamma=[0.1, 0.1], normalize=True),
    "sce": dict(select_topk=0.5),
}
RANDOM = {
    "della": dict(weight=[1.0, 1.0], density=[0.5, 0.5], epsilon=[0.2, 0.2]),
    "della_linear": dict(weight=[1.0, 1.0], density=[0.5, 0.5], epsilon=[0.2, 0.2]),
}
ALL = {**DETERMINISTIC, **RANDOM}


@pytest.mark.parametrize("method", sorted(ALL))
def test_zero_task_vectors_give_base(trio, method):
    base, _ = trio
    assert torch.equal(call(method, [base.clone(), base.clone()], base, **ALL[method]), base)


def reference(method, base, models, params, key=(0, "tensor")):
    """The numpy reference of ``method`` with ``params`` (YAML names, defaults as registered)."""
    b, ms = base.numpy(), np_(models)
    if method == "sce":
        return ref.sce(b, ms, params.get("select_topk", 1.0))
    weights, densities = params["weight"], params["density"]
    if method.startswith("breadcrumbs"):
        return ref.breadcrumbs(
            b, ms, weights, densities, params["gamma"], 1.0, params.get("normalize", False), False,
            ties=method == "breadcrumbs_ties",
        )  # fmt: skip
    ties = method == "della"
    return ref.della(
        b, ms, weights, densities, params["epsilon"], draws(models, key), 1.0, ties, True, False, ties=ties
    )


def first(params, count=1):
    return {k: v[:count] if isinstance(v, list) else v for k, v in params.items()}


@pytest.mark.parametrize("method", sorted(ALL))
def test_one_model(trio, method):
    base, models = trio
    out = call(method, models[:1], base, **first(ALL[method]))
    expected = reference(method, base, models[:1], first(ALL[method]))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", sorted(ALL))
def test_identical_models(trio, method):
    base, models = trio
    twins = [models[0], models[0].clone()]
    out = call(method, twins, base, **ALL[method])
    np.testing.assert_allclose(
        out.numpy(), reference(method, base, twins, ALL[method]), rtol=1e-12, atol=1e-14
    )
    single = call(method, models[:1], base, **first(ALL[method]))
    if method == "breadcrumbs":  # same masks: the update doubles
        torch.testing.assert_close(out - base, 2 * (single - base), rtol=1e-12, atol=1e-14)
    elif method == "breadcrumbs_ties":  # the disjoint mean of two equal vectors is the vector
        torch.testing.assert_close(out, single, rtol=1e-12, atol=1e-14)
    elif method == "sce":  # zero variance everywhere: a fraction selects nothing
        assert torch.equal(out, base)


def dyadic(seed):
    """Multiples of 2⁻¹⁰ below 2⁶: sums and differences of these are exact in float64."""
    return torch.round(rand(40, 30, seed=seed) * 1024) / 1024


@pytest.mark.parametrize("method", sorted(DETERMINISTIC))
def test_opposite_models(method):
    """τ and −τ with equal weights: the linear sum cancels; TIES' election of sign 0 keeps nothing
    (the paper's sgn(0) = 0); SCE elects + on a zero sum (mergekit) and keeps the positive side."""
    base, tau = dyadic(seed=1), dyadic(seed=2)
    opposite = [base + tau, base - tau]  # exact: τ and −τ to the last bit
    out = call(method, opposite, base, **DETERMINISTIC[method])
    tau = tau.numpy()
    if method == "sce":
        expected = ref.sce(base.numpy(), [base.numpy() + tau, base.numpy() - tau], 0.5)
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-15)
        assert np.all((out - base).numpy() >= 0)
    else:
        np.testing.assert_allclose(out.numpy(), base.numpy(), atol=1e-15)


@pytest.mark.parametrize("method", sorted(RANDOM))
def test_della_opposite_models(method):
    """τ and −τ draw their masks independently (per model), so they cancel only where both survive."""
    base, tau = dyadic(seed=1), dyadic(seed=2)
    opposite = [base + tau, base - tau]
    out = call(method, opposite, base, key=(4, "o"), **RANDOM[method])
    expected = ref.della(
        base.numpy(), np_(opposite), [1.0, 1.0], [0.5, 0.5], [0.2, 0.2], draws(opposite, (4, "o")), 1.0,
        method == "della", True, False, ties=method == "della",
    )  # fmt: skip
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_density_one_is_task_arithmetic_or_ties(trio):
    base, models = trio
    weights = [0.9, -0.4, 0.6]
    ta = call("task_arithmetic", models, base, weight=weights, **{"lambda": 0.7})
    full = dict(weight=weights, density=[1.0] * 3, **{"lambda": 0.7})
    torch.testing.assert_close(
        call("breadcrumbs", models, base, gamma=[0.3] * 3, **full), ta, rtol=1e-12, atol=1e-14
    )
    torch.testing.assert_close(
        call("della_linear", models, base, epsilon=[0.5] * 3, **full), ta, rtol=1e-12, atol=1e-14
    )
    ties = call("ties", models, base, normalize=True, **full)
    torch.testing.assert_close(
        call("della", models, base, epsilon=[0.15] * 3, **full), ties, rtol=1e-12, atol=1e-14
    )
    torch.testing.assert_close(
        call("breadcrumbs_ties", models, base, normalize=True, gamma=[0.2] * 3, **full),
        ties,
        rtol=1e-12,
        atol=1e-14,
    )


# ------------------------------------------------------------------------------------------------
# the executor: chunked == whole tensor

EXECUTOR_PARAMS = {
    "breadcrumbs": {"weight": (1.0, 0.5), "density": (0.3, 0.6), "gamma": (0.05, 0.2), "normalize": False,
                    "lambda": 1.1, "rescale": True, "int8_mask": False},
    "breadcrumbs_ties": {"weight": (1.0, 0.5), "density": (0.3, 0.6), "gamma": (0.05, 0.2), "normalize": True,
                         "lambda": 1.0, "rescale": False, "int8_mask": False},
    "della": {"weight": (1.0, 0.5), "density": (0.3, 0.6), "epsilon": (0.2, 0.1), "normalize": True,
              "lambda": 1.0, "rescale": True, "rescale_l1": False, "int8_mask": False},
    "della_linear": {"weight": (1.0, 0.5), "density": (0.3, 0.6), "epsilon": (0.2, 0.1), "normalize": False,
                     "lambda": 0.9, "rescale": True, "rescale_l1": True, "int8_mask": False},
    "sce": {"select_topk": 0.35, "int8_mask": False},
}  # fmt: skip


class InMemory:
    """An input whose stored tensor the test passes in directly (run_op builds inputs from its refs)."""

    refs = (None,)

    def build(self, tensors):
        return tensors[0]


@pytest.mark.parametrize("method_name", sorted(EXECUTOR_PARAMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_equals_whole_tensor(monkeypatch, method_name, dtype):
    method = get_method(method_name)
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(70, 131, generator=generator)
    # quantised deltas: many equal magnitudes and variances, so cuts' ties cross chunk boundaries
    others = [base + torch.randint(-3, 4, base.shape, generator=generator) * 0.01 for _ in range(2)]
    tensors = [t.to(dtype) for t in (base, *others)]
    job = Merge(
        output=TensorSpec("model.layers.0.mlp.up_proj.weight", tuple(base.shape), dtype),
        method=method,
        base=InMemory(),
        models=(InMemory(), InMemory()),
        params=EXECUTOR_PARAMS[method_name],
        compute_dtype=None,
        seed=3,
    )
    monkeypatch.setattr(execute, "CHUNK", 1000)  # many chunks, misaligned with rows and hash blocks
    monkeypatch.setattr(sparsify, "HASH_BLOCK", 4096)  # several hash blocks per chunk and tensor
    monkeypatch.setattr(della_module, "BLOCK", 500)  # DELLA walks several blocks of whole rows
    chunked = execute.run_op(job, tensors)
    on_device = execute.run_op(job, tensors, "cpu", chunked=False)  # the path a GPU takes
    assert torch.equal(chunked, on_device)
    as_float = [t.float() for t in tensors]
    whole = method(as_float[1:], as_float[0], name=job.output.name, seed=job.seed, **job.params).to(dtype)
    assert torch.equal(chunked, whole)
    if method_name.startswith("della"):  # the row blocks do not change the result either
        monkeypatch.setattr(della_module, "BLOCK", 1 << 18)
        assert torch.equal(execute.run_op(job, tensors), whole)


# ------------------------------------------------------------------------------------------------
# parity with mergekit 0.1.5

NUMERICS = {"dtype": "float32", "out_dtype": "bfloat16"}


def parity_configs(family) -> dict[str, dict]:
    base, ft1, ft2, ft3 = (str(p) for p in (family.base, family.ft1, family.ft2, family.ft3))
    three = [
        {"model": ft1, "parameters": {"weight": 1.0, "density": [0.3, 0.8], "gamma": 0.05}},
        {"model": ft2, "parameters": {"weight": [{"filter": "self_attn", "value": 0.9}, {"value": 0.4}]}},
        {
            "model": ft3,
            "parameters": {"weight": [{"filter": "mlp", "value": 0.2}, {"value": 0.7}], "density": 0.45},
        },
    ]
    dense = [
        {"model": ft1, "parameters": {"weight": [0.3, 1.0]}},
        {"model": ft2, "parameters": {"weight": [{"filter": "mlp", "value": 0.5}, {"value": 0.8}]}},
        {"model": ft3, "parameters": {"weight": -0.4}},
    ]
    return {
        "ties": {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {**m, "parameters": {k: v for k, v in m["parameters"].items() if k != "gamma"}} for m in three
            ],
            "parameters": {"density": [{"filter": "mlp", "value": 0.5}, {"value": 0.65}], "normalize": True},
            **NUMERICS,
        },
        "breadcrumbs": {
            "merge_method": "breadcrumbs",
            "base_model": base,
            "models": three,
            "parameters": {"density": 0.7, "gamma": [0.0, 0.1], "lambda": 0.9},
            **NUMERICS,
        },
        "breadcrumbs_ties": {
            "merge_method": "breadcrumbs_ties",
            "base_model": base,
            "models": three,
            "parameters": {
                "density": [{"filter": "mlp", "value": 0.5}, {"value": 0.65}],
                "gamma": 0.02,
                "normalize": True,
                "rescale": True,
            },
            **NUMERICS,
        },
        "sce": {
            "merge_method": "sce",
            "base_model": base,
            "models": [{"model": ft1}, {"model": ft2}, {"model": ft3}],
            "parameters": {"select_topk": [{"filter": "mlp", "value": 0.3}, {"value": [0.5, 0.9]}]},
            **NUMERICS,
        },
        # DELLA draws at random (parity impossible); at density 1 MAGPRUNE keeps everything, which
        # leaves the weighting, normalization, λ and (della) sign election to compare
        "della_dense": {
            "merge_method": "della",
            "base_model": base,
            "models": dense,
            "parameters": {"lambda": [1.0, 0.6], "normalize": True},
            **NUMERICS,
        },
        "della_linear_dense": {
            "merge_method": "della_linear",
            "base_model": base,
            "models": dense,
            "parameters": {"lambda": 1.2, "epsilon": 0.3},
            **NUMERICS,
        },
    }


def merge_ours(config: dict, tmp_path: Path) -> Path:
    out = tmp_path / "ours"
    result = run_cli("merge", write_config(tmp_path / "cfg.yaml", config), out, "--no-progress")
    assert result.exit_code == 0, result.output
    return out


def assert_differs_only_where_sign_election_ties(ours: Path, theirs: Path, base: Path) -> int:
    """Every entry within one rounding step of mergekit's, except where TIES' elected sign is 0
    (Σ w_i τ̂_i = 0 exactly): we leave the base value (the paper's sgn(0) = 0), mergekit elects +.
    Returns how many such entries there were."""
    mine, ref_, base_tensors = load_tensors(ours), load_tensors(theirs), load_tensors(base)
    assert sorted(mine) == sorted(ref_)
    zero_sum = 0
    for name, tensor in mine.items():
        differ = _differing(tensor, ref_[name])
        assert torch.equal(tensor[differ], base_tensors[name][differ].to(tensor.dtype)), name
        zero_sum += int(differ.sum())
    return zero_sum


def _differing(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The entries ``mismatches`` counts (more than one rounding step apart)."""
    x, y = a.double(), b.double()
    tolerance = 2.0**-7 * torch.maximum(x.abs(), y.abs()) + 2.0**-20 * float(y.abs().max())
    return (x - y).abs() > tolerance


@pytest.mark.parametrize(
    "case", ["ties", "breadcrumbs", "breadcrumbs_ties", "sce", "della_dense", "della_linear_dense"]
)
def test_equals_mergekit_with_tie_order_pinned(case, bf16_family, tmp_path):  # noqa: F811  (fixture)
    config = parity_configs(bf16_family)[case]
    ours = merge_ours(config, tmp_path)
    theirs = run_mergekit(config, tmp_path / "mergekit", pin_ties=True)
    if case in ("ties", "breadcrumbs_ties", "della_dense"):
        assert_differs_only_where_sign_election_ties(ours, theirs, bf16_family.base)
    else:
        assert_matches_mergekit(ours, theirs)


def plain_configs(family) -> dict[str, dict]:
    """Scalars and filters only, so the test can recompute every cut position per tensor."""
    base, ft1, ft2, ft3 = (str(p) for p in (family.base, family.ft1, family.ft2, family.ft3))
    return {
        "breadcrumbs": {
            "merge_method": "breadcrumbs",
            "base_model": base,
            "models": [
                {"model": ft1, "parameters": {"weight": 1.0, "density": 0.3, "gamma": 0.05}},
                {"model": ft2, "parameters": {"weight": 0.6}},
                {
                    "model": ft3,
                    "parameters": {
                        "weight": 0.9,
                        "density": [{"filter": "mlp", "value": 0.45}, {"value": 0.6}],
                    },
                },
            ],
            "parameters": {"density": 0.7, "gamma": 0.02, "rescale": True},
            **NUMERICS,
        },
        "sce": {
            "merge_method": "sce",
            "base_model": base,
            "models": [{"model": ft1}, {"model": ft2}, {"model": ft3}],
            "parameters": {"select_topk": [{"filter": "mlp", "value": 0.3}, {"value": 0.6}]},
            **NUMERICS,
        },
    }


def cut_keys(case: str, name: str, taus: list[np.ndarray]) -> list[tuple[np.ndarray, list[int]]]:
    """(ordering key, positions in descending order where a cut falls) per ordering the method uses."""
    n = taus[0].size
    if case == "sce":
        var = np.stack(taus).var(axis=0).astype(np.float32)  # ranked in float32, as both tools do
        k = ref.floor_count(0.3 if "mlp" in name else 0.6, int(np.count_nonzero(var)))
        return [(var, [k - 1, k])]
    densities = [0.3, 0.7, 0.45 if "mlp" in name else 0.6]
    gammas = [0.05, 0.02, 0.02]
    cuts = []
    for tau, density, gamma in zip(taus, densities, gammas, strict=True):
        keep = ref.floor_count(density, n)
        top = min(ref.floor_count(gamma, n), n - keep)
        cuts.append((np.abs(tau), [top - 1, top, top + keep - 1, top + keep]))
    return cuts


@pytest.mark.parametrize("case", ["breadcrumbs", "sce"])
def test_equals_plain_mergekit_except_at_tied_cuts(case, bf16_family, tmp_path):  # noqa: F811  (fixture)
    """Against unmodified mergekit, every entry that differs is tied at a cut: its |τ_i| (breadcrumbs)
    or variance (SCE) equals the value at a cut position, where mergekit's sort picks at random."""
    config = plain_configs(bf16_family)[case]
    ours = merge_ours(config, tmp_path)
    theirs = run_mergekit(config, tmp_path / "mergekit")
    mine, ref_ = load_tensors(ours), load_tensors(theirs)
    inputs = [load_tensors(p) for p in (bf16_family.base, bf16_family.ft1, bf16_family.ft2, bf16_family.ft3)]
    differing = 0
    for name, tensor in mine.items():
        differ = _differing(tensor, ref_[name]).reshape(-1).numpy()
        if not differ.any():
            continue
        differing += int(differ.sum())
        taus = [(m[name].float() - inputs[0][name].float()).reshape(-1).double().numpy() for m in inputs[1:]]
        tied = np.zeros(differ.size, dtype=bool)
        for key, positions in cut_keys(case, name, taus):
            ordered = np.sort(key)[::-1]
            for position in positions:
                if 0 <= position < key.size:
                    tied |= key == ordered[position]
        assert not (differ & ~tied).any(), f"{name}: differs where nothing is tied"
    assert differing < 0.01 * sum(t.numel() for t in mine.values())


def test_della_density_plus_epsilon_outside_unit_interval_is_a_plan_error(llama_family, tmp_path):
    from tests.conftest import run_cli, write_config

    config = {
        "merge_method": "della",
        "base_model": str(llama_family.base),
        "models": [
            {"model": str(llama_family.ft1), "parameters": {"weight": 1.0, "density": 0.9, "epsilon": 0.15}}
        ],
    }
    cfg = write_config(tmp_path / "cfg.yaml", config)
    result = run_cli("validate", cfg)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert (
        result.exit_code == 4
        and errors
        and all("model 0" in line and "epsilon" in line for line in errors[:-1])
    )
    assert not any(tmp_path.glob("*.partial*"))


@pytest.mark.parametrize("outer,m", [(1, 7), (5, 2), (64, 300), (2, 1 << 16), ((1 << 16) + 1, 3)])
def test_magnitude_ranks_of_float32_rows_are_the_stable_order(outer, m):
    """The radix-key path (float32 on the CPU) ranks exactly as a stable argsort of |x| by row:
    equal magnitudes, ±0 and every NaN (any sign or payload, ranked last) by lower column first.
    Ranks are ``by_rank`` of the ramp 0, 1, …, m − 1 (DELLA scatters its probability ramp the same way)."""

    def magnitude_ranks(x: torch.Tensor) -> torch.Tensor:
        return della_module.by_rank(x, torch.arange(x.shape[1]))

    rows = rand(outer, m, seed=9, dtype=torch.float32)
    flat = rows.view(-1)
    flat[::7] = flat[0]  # ties
    flat[1::7] = -flat[0]  # ties across signs
    flat[2::11] = 0.0
    flat[3::13] = -0.0
    flat[4::17] = float("inf")
    flat[5::19] = float("-inf")
    flat[6::23] = float("nan")
    flat.view(torch.int32)[8::29] = -0x3FFFFFF  # NaNs with the sign bit and other payloads
    flat.view(torch.int32)[9::31] = 0x7F800123
    ranks = magnitude_ranks(rows)
    magnitudes = np.abs(rows.numpy())
    expected = np.empty((outer, m), dtype=np.int64)
    for i in range(outer) if outer < 100 else (0, outer // 2, outer - 1):
        order = np.lexsort((np.arange(m), magnitudes[i]))  # numpy sorts NaN last, ties by index
        expected[i, order] = np.arange(m)
        assert np.array_equal(ranks[i].numpy(), expected[i]), i
    # the comparison-sort path (float64 here) agrees on every row
    assert torch.equal(ranks, magnitude_ranks(rows.double()))


def test_della_of_float32_tensors_matches_the_reference():
    """float32 task vectors take the radix-key ranks (the tests above use float64 ones); the zero base
    keeps τ exact, so the reference ranks the same values."""
    base = torch.zeros(48, 96)
    models = [rand(48, 96, seed=2, dtype=torch.float32), rand(48, 96, seed=3, dtype=torch.float32)]
    models[0][:, ::5] = models[0][:, :1]  # tied magnitudes in each row
    models[1][:, 1::5] = -models[1][:, :1]
    out = call("della", models, base, key=(3, "w"), weight=[1.0, 0.7], density=[0.3, 0.5], epsilon=[0.2, 0.1])
    expected = ref.della(
        base.double().numpy(),
        [m.double().numpy() for m in models],
        [1.0, 0.7],
        [0.3, 0.5],
        [0.2, 0.1],
        draws(models, (3, "w")),
        normalize=True,
        ties=True,
    )
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(), (7,), (3, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_compared_equals_torch_comparisons_on_any_shape(shape, dtype):
    """numpy's comparisons (float32/float64 on the CPU) give torch's answers, also on a 0-d tensor
    (where numpy returns a scalar) and for NaN, ±0 and ±inf; other dtypes go through torch."""
    import operator

    from mergebench.methods.selection import compared

    values = torch.randn(shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    special = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), -float("inf"), 0.25, 1.0], dtype=dtype)
    values.view(-1)[: special.numel()] = special[: values.numel()]
    for compare in (operator.gt, operator.ge, operator.eq):
        for value in (0.0, 0.25, 1.0):
            expected = compare(values, value)
            assert torch.equal(compared(values, compare, value), expected)
            assert torch.equal(compared(values, compare, value, as_numbers=True), expected.to(dtype))
    assert torch.equal(sparsify.trim_mask(torch.tensor(0.5), 0.1, -1), torch.tensor(True))


@pytest.mark.parametrize("shape", [(), (7,), (3, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_mask_products_and_divisor_guard_are_torch_bit_for_bit(shape, dtype):
    """``times_mask`` and ``ones_where_zero`` (numpy on float32/float64 CPU tensors) give the bits of
    torch's ``values * mask`` and ``values + (values == 0)``: −0 where a negative entry is dropped,
    NaN and ±inf kept or zeroed alike, ±0 divisors → 1; in place or not."""
    from mergebench.methods.selection import ones_where_zero, times_mask

    generator = torch.Generator().manual_seed(6)
    values = torch.randn(shape, generator=generator).to(dtype)
    special = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), -float("inf"), -2.5, 3.0], dtype=dtype)
    values.view(-1)[: special.numel()] = special[: values.numel()]
    mask = torch.rand(shape, generator=generator) > 0.5
    mask.view(-1)[:2] = torch.tensor([True, False])[: mask.numel()]

    def bits(tensor):
        return tensor.view(
            torch.int16
            if tensor.element_size() == 2
            else torch.int64
            if tensor.element_size() == 8
            else torch.int32
        )

    expected = values * mask
    fresh = times_mask(values, mask, in_place=False)
    assert fresh.data_ptr() != values.data_ptr() and torch.equal(bits(fresh), bits(expected))
    inplace = values.clone()
    assert times_mask(inplace, mask, in_place=True) is inplace and torch.equal(bits(inplace), bits(expected))
    guarded = values.clone()
    assert ones_where_zero(guarded) is guarded
    assert torch.equal(bits(guarded), bits(values + (values == 0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_count_and_band_equals_torch_with_nan_and_inf(dtype):
    """The numpy path counts x > hi as (x ≥ lo) − (lo ≤ x ≤ hi): NaN fails every compare, so it counts
    nowhere, as in torch; ±inf and entries equal to lo or hi land where torch puts them."""
    from mergebench.methods.selection import count_and_band

    values = torch.randn(4099, generator=torch.Generator().manual_seed(8)).abs().to(dtype)
    values[::97] = float("nan")
    values[1::89] = float("inf")
    values[2::83] = 0.5
    values[3::79] = 1.5
    for lo, hi in ((0.5, 1.5), (0.0, 0.0), (1.5, float("inf")), (1.0, 1.0)):
        above, band, where = count_and_band(values, lo, hi)
        inside = ((values >= lo) & (values <= hi)).nonzero().reshape(-1)
        assert above == int((values > hi).sum())
        assert torch.equal(where, inside)
        assert torch.equal(band, values[inside])
