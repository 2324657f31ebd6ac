"""The geometric and other mergekit-parity methods (model_stock, nuslerp, multislerp, karcher, nearswap,
arcee_fusion, ram, ramplus_tl): against the numpy references in ``reference_geometric.py``, on edge cases,
through every executor path, and against mergekit 0.1.5 end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mergebench.execute as execute
from mergebench.errors import ConfigError
from mergebench.io.writer import TensorSpec
from mergebench.methods import get_method
from mergebench.planner import Merge
from tests import reference_geometric as ref
from tests.conftest import run_cli, write_config
from tests.mergekit_ref import (  # noqa: F401  (bf16_family: a fixture)
    assert_matches_mergekit,
    bf16_family,
    load_tensors,
    mismatches,
    run_mergekit,
)


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def call(name: str, models, base=None, **params) -> torch.Tensor:
    """Whole-tensor application, parameters by YAML name."""
    return get_method(name)(list(models), base, **params)


def np_(tensors) -> list[np.ndarray]:
    return [t.numpy() for t in tensors]


def close(out: torch.Tensor, expected: np.ndarray, tol: float = 1e-10) -> None:
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.numpy(), expected, rtol=tol, atol=tol)


def family(shape=(24, 40), k=3, scale=0.1, seed=1):
    """A base and k models near it, on a 2⁻¹² grid: sums and differences such as 2·base − model (the
    opposite task vector) are exact."""
    grid = 2.0**12
    base = (rand(*shape, seed=seed) * grid).round() / grid
    return base, [base + (scale * rand(*shape, seed=seed + 1 + i) * grid).round() / grid for i in range(k)]


# ---------------------------------------------------------------------------------------------------
# model_stock


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("shape", [(24, 40), (6, 5, 7), (50,)])
def test_model_stock(k, filter_wise, shape):
    base, models = family(shape, k)
    out = call("model_stock", models, base, filter_wise=filter_wise)
    close(out, ref.model_stock(base.numpy(), np_(models), filter_wise))


def test_model_stock_ratio_from_the_paper():
    """Two task vectors at 60° (cos = 1/2): t = 2·½ / (1 + ½) = 2/3 of the way to their average."""
    base = torch.zeros(2, dtype=torch.float64)
    models = [
        torch.tensor([1.0, 0.0], dtype=torch.float64),
        torch.tensor([0.5, 3**0.5 / 2], dtype=torch.float64),
    ]
    out = call("model_stock", models, base)
    close(out, (2 / 3) * (models[0] + models[1]).numpy() / 2)


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_edge_cases(filter_wise):
    base, (a, b, c) = family((8, 9), 3)
    # identical finetunes: cos = 1, t = 1, the finetune itself
    close(call("model_stock", [a, a.clone()], base, filter_wise=filter_wise), a.numpy())
    # opposite task vectors, k = 2: 1 + cos θ = 0, no finite ratio: the base
    opposite = 2 * base - a
    close(call("model_stock", [a, opposite], base, filter_wise=filter_wise), base.numpy())
    # a zero task vector has cosine 0 with the other: k = 2 gives t = 0, the base
    close(call("model_stock", [base.clone(), b], base, filter_wise=filter_wise), base.numpy())
    # all task vectors zero: the base, no NaN
    close(call("model_stock", [base.clone()] * 3, base, filter_wise=filter_wise), base.numpy())
    # k = 3 with one zero task vector, against the reference
    models = [a, base.clone(), c]
    close(
        call("model_stock", models, base, filter_wise=filter_wise),
        ref.model_stock(base.numpy(), np_(models), filter_wise),
    )


def test_model_stock_filter_wise_rows_differ():
    base, (a, b) = family((4, 30), 2)
    b = b.clone()
    b[0] = base[0] + (a[0] - base[0])  # row 0: identical task vectors (t = 1); other rows: t < 1
    out = call("model_stock", [a, b], base, filter_wise=True)
    close(out[0], a[0].numpy())
    assert not torch.allclose(out[1:], ((a + b) / 2)[1:])


def test_model_stock_needs_two_finetunes():
    base, (a,) = family((4, 5), 1)
    with pytest.raises(ConfigError, match="at least 2 models"):
        call("model_stock", [a], base)


# ---------------------------------------------------------------------------------------------------
# nuslerp


@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("row_wise,flatten", [(False, True), (True, True), (False, False), (True, False)])
@pytest.mark.parametrize("shape", [(12, 20), (5, 4, 6), (30,)])
def test_nuslerp(with_base, row_wise, flatten, shape):
    base, models = family(shape, 2, scale=0.5)
    weights = [0.3, 0.9]
    out = call(
        "nuslerp",
        models,
        base if with_base else None,
        weight=weights,
        nuslerp_row_wise=row_wise,
        nuslerp_flatten=flatten,
    )
    expected = ref.nuslerp(np_(models), base.numpy() if with_base else None, weights, row_wise, flatten)
    close(out, expected)


@pytest.mark.parametrize("flatten", [True, False])
def test_nuslerp_edge_cases(flatten):
    base, (a, b) = family((6, 10), 2)
    kw = {"nuslerp_flatten": flatten}
    # weights decide t = w_2 / (w_1 + w_2): all weight on one model gives that model
    close(call("nuslerp", [a, b], base, weight=[1.0, 0.0], **kw), a.numpy())
    close(call("nuslerp", [a, b], base, weight=[0.0, 2.0], **kw), b.numpy())
    # identical models: the model; opposite task vectors: linear, (1 − t)τ_1 + tτ_2
    close(call("nuslerp", [a, a.clone()], base, weight=[0.4, 0.6], **kw), a.numpy())
    opposite = 2 * base - a
    out = call("nuslerp", [a, opposite], base, weight=[0.25, 0.75], **kw)
    close(out, (base + 0.25 * (a - base) - 0.75 * (a - base)).numpy())
    # weights summing to 0: t = 0.5; a zero task vector: cosine 0 (θ = π/2), as mergekit
    for models, weights in (
        ([a, b], [1.0, -1.0]),
        ([base.clone(), b], [0.5, 0.5]),
        ([base.clone()] * 2, [1, 1]),
    ):
        out = call("nuslerp", models, base, weight=weights, **kw)
        close(out, ref.nuslerp(np_(models), base.numpy(), weights, False, flatten))


def test_nuslerp_keeps_norm_between_orthogonal_unit_vectors():
    v0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    v1 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    close(call("nuslerp", [v0, v1], weight=[1.0, 1.0]), np.array([2**-0.5, 2**-0.5]))


# ---------------------------------------------------------------------------------------------------
# multislerp


@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("normalize_weights", [True, False])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_multislerp(with_base, normalize_weights, k):
    base, models = family((16, 9), k, scale=0.7)
    weights = [0.5, 0.2, 0.9, 0.4][:k]
    b = base if with_base else None
    out = call("multislerp", models, b, weight=weights, normalize_weights=normalize_weights)
    expected = ref.multislerp(np_(models), b.numpy() if with_base else None, weights, normalize_weights)
    close(out, expected)


def test_multislerp_closed_form_keeps_eps_exactly():
    """A large eps shows every place it enters mergekit's algorithm (norm floor and exp map)."""
    base, models = family((10, 10), 3)
    out = call("multislerp", models, base, weight=[1.0, 2.0, 3.0], eps=0.3)
    close(out, ref.multislerp(np_(models), base.numpy(), [1.0, 2.0, 3.0], True, 0.3))


def test_multislerp_edge_cases():
    base, (a, b, c) = family((7, 11), 3)
    # one model: itself, weights and base aside
    close(call("multislerp", [a], base, weight=[0.3]), a.numpy())
    # identical models: the model
    close(call("multislerp", [a, a.clone(), a.clone()], base, weight=[1, 2, 3]), a.numpy())
    # opposite task vectors with equal weights: m = 0, the weighted sum (mergekit's two-model fallback)
    out = call("multislerp", [a, 2 * base - a], base, weight=[1.0, 1.0])
    close(out, base.numpy())
    # all task vectors zero: the base, no NaN (mergekit raises for three models; we fall back too)
    close(call("multislerp", [base.clone()] * 3, base, weight=[1, 1, 1]), base.numpy())
    # one zero task vector among others, against mergekit's algorithm
    models = [a, base.clone(), c]
    close(
        call("multislerp", models, base, weight=[1, 1, 1]),
        ref.multislerp(np_(models), base.numpy(), [1, 1, 1]),
    )
    # eps = 0 with a zero task vector: its unit vector is 0, no NaN
    out = call("multislerp", [a, base.clone()], base, weight=[1, 1], eps=0.0)
    close(out, ref.multislerp(np_([a, base]), base.numpy(), [1, 1], True, 1e-300))
    close(call("multislerp", [a, 2 * base - a], base, weight=[1, 1], eps=0.0), base.numpy())
    with pytest.raises(ConfigError, match="sum to 0"):
        call("multislerp", [a, b], base, weight=[1.0, -1.0])


def test_multislerp_nearly_opposite_task_vectors_sum_entry_by_entry():
    """m nearly cancels (‖m‖² ~1e-8 of Σ s_i²‖τ_i‖²): read off the Gram matrix, ‖m‖ would keep only
    ~8 digits; summed entry by entry (the fallback below CANCELLATION_FLOOR) it matches the reference."""
    base, (a, nudge) = family((16, 9), 2)
    models = [a, 2 * base - a + 1e-4 * (nudge - base)]
    expected = ref.multislerp(np_(models), base.numpy(), [1.0, 1.0])
    close(call("multislerp", models, base, weight=[1.0, 1.0]), expected)


# ---------------------------------------------------------------------------------------------------
# karcher


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("max_iter,tol", [(10, 1e-5), (3, 1e-5), (50, 1e-12), (0, 1e-5)])
def test_karcher(k, with_base, max_iter, tol):
    base, models = family((9, 13), k, scale=0.8)
    b = base if with_base else None
    out = call("karcher", models, b, max_iter=max_iter, tol=tol)
    points = np_(models) + ([base.numpy()] if with_base else [])
    close(out, ref.karcher(points, max_iter, tol), tol=1e-9)


def test_karcher_is_the_spherical_mean():
    """Unit vectors at ±30° from e_1 in a plane: the Karcher mean is e_1, not the chord midpoint's norm."""
    angle = np.pi / 6
    a = torch.tensor([np.cos(angle), np.sin(angle), 0.0], dtype=torch.float64)
    b = torch.tensor([np.cos(angle), -np.sin(angle), 0.0], dtype=torch.float64)
    close(call("karcher", [2 * a, 2 * b], max_iter=50, tol=1e-12), np.array([2.0, 0.0, 0.0]))


def test_karcher_edge_cases():
    _, (a, b) = family((5, 6), 2)
    close(call("karcher", [a]), a.numpy())  # one model: itself
    close(call("karcher", [a, a.clone(), a.clone()]), a.numpy())  # identical: the model
    close(call("karcher", [a, -a]), a.numpy())  # antipodal: no mean direction; mergekit keeps the first
    zero = torch.zeros_like(a)
    close(call("karcher", [zero, zero.clone()]), zero.numpy())  # all zero: zeros
    close(call("karcher", [a, zero]), ref.karcher([a.numpy(), zero.numpy()]))  # zero: norm only
    close(call("karcher", [a, b], tol=0.0), ref.karcher([a.numpy(), b.numpy()], 10, 0.0))  # no 0/0


# ---------------------------------------------------------------------------------------------------
# nearswap, arcee_fusion, ram, ramplus_tl


@pytest.mark.parametrize("t", [0.0, 0.01, 0.05, 0.3, 10.0])
def test_nearswap(t):
    base, (other,) = family((20, 17), 1)
    out = call("nearswap", [other], base, t=t)
    close(out, ref.nearswap(base.numpy(), other.numpy(), t))


def test_nearswap_takes_near_values_and_moves_by_t_elsewhere():
    base = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    other = torch.tensor([0.05, -0.5, 0.0, 3.0], dtype=torch.float64)
    out = call("nearswap", [other], base, t=0.1)
    close(out, np.array([0.05, -0.1, 0.0, 1.1]))


@pytest.mark.parametrize("shape", [(30, 16), (2, 7, 9), (64,), (1001,)])
def test_arcee_fusion(shape):
    base, (other,) = family(shape, 1, scale=0.5)
    out = call("arcee_fusion", [other], base)
    expected = ref.arcee_fusion(base.numpy(), other.numpy())
    close(out, expected)
    kept = (out != base).double().mean().item()
    assert 0 < kept < 0.5  # only the outliers of importance


def test_arcee_fusion_quantiles_of_large_tensors_are_exact():
    """Above 2^20 entries the quartiles come from the sampled bracket of top_k_cut, not kthvalue:
    they must still be exactly the sorted values at ⌊q·(n − 1)⌋, ties included."""
    from mergebench.methods.arcee_fusion import order_statistics

    n = (1 << 20) + 777
    generator = torch.Generator().manual_seed(3)
    smooth = torch.rand(n, generator=generator) * torch.rand(n, generator=generator)
    for values in (smooth, smooth.round(decimals=2), torch.zeros(n)):
        ordered = torch.sort(values).values
        ks = [0, (n - 1) // 4, (n - 1) // 2, 3 * (n - 1) // 4, n - 1]
        assert order_statistics(values, ks) == [float(ordered[k]) for k in ks]


def test_arcee_fusion_edge_cases():
    base, (other,) = family((6, 8), 1)
    close(call("arcee_fusion", [base.clone()], base), base.numpy())  # no change: the base
    one = torch.tensor([2.0], dtype=torch.float64)
    close(call("arcee_fusion", [one], torch.tensor([1.0], dtype=torch.float64)), np.array([2.0]))


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("epsilon", [1e-5, 0.05, 0.15])
def test_ram(k, epsilon):
    base, models = family((25, 14), k)
    close(call("ram", models, base, epsilon=epsilon), ref.ram(base.numpy(), np_(models), epsilon))


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize(
    "r,alpha,epsilon", [(0.1, 0.2, 1e-5), (0.5, 0.8, 0.08), (1.0, 5.0, 0.15), (0.3, -0.1, 0.1)]
)
def test_ramplus_tl(k, r, alpha, epsilon):
    base, models = family((25, 14), k)
    out = call("ramplus_tl", models, base, r=r, alpha=alpha, epsilon=epsilon)
    close(out, ref.ramplus_tl(base.numpy(), np_(models), r, alpha, epsilon))


def test_ram_disjoint_and_overlapping_changes():
    base = torch.zeros(4, dtype=torch.float64)
    a = torch.tensor([1.0, 0.0, 2.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 3.0, 4.0, 0.0], dtype=torch.float64)
    close(call("ram", [a, b], base), np.array([1.0, 3.0, 3.0, 0.0]))  # unique whole, shared averaged
    # each model shares 1 entry and owns 1: ρ = 1, λ = 1 + 0.5·min(1, 0.4) = 1.2 on unique entries
    close(call("ramplus_tl", [a, b], base, r=0.5, alpha=0.4), np.array([1.2, 3.6, 3.0, 0.0]))
    # zero task vectors: the base
    close(call("ramplus_tl", [base.clone(), base.clone()], base), base.numpy())


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("epsilon", [0.5, 1.0, 1.5])  # 1.0: |τ| = ε is not a change
def test_ramplus_overlap_counts_numpy_and_torch_paths(k, epsilon):
    """RAM+'s per-slice counts: the numpy path (CPU float32/64) and the torch path (any other tensor,
    e.g. on a GPU; float16 here) both equal a direct count. Integer values keep τ exact in every dtype."""
    from mergebench.methods.ram import overlap_counts

    def ints(seed: int) -> torch.Tensor:
        return torch.randint(-3, 4, (5003,), generator=torch.Generator().manual_seed(seed)).double()

    base, models = ints(0), [ints(i + 1) for i in range(k)]
    masks = [np.abs(m.numpy() - base.numpy()) > epsilon for m in models]
    n = np.sum(masks, axis=0)
    expected = ([int((m & (n > 1)).sum()) for m in masks], [int((m & (n == 1)).sum()) for m in masks])
    for dtype in (torch.float32, torch.float64, torch.float16):
        counted = overlap_counts([m.to(dtype) for m in models], base.to(dtype), epsilon)
        assert counted == expected, dtype


# ---------------------------------------------------------------------------------------------------
# executor paths: chunked == whole tensor == method(...)

EXECUTOR_CASES = {
    "model_stock": (True, 3, {}, {"filter_wise": False}),
    "model_stock/filter_wise": (True, 3, {}, {"filter_wise": True}),
    "model_stock/k2": (True, 2, {}, {"filter_wise": True}),
    "nuslerp": (True, 2, {"weight": (0.3, 0.8)}, {"nuslerp_row_wise": False, "nuslerp_flatten": True}),
    "nuslerp/rows": (True, 2, {"weight": (0.3, 0.8)}, {"nuslerp_row_wise": False, "nuslerp_flatten": False}),
    "nuslerp/columns": (
        True,
        2,
        {"weight": (0.6, 0.2)},
        {"nuslerp_row_wise": True, "nuslerp_flatten": False},
    ),
    "nuslerp/no_base": (
        False,
        2,
        {"weight": (0.3, 0.8)},
        {"nuslerp_row_wise": True, "nuslerp_flatten": False},
    ),
    "multislerp": (True, 3, {"weight": (0.3, 0.8, 0.5)}, {"normalize_weights": True, "eps": 1e-8}),
    "multislerp/no_base": (False, 3, {"weight": (0.3, 0.8, 0.5)}, {"normalize_weights": False, "eps": 1e-8}),
    "karcher": (False, 3, {}, {"max_iter": 10, "tol": 1e-5}),
    "karcher/base": (True, 2, {}, {"max_iter": 10, "tol": 1e-5}),
    "nearswap": (True, 1, {}, {"t": 0.02}),
    "arcee_fusion": (True, 1, {}, {}),
    "ram": (True, 3, {}, {"epsilon": 0.01}),
    "ramplus_tl": (True, 3, {}, {"r": 0.5, "alpha": 0.3, "epsilon": 0.01}),
}


class InMemory:
    """An input whose stored tensor the test passes in directly."""

    refs = (None,)

    def build(self, tensors):
        return tensors[0]


def executor_job(case: str, shape: tuple[int, ...], dtype: torch.dtype):
    with_base, k, model_params, global_params = EXECUTOR_CASES[case]
    method = get_method(case.split("/")[0])
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(*shape, generator=generator)
    # quantised deltas: ties at RAM's ε and in arcee_fusion's importance cross chunk boundaries
    others = [base + torch.randint(-3, 4, shape, generator=generator) * 0.01 for _ in range(k)]
    tensors = [t.to(dtype) for t in ([base, *others] if with_base else others)]
    job = Merge(
        output=TensorSpec("model.layers.0.mlp.up_proj.weight", shape, dtype),
        method=method,
        base=InMemory() if with_base else None,
        models=(InMemory(),) * k,
        params={**model_params, **global_params},
        compute_dtype=None,
        seed=3,
    )
    return job, tensors, with_base


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a, b) or torch.allclose(a.float(), b.float(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", sorted(EXECUTOR_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(70, 131), (9, 40, 23)])
def test_executor_paths_agree(monkeypatch, case, dtype, shape):
    job, tensors, with_base = executor_job(case, shape, dtype)
    method = job.method
    monkeypatch.setattr(execute, "CHUNK", 1000)  # many chunks, misaligned with rows and columns
    whole_path = execute.run_op(job, tensors, "cpu", chunked=False)
    as_float = [t.float() for t in tensors]
    reference = method(
        as_float[1:] if with_base else as_float,
        as_float[0] if with_base else None,
        name=job.output.name,
        seed=job.seed,
        **job.params,
    ).to(dtype)
    assert same(whole_path, reference)
    if method.elementwise:
        chunked = execute.run_op(job, tensors)
        assert same(chunked, whole_path)
        assert same(chunked, reference)


# ---------------------------------------------------------------------------------------------------
# parity with mergekit 0.1.5

NUMERICS = {"dtype": "float32", "out_dtype": "bfloat16"}


def parity_configs(fam) -> dict[str, dict]:
    base, ft1, ft2, ft3 = (str(p) for p in (fam.base, fam.ft1, fam.ft2, fam.ft3))
    three = [{"model": ft1}, {"model": ft2}, {"model": ft3}]
    weighted = [
        {"model": ft1, "parameters": {"weight": [0.2, 0.7, 0.4]}},
        {"model": ft2, "parameters": {"weight": [{"filter": "self_attn", "value": 0.9}, {"value": 0.3}]}},
    ]
    return {
        "model_stock": {
            "merge_method": "model_stock",
            "base_model": base,
            "models": three,
            "parameters": {"filter_wise": [{"filter": "mlp", "value": True}, {"value": False}]},
        },
        "model_stock_k2_filter_wise": {
            "merge_method": "model_stock",
            "base_model": base,
            "models": [{"model": base}, {"model": ft1}, {"model": ft3}],
            "parameters": {"filter_wise": True},
        },
        "nuslerp": {
            "merge_method": "nuslerp",
            "base_model": base,
            "models": weighted,
            "parameters": {
                "nuslerp_flatten": [{"filter": "self_attn", "value": False}, {"value": True}],
                "nuslerp_row_wise": [{"filter": "k_proj", "value": True}, {"value": False}],
            },
        },
        "nuslerp_no_base": {
            "merge_method": "nuslerp",
            "models": weighted,
            "parameters": {
                "nuslerp_flatten": False,
                "nuslerp_row_wise": [{"filter": "mlp", "value": True}, {"value": False}],
            },
        },
        "multislerp": {
            "merge_method": "multislerp",
            "base_model": base,
            "models": [*weighted, {"model": ft3, "parameters": {"weight": 0.5}}],
        },
        "multislerp_no_base": {
            "merge_method": "multislerp",
            "models": [*weighted, {"model": base, "parameters": {"weight": [0.1, 0.6]}}],
            "parameters": {"normalize_weights": False},
        },
        "karcher": {
            "merge_method": "karcher",
            "models": three,
            "parameters": {"max_iter": [{"filter": "mlp", "value": 3}, {"value": 10}], "tol": 1e-6},
        },
        "karcher_base": {"merge_method": "karcher", "base_model": base, "models": three[:2]},
        "nearswap": {
            "merge_method": "nearswap",
            "base_model": base,
            "models": [{"model": base}, {"model": ft2}],
            "parameters": {"t": [{"filter": "self_attn", "value": [0.001, 0.02]}, {"value": 0.01}]},
        },
        "arcee_fusion": {"merge_method": "arcee_fusion", "base_model": base, "models": [{"model": ft1}]},
        "ram": {
            "merge_method": "ram",
            "base_model": base,
            "models": three,
            "parameters": {"epsilon": [{"filter": "mlp", "value": 0.03}, {"value": [0.005, 0.02]}]},
        },
        "ramplus_tl": {
            "merge_method": "ramplus_tl",
            "base_model": base,
            "models": three,
            "parameters": {
                "epsilon": 0.02,
                "r": [0.2, 0.9],
                "alpha": [{"filter": "self_attn", "value": 0.5}, {"value": 0.1}],
            },
        },
    }


PARITY_CASES = [
    "model_stock",
    "model_stock_k2_filter_wise",
    "nuslerp",
    "nuslerp_no_base",
    "multislerp",
    "multislerp_no_base",
    "karcher",
    "karcher_base",
    "nearswap",
    "arcee_fusion",
    "ram",
    "ramplus_tl",
]


def largest_difference(ours: Path, theirs: Path) -> tuple[float, int]:
    """(max |ours − mergekit| over all tensors, entries beyond one rounding step), for the report."""
    mine, other = load_tensors(ours), load_tensors(theirs)
    diff = max(float((t.double() - other[n].double()).abs().max()) for n, t in mine.items() if t.numel())
    return diff, sum(mismatches(t, other[n]) for n, t in mine.items())


@pytest.mark.parametrize("case", PARITY_CASES)
def test_equals_mergekit(case: str, bf16_family, tmp_path: Path):  # noqa: F811  (fixture)
    config = {**parity_configs(bf16_family)[case], **NUMERICS}
    ours = tmp_path / "ours"
    result = run_cli("merge", write_config(tmp_path / "cfg.yaml", config), ours, "--no-progress")
    assert result.exit_code == 0, result.output
    theirs = run_mergekit(config, tmp_path / "mergekit")
    diff, beyond = largest_difference(ours, theirs)
    print(f"PARITY {case}: max |diff| {diff:.3g}, {beyond} entries beyond one bf16 step")
    assert_matches_mergekit(ours, theirs)
