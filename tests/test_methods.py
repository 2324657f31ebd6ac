"""Each merge method against the independent numpy reference in ``reference.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergebench.methods import get_method
from mergebench.methods.selection import streamed_top_k_cuts, top_k_cut, top_k_cuts
from mergebench.methods.sparsify import keep_mask, magnitude_mask, trim_mask
from tests import reference as ref


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def call(method_name, models, base=None, key=(0, "tensor"), **params):
    """Whole-tensor application; parameters by the function's keyword names, ``key`` = (seed, tensor name)."""
    method = get_method(method_name)
    yaml_names = {p.python_name: p.name for p in method.params}
    seed, name = key
    return method(models, base, seed=seed, name=name, **{yaml_names.get(k, k): v for k, v in params.items()})


def np_(*tensors):
    return [t.numpy() for t in tensors]


@pytest.fixture
def trio():
    base = rand(40, 30, seed=1)
    models = [base + 0.1 * rand(40, 30, seed=s) for s in (2, 3, 4)]
    return base, models


@pytest.mark.parametrize("normalize", [True, False])
def test_linear(trio, normalize):
    _, models = trio
    weights = [0.5, 0.3, 0.7]
    out = call("linear", models, weight=weights, normalize=normalize)
    np.testing.assert_allclose(out.numpy(), ref.linear(np_(*models), weights, normalize), rtol=1e-12)


@pytest.mark.parametrize("lam,normalize", [(1.0, False), (0.7, False), (1.3, True)])
def test_task_arithmetic(trio, lam, normalize):
    base, models = trio
    weights = [1.0, -0.5, 0.25]  # a negative weight subtracts that model's behaviour
    out = call("task_arithmetic", models, base, weight=weights, normalize=normalize, lambda_=lam)
    expected = ref.task_arithmetic(base.numpy(), np_(*models), weights, lam, normalize)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_negation_is_exact_subtraction(trio):
    base, models = trio
    out = call("task_arithmetic", models[:1], base, weight=[-1.0], normalize=False, lambda_=1.0)
    np.testing.assert_allclose(out.numpy(), (2 * base - models[0]).numpy(), atol=1e-12)


@pytest.mark.parametrize("densities", [[0.2, 0.5, 0.9], [1.0, 1.0, 1.0], [0.01, 0.3, 1.0]])
@pytest.mark.parametrize("normalize", [True, False])
def test_ties(trio, densities, normalize):
    base, models = trio
    weights = [0.9, -0.4, 0.6]
    out = call("ties", models, base, weight=weights, density=densities, normalize=normalize, lambda_=1.2)
    expected = ref.ties(base.numpy(), np_(*models), weights, densities, 1.2, normalize)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_ties_with_magnitude_ties_and_zero_task_vector():
    base = torch.zeros(10, 10, dtype=torch.float64)
    # integer-valued task vectors: many equal magnitudes straddle the trim threshold
    tied = torch.randint(-2, 3, (10, 10), generator=torch.Generator().manual_seed(5)).double()
    zero = base.clone()  # a finetune identical to the base: all-zero task vector
    models = [base + tied, zero, base - tied.flip(0)]
    weights, densities = [1.0, 1.0, 0.5], [0.3, 0.5, 0.45]
    out = call("ties", models, base, weight=weights, density=densities, normalize=True, lambda_=1.0)
    expected = ref.ties(base.numpy(), np_(*models), weights, densities, 1.0, True)
    np.testing.assert_array_equal(out.numpy(), expected)
    mask = magnitude_mask(tied, 0.3)
    assert int(mask.sum()) == 30  # exactly ⌊density·n⌋, ties notwithstanding


def test_ties_all_zero_task_vectors_give_base(trio):
    base, _ = trio
    out = call(
        "ties",
        [base.clone(), base.clone()],
        base,
        weight=[1.0, 1.0],
        density=[0.5, 0.5],
        normalize=True,
        lambda_=1.0,
    )
    np.testing.assert_array_equal(out.numpy(), base.numpy())


def test_top_k_cut_is_exact_on_large_and_adversarial_inputs():
    n = (1 << 20) + 12345
    values = torch.randn(n, generator=torch.Generator().manual_seed(0)).abs()
    lumpy = torch.cat([torch.zeros(n - 1000), torch.rand(1000, generator=torch.Generator().manual_seed(1))])
    for data in (values, lumpy, torch.ones(n), values.round(decimals=2)):
        for k in (1, 17, n // 5, n // 2, n - 3):
            threshold, cutoff = top_k_cut(data, k)
            assert threshold == torch.sort(data, descending=True).values[k - 1]
            kept = trim_mask(data, threshold, cutoff)
            assert int(kept.sum()) == k
            # ties at the threshold are taken from the lowest indices
            tied = (data == threshold).nonzero().reshape(-1)
            assert torch.equal(kept[tied], torch.arange(tied.numel()) < int(kept[tied].sum()))


def test_several_cuts_in_one_walk_equal_each_cut_alone():
    """``top_k_cuts`` (one sample, one walk for every k: Arcee's quartiles, breadcrumbs' two cuts)
    gives each k the cut ``top_k_cut`` gives it alone, k = 0 and k = n included; where one bracket
    misses, only its cut falls back to the whole tensor."""
    n = (1 << 20) + 12345
    values = torch.randn(n, generator=torch.Generator().manual_seed(4)).abs()
    lumpy = values.round(decimals=1)  # few distinct values: ties at every threshold
    ks = [0, 1, n // 50, n // 5, n // 2, n - 3, n]
    for data in (values, lumpy):
        assert top_k_cuts(data, ks) == [top_k_cut(data, k) for k in ks]
        materialised = []

        def materialize(cut, data=data, materialised=materialised):
            materialised.append(cut)
            return data.clone()

        sample = lambda a, b, s, data=data: data[a:b:s].clone()  # noqa: E731
        got = streamed_top_k_cuts([sample] * len(ks), ks, n, materialize, 70001)
        assert got == [top_k_cut(data, k) for k in ks]
        assert set(materialised) <= {1, 5}  # only the extreme k may miss their brackets


def test_streamed_top_k_cut_equals_the_materialised_cut_for_any_slicing():
    """TIES' thresholds from slices recomputed on demand equal those of the whole tensor, whether the
    sampled bracket holds (no tensor-sized buffer) or misses (a misleading sample: the fallback)."""
    n = (1 << 20) + 12345
    values = torch.randn(n, generator=torch.Generator().manual_seed(0)).abs()
    misleading = torch.ones(n)
    misleading[:: n // (1 << 16)] = 0.0  # every sampled entry is 0, the rest 1: the bracket must miss
    for data, bracket_holds in ((values, True), (values.round(decimals=2), True), (misleading, False)):
        for k in (1, n // 5, n - 3):
            for step in (70001, 1 << 18, n):
                materialised = []

                def materialize(cut, data=data, materialised=materialised):
                    materialised.append(cut)
                    return data.clone()

                (got,) = streamed_top_k_cuts(
                    [lambda a, b, s, data=data: data[a:b:s].clone()], [k], n, materialize, step
                )
                assert got == top_k_cut(data, k), (k, step)
                if k == n // 5:  # (extreme k may fall outside the sampled bracket: the fallback)
                    assert bool(materialised) != bracket_holds


def masks_for(models, densities, key):
    """DARE's documented randomness contract: model i keeps entry j when U_ij < density."""
    return [
        keep_mask(m.numel(), d, key, i).reshape(m.shape).numpy()
        for i, (m, d) in enumerate(zip(models, densities, strict=True))
    ]


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
@pytest.mark.parametrize("normalize", [False, True])
def test_dare(trio, method, normalize):
    base, models = trio
    weights, densities = [0.7, 0.5, -0.3], [0.1, 0.5, 1.0]
    keep = masks_for(models, densities, key=(10, "w"))
    out = call(
        method,
        models,
        base,
        weight=weights,
        density=densities,
        normalize=normalize,
        lambda_=0.9,
        rescale=True,
        key=(10, "w"),
    )
    reference = ref.dare_linear if method == "dare_linear" else ref.dare_ties
    expected = reference(base.numpy(), np_(*models), weights, densities, keep, 0.9, normalize)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_dare_rescale_preserves_expected_update():
    base = torch.zeros(400, 500, dtype=torch.float64)
    tau = torch.ones(400, 500, dtype=torch.float64)
    out = call(
        "dare_linear",
        [base + tau],
        base,
        weight=[1.0],
        density=[0.2],
        normalize=False,
        lambda_=1.0,
        rescale=True,
        key=(3, "w"),
    )
    kept = out != 0
    assert abs(kept.double().mean().item() - 0.2) < 0.01  # keep probability = density
    assert torch.all(out[kept] == 5.0)  # survivors rescaled by 1/density
    assert abs(out.mean().item() - 1.0) < 0.05  # so the expected update is unchanged


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_slerp(t):
    v0, v1 = rand(20, 10, seed=7), rand(20, 10, seed=8)
    out = call("slerp", [v1], v0, t=t)
    np.testing.assert_allclose(out.numpy(), ref.slerp(v0.numpy(), v1.numpy(), t), rtol=1e-10, atol=1e-12)
    if t == 0.0:
        np.testing.assert_array_equal(out.numpy(), v0.numpy())  # t = 0 gives base_model


def test_slerp_keeps_norm_between_orthogonal_unit_vectors():
    v0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    v1 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    out = call("slerp", [v1], v0, t=0.5)
    np.testing.assert_allclose(out.numpy(), [2**-0.5, 2**-0.5], atol=1e-12)


@pytest.mark.parametrize("other_scale", [2.0, -3.0, 0.0])
def test_slerp_parallel_or_zero_falls_back_to_linear(other_scale):
    v0 = rand(8, 8, seed=9)
    v1 = v0 * other_scale
    out = call("slerp", [v1], v0, t=0.25)
    np.testing.assert_allclose(out.numpy(), (0.75 * v0 + 0.25 * v1).numpy(), atol=1e-12)
    assert torch.isfinite(out).all()
