"""Our merges equal mergekit 0.1.5's for the same YAML (multi-shard bf16 inputs, gradients, filters).

Both sides compute in float32 (``dtype: float32``) and write bf16 (``out_dtype: bfloat16``), so outputs
agree to one bf16 rounding step. mergekit runs from its own venv (tests/mergekit_ref.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli, write_config
from tests.mergekit_ref import assert_matches_mergekit, bf16_family, run_mergekit  # noqa: F401  (fixture)

NUMERICS = {"dtype": "float32", "out_dtype": "bfloat16"}


def configs(family) -> dict[str, dict]:
    base, ft1, ft2, ft3 = (str(p) for p in (family.base, family.ft1, family.ft2, family.ft3))
    weight_gradient_and_filter = [
        {"model": ft1, "parameters": {"weight": [0.2, 0.7, 0.4]}},
        {"model": ft2, "parameters": {"weight": [{"filter": "self_attn", "value": 0.9}, {"value": 0.3}]}},
    ]
    return {
        "linear": {"merge_method": "linear", "models": weight_gradient_and_filter, **NUMERICS},
        "task_arithmetic": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [*weight_gradient_and_filter, {"model": ft3, "parameters": {"weight": -0.5}}],
            "parameters": {"lambda": 0.8},
            **NUMERICS,
        },
        "ties": {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {"model": ft1, "parameters": {"weight": 1.0, "density": [0.3, 0.8]}},
                {"model": ft2, "parameters": {"weight": 0.6, "density": 0.5}},
                {"model": ft3, "parameters": {"weight": [{"filter": "mlp", "value": 0.2}, {"value": 0.9}]}},
            ],
            "parameters": {"density": 0.7, "normalize": True},
            **NUMERICS,
        },
        "slerp": {
            "merge_method": "slerp",
            "base_model": base,
            "models": [{"model": base}, {"model": ft1}],
            "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 0.5, 1.0]}, {"value": 0.3}]},
            **NUMERICS,
        },
        "passthrough_slices": {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": base, "layer_range": [0, 2]}]},
                {"sources": [{"model": ft1, "layer_range": [1, 3]}]},
            ],
            **NUMERICS,
        },
        "slerp_slices": {
            "merge_method": "slerp",
            "base_model": base,
            "slices": [
                {
                    "sources": [
                        {"model": base, "layer_range": [0, 3]},
                        {"model": ft2, "layer_range": [0, 3]},
                    ]
                }
            ],
            "parameters": {"t": [0.1, 0.9]},
            **NUMERICS,
        },
        "slerp_slices_own_base": {
            "merge_method": "slerp",
            "base_model": base,
            "slices": [
                {
                    "base_model": ft1,  # this slice interpolates from ft1, the next from the global base
                    "sources": [
                        {"model": ft1, "layer_range": [0, 2]},
                        {"model": ft2, "layer_range": [0, 2]},
                    ],
                    "residual_weight": 0.5,  # in mergekit's schema, used by neither tool
                },
                {
                    "sources": [
                        {"model": base, "layer_range": [2, 3]},
                        {"model": ft3, "layer_range": [2, 3]},
                    ]
                },
            ],
            "parameters": {"t": 0.4},
            **NUMERICS,
        },
    }


CASES = ["linear", "task_arithmetic", "slerp", "passthrough_slices", "slerp_slices", "slerp_slices_own_base"]


@pytest.mark.parametrize("case", CASES)
def test_equals_mergekit(case: str, bf16_family, tmp_path: Path):  # noqa: F811  (fixture)
    config = configs(bf16_family)[case]
    ours = tmp_path / "ours"
    result = run_cli("merge", write_config(tmp_path / "cfg.yaml", config), ours, "--no-progress")
    assert result.exit_code == 0, result.output
    theirs = run_mergekit(config, tmp_path / "mergekit")
    assert_matches_mergekit(ours, theirs)
