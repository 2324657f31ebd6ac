"""Search spaces: range specs found anywhere a scalar may be, named by their config path, turned into
concrete configs that parse_config accepts; bad specs are ConfigErrors naming the path."""

from __future__ import annotations

import math

import pytest
import yaml

from mergebench.config import parse_config
from mergebench.errors import ConfigError
from mergebench.search_space import load_space, parse_space, path_text


class FixedTrial:
    """A stand-in for an Optuna trial: returns preset values and records each suggest call."""

    def __init__(self, values: dict):
        self.values = values
        self.calls: list[tuple] = []

    def suggest_float(self, name, low, high, *, step=None, log=False):
        self.calls.append(("float", name, low, high, step, log))
        return self.values.get(name, low)

    def suggest_int(self, name, low, high, *, step=1, log=False):
        self.calls.append(("int", name, low, high, step, log))
        return self.values.get(name, low)

    def suggest_categorical(self, name, choices):
        self.calls.append(("choice", name, tuple(choices)))
        return self.values.get(name, choices[0])


def space(text: str):
    return parse_space(yaml.safe_load(text), source="space.yaml")


EVERY_KIND = """
merge_method: ties
base_model: base
models:
  - model: a
    parameters:
      weight: {min: 0, max: 1}
      density: {min: 0.2, max: 1.0, step: 0.2}
  - model: b
    parameters:
      weight: [0.0, {min: 0.1, max: 0.9}, 1.0]
      density: [{filter: mlp, value: {min: 0.5, max: 1.0}}, {value: 0.7}]
parameters:
  lambda: {min: 0.01, max: 4, log: true}
  normalize: {choices: [true, false]}
seed: {min: 0, max: 100, step: 10}
dtype: {choices: [float32, bfloat16]}
"""


def test_every_kind_of_range_is_found_named_and_typed():
    s = space(EVERY_KIND)
    kinds = {r.name: (r.kind, r.low, r.high, r.log, r.step, r.choices) for r in s.ranges}
    assert kinds == {
        # under `parameters` integer bounds still sample floats: {min: 0, max: 1} is not "0 or 1"
        "models[0].parameters.weight": ("float", 0, 1, False, None, ()),
        "models[0].parameters.density": ("float", 0.2, 1.0, False, 0.2, ()),
        "models[1].parameters.weight[1]": ("float", 0.1, 0.9, False, None, ()),
        "models[1].parameters.density[0].value": ("float", 0.5, 1.0, False, None, ()),
        "parameters.lambda": ("float", 0.01, 4, True, None, ()),
        "parameters.normalize": ("choice", 0, 0, False, None, (True, False)),
        "seed": ("int", 0, 100, False, 10, ()),  # outside `parameters`, integers stay integers
        "dtype": ("choice", 0, 0, False, None, ("float32", "bfloat16")),
    }
    assert [r.name for r in s.ranges][0] == "models[0].parameters.weight"  # file order
    mid = s.midpoint_values()
    assert mid["models[0].parameters.weight"] == 0.5
    assert mid["models[0].parameters.density"] == pytest.approx(0.6)  # snapped to the step grid
    assert mid["parameters.lambda"] == pytest.approx(math.sqrt(0.04))  # geometric middle of a log range
    assert mid["seed"] == 50 and isinstance(mid["seed"], int)
    assert mid["dtype"] == "float32"  # a choice's midpoint is its first choice


def test_sample_gives_a_concrete_config_that_parses():
    s = space(EVERY_KIND)
    trial = FixedTrial(
        {
            "models[0].parameters.weight": 0.25,
            "models[0].parameters.density": 0.4,
            "models[1].parameters.weight[1]": 0.3,
            "models[1].parameters.density[0].value": 0.9,
            "parameters.lambda": 0.5,
            "parameters.normalize": False,
            "seed": 30,
            "dtype": "bfloat16",
        }
    )
    values, config = s.sample(trial)
    assert config == {
        "merge_method": "ties",
        "base_model": "base",
        "models": [
            {"model": "a", "parameters": {"weight": 0.25, "density": 0.4}},
            {
                "model": "b",
                "parameters": {
                    "weight": [0.0, 0.3, 1.0],
                    "density": [{"filter": "mlp", "value": 0.9}, {"value": 0.7}],
                },
            },
        ],
        "parameters": {"lambda": 0.5, "normalize": False},
        "seed": 30,
        "dtype": "bfloat16",
    }
    assert values == trial.values
    parse_config(config)  # the concrete config is a plain merge config
    assert ("float", "parameters.lambda", 0.01, 4.0, None, True) in trial.calls
    assert ("int", "seed", 0, 100, 10, False) in trial.calls
    assert ("float", "models[0].parameters.density", 0.2, 1.0, 0.2, False) in trial.calls
    # the template is untouched: the next trial starts from the ranges again
    assert s.template["models"][0]["parameters"]["weight"] == {"min": 0, "max": 1}


def test_method_choice_drops_parameters_the_method_does_not_declare():
    s = space(
        """
merge_method: {choices: [ties, task_arithmetic, linear]}
base_model: base
models:
  - {model: base, parameters: {weight: 0.2}}
  - model: a
    parameters: {weight: {min: 0.1, max: 1}, density: {min: 0.1, max: 1}}
  - model: b
    parameters: {weight: 0.5, density: [{filter: mlp, value: {min: 0.1, max: 1}}, {value: 0.5}]}
parameters:
  lambda: {min: 0.5, max: 1.5}
  normalize: true
"""
    )
    assert s.method_range is not None and s.method_range.choices == ("ties", "task_arithmetic", "linear")
    density = {"models[1].parameters.density", "models[2].parameters.density[0].value"}
    assert density <= {r.name for r in s.active_ranges("ties")}
    assert not density & {r.name for r in s.active_ranges("task_arithmetic")}

    trial = FixedTrial({"merge_method": "task_arithmetic", "models[1].parameters.weight": 0.7})
    values, config = s.sample(trial)
    sampled = [call[1] for call in trial.calls]
    assert sampled == ["merge_method", "models[1].parameters.weight", "parameters.lambda"]  # method first
    assert config["models"][1]["parameters"] == {"weight": 0.7}
    assert config["models"][2]["parameters"] == {"weight": 0.5}
    assert config["parameters"] == {"lambda": 0.5, "normalize": True}
    parse_config(config)

    _, linear = s.sample(FixedTrial({"merge_method": "linear"}))
    assert linear["parameters"] == {"normalize": True}  # linear declares neither lambda nor density
    parse_config(linear)

    _, ties = s.sample(FixedTrial({"merge_method": "ties"}))
    assert ties["models"][2]["parameters"]["density"] == [{"filter": "mlp", "value": 0.1}, {"value": 0.5}]
    parse_config(ties)


@pytest.mark.parametrize(
    "value, message",
    [
        ("{min: 1}", "models[0].parameters.weight: a range needs both min and max (max is missing)"),
        ("{min: 0.5, max: 0.1}", "models[0].parameters.weight: min (0.5) must be less than max (0.1)"),
        ("{min: 0, max: 1, log: true}", "models[0].parameters.weight: a log range needs min > 0"),
        ("{min: 0.1, max: 1, log: true, step: 0.1}", "models[0].parameters.weight: log and step cannot"),
        ("{min: 0, max: 1, step: -1}", "models[0].parameters.weight.step: expected a number > 0"),
        ("{min: 0, max: 1, step: 2}", "models[0].parameters.weight.step: 2 is larger than max - min"),
        ("{min: 0, max: 1, mx: 3}", "models[0].parameters.weight.mx: unknown key in a range"),
        ("{min: a, max: 1}", "models[0].parameters.weight.min: expected a finite number, got 'a'"),
        ("{min: 0, max: 1, log: yes please}", "models[0].parameters.weight.log: expected true or false"),
        ("{choices: []}", "models[0].parameters.weight.choices: expected a non-empty list"),
        ("{choices: [[1, 2]]}", "models[0].parameters.weight.choices[0]: a choice is a scalar"),
        ("{choices: [1], min: 0}", "models[0].parameters.weight: 'min' cannot be combined with 'choices'"),
    ],
)
def test_bad_range_specs_name_their_path(value, message):
    with pytest.raises(ConfigError) as exc:
        space(f"merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: {value}\n")
    assert str(exc.value).startswith("space.yaml: ")
    assert message in str(exc.value)


def test_every_bad_spec_is_reported_at_once():
    with pytest.raises(ConfigError) as exc:
        space(
            "merge_method: linear\nmodels:\n  - {model: a, parameters: {weight: {min: 1}}}\n"
            "  - {model: b, parameters: {weight: [0, {max: 2, min: 3}]}}\n"
        )
    lines = str(exc.value).splitlines()
    assert len(lines) == 2
    assert "models[0].parameters.weight:" in lines[0] and "models[1].parameters.weight[1]:" in lines[1]


def test_midpoint_config_must_parse():
    # density's range is fine as a range but its midpoint (and every value) is out of (0, 1]
    with pytest.raises(ConfigError) as exc:
        space(
            "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n"
            "    parameters: {weight: 1.0, density: {min: 2, max: 4}}\n"
        )
    assert (
        "space.yaml (with ranges at their midpoints): models[0].parameters.density: must be in (0, 1]"
        in str(exc.value)
    )


def test_each_method_choice_is_validated():
    # slerp needs `t` and one model besides the base: the choice is reported before any trial runs
    with pytest.raises(ConfigError) as exc:
        space(
            "merge_method: {choices: [task_arithmetic, slerp]}\nbase_model: base\nmodels:\n"
            "  - {model: a, parameters: {weight: {min: 0, max: 1}}}\n"
            "  - {model: b, parameters: {weight: 0.5}}\n"
        )
    text = str(exc.value)
    assert "with merge_method = 'slerp'" in text and "parameters.t: required by merge_method 'slerp'" in text
    assert "task_arithmetic'," not in text  # the first choice is fine


def test_unknown_key_and_unknown_method_choice_come_from_parse_config():
    with pytest.raises(ConfigError, match=r"merge_method: unknown method 'tiez'"):
        space(
            "merge_method: {choices: [ties, tiez]}\nbase_model: b\nmodels:\n  - {model: a, parameters: {weight: 1}}\n"
        )
    with pytest.raises(ConfigError, match=r"models\[0\]\.parameters\.wieght: unknown parameter"):
        space("merge_method: linear\nmodels:\n  - {model: a, parameters: {wieght: {min: 0, max: 1}}}\n")


def test_slices_and_layer_ranges(tmp_path):
    path = tmp_path / "frank.yaml"
    path.write_text(
        """
merge_method: passthrough
slices:
  - sources: [{model: a, layer_range: [0, {min: 1, max: 3}]}]
  - sources: [{model: b, layer_range: [2, 4]}]
    parameters: {scale: {min: 0.5, max: 1.5}}
"""
    )
    s = load_space(str(path))
    assert [(r.name, r.kind) for r in s.ranges] == [
        ("slices[0].sources[0].layer_range[1]", "int"),
        ("slices[1].parameters.scale", "float"),
    ]
    _, config = s.sample(FixedTrial({"slices[0].sources[0].layer_range[1]": 3}))
    assert config["slices"][0]["sources"][0]["layer_range"] == [0, 3]
    parse_config(config)


def test_space_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read search space"):
        load_space(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML \(line"):
        load_space(str(bad))
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_space([1, 2])


def test_path_text_matches_config_error_paths():
    assert (
        path_text(("models", 1, "parameters", "weight", 0, "value")) == "models[1].parameters.weight[0].value"
    )
    assert path_text(("merge_method",)) == "merge_method"
