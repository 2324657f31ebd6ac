"""Config parsing and validation: every mistake names the key's path."""

from __future__ import annotations

import numpy as np
import pytest

from mergebench.config import interpolate_gradient, parse_config, resolve_value
from mergebench.errors import ConfigError

BASE = {
    "merge_method": "ties",
    "base_model": "b",
    "models": [{"model": "m1", "parameters": {"weight": 1.0, "density": 0.5}}],
}


def with_(**changes):
    return {**BASE, **changes}


@pytest.mark.parametrize(
    "data,fragment",
    [
        (with_(merge_metod="ties"), "merge_metod: unknown key"),
        (with_(merge_method="tiez"), "unknown method 'tiez'"),
        (
            with_(models=[{"model": "m1", "parameters": {"weight": 1, "densty": 0.5}}]),
            "models[0].parameters.densty: unknown parameter",
        ),
        (
            with_(models=[{"model": "m1", "parameters": {"weight": 1, "density": 0}}]),
            "models[0].parameters.density: must be in (0, 1]",
        ),
        (
            with_(models=[{"model": "m1", "parameters": {"weight": 1, "density": 1.5}}]),
            "density: must be in (0, 1]",
        ),
        (with_(parameters={"density": [0.5, {"filter": "x", "value": 2}]}), "parameters.density"),
        (
            with_(models=[{"model": "m1", "parameters": {"weight": "heavy"}}]),
            "models[0].parameters.weight: expected a number",
        ),
        (
            with_(models=[{"model": "m1", "parameters": {"density": 0.5}}]),
            "models[0].parameters.weight: required",
        ),
        (with_(parameters={"normalize": "yes"}), "parameters.normalize: expected true or false"),
        (
            with_(models=[{"model": "m1", "parameters": {"weight": 1, "lambda": 2}}]),
            "not a per-model parameter",
        ),
        (with_(base_model=None), "base_model: required by merge_method 'ties'"),
        (with_(dtype="float8"), "dtype: unknown dtype 'float8'"),
        (with_(models=[{"modle": "m1"}]), "models[0].modle: unknown key"),
        (with_(models=None), "exactly one of 'models' and 'slices'"),
        (
            {
                "merge_method": "slerp",
                "base_model": "a",
                "parameters": {"t": 0.5},
                "models": [{"model": "a"}, {"model": "b"}, {"model": "c"}],
            },
            "needs exactly 2 models",
        ),
        (
            {"merge_method": "slerp", "base_model": "a", "models": [{"model": "a"}, {"model": "b"}]},
            "parameters.t: required",
        ),
        (
            {
                "merge_method": "slerp",
                "base_model": "a",
                "parameters": {"t": 1.5},
                "models": [{"model": "b"}],
            },
            "parameters.t: must be in [0, 1]",
        ),
        (
            with_(parameters={"density": [{"filter": "mlp", "valu": 0.5}]}),
            "parameters.density[0].valu: unknown key",
        ),
    ],
)
def test_bad_configs_name_the_key(data, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="my.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("my.yaml: ")
    assert fragment in message


def test_valid_config_parses_mergekit_style():
    config = parse_config(
        {
            "merge_method": "slerp",
            "base_model": "a",
            "models": [{"model": "a"}, {"model": "b"}],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0, 0.5, 1]},
                    {"filter": "mlp", "value": 0.2},
                    {"value": 0.5},
                ]
            },
            "dtype": "bfloat16",
        }
    )
    assert config.model_specs() == ["a", "b"]
    t = config.parameters["t"]
    assert resolve_value(t, "model.layers.0.self_attn.q_proj.weight", 0.75) == pytest.approx(0.75)
    assert resolve_value(t, "model.layers.3.mlp.up_proj.weight", 0.75) == 0.2
    assert resolve_value(t, "model.norm.weight", 0.0) == 0.5


def test_filter_without_match_gives_none():
    assert resolve_value([{"filter": "mlp", "value": 1.0}], "model.embed_tokens.weight", 0.0) is None


@pytest.mark.parametrize("points", [[1.0], [0.0, 1.0], [0.2, 0.9, 0.1], [1, 2, 3, 5, 8]])
def test_gradient_matches_piecewise_linear_interpolation(points):
    for position in np.linspace(0, 1, 13):
        expected = np.interp(position, np.linspace(0, 1, len(points)), points)
        assert interpolate_gradient([float(p) for p in points], position) == pytest.approx(expected)
