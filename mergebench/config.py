"""The merge config: mergekit-compatible YAML, validated up front with the failing key's path.

Parameter values take three forms, as mergekit users write them:
  * a scalar (``0.5``, ``true``);
  * a gradient: a list of numbers, linearly interpolated over the layer's relative position
    t = i / (n − 1) in its slice (tensors outside the layers take the first value);
  * a filter list: ``[{filter: self_attn, value: ...}, {value: ...}]``, where ``filter`` is a plain
    substring of the tensor name, the first match wins, and an entry without ``filter`` matches all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mergebench.errors import ConfigError
from mergebench.methods.registry import MergeMethod, get_method

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}

Scalar = float | int | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    """One input model (``models:`` list) and its per-model parameters."""

    model: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class SliceSource(_Strict):
    """One source of a slice: a model and an end-exclusive layer range ``[start, end)``."""

    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, Any] = Field(default_factory=dict)


class SliceEntry(_Strict):
    """One output slice: its sources (all spanning the same number of layers) and parameters."""

    sources: list[SliceSource] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


class NonLayerSource(_Strict):
    """``non_layer_source: {before: model, after: model}``: where a slices merge takes the tensors outside
    the layers — ``before`` (embeddings) and ``after`` (final norm, lm_head); each optional."""

    before: str | None = None
    after: str | None = None


class MergeConfig(_Strict):
    """A validated merge config. Exactly one of ``models`` and ``slices`` is given."""

    merge_method: str
    base_model: str | None = None
    models: list[ModelEntry] | None = None
    slices: list[SliceEntry] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    # slices only: the model whose non-layer tensors are copied, instead of merging the first slice's
    # sources (tensors before the layers) and the last slice's (after them); a string sets both.
    non_layer_source: NonLayerSource | None = None
    seed: int = 0

    @field_validator("non_layer_source", mode="before")
    @classmethod
    def _one_model_for_both(cls, value: object) -> object:
        if isinstance(value, str):
            return {"before": value, "after": value}
        if value is not None and not isinstance(value, dict):
            raise ValueError("expected a model, or a mapping {before: model, after: model}")
        return value

    @field_validator("dtype", "out_dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        if value is not None and value not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {value!r} (use one of: {', '.join(DTYPE_NAMES)})")
        return value

    @property
    def method(self) -> MergeMethod:
        return get_method(self.merge_method)

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return DTYPE_NAMES[self.dtype] if self.dtype else None

    @property
    def output_dtype(self) -> torch.dtype | None:
        name = self.out_dtype or self.dtype
        return DTYPE_NAMES[name] if name else None

    def model_specs(self) -> list[str]:
        """Every distinct model string the config names, base model first."""
        names = [self.base_model] if self.base_model else []
        for entry in self.models or []:
            names.append(entry.model)
        for slice_ in self.slices or []:
            names.extend(source.model for source in slice_.sources)
        if self.non_layer_source is not None:
            names.extend(m for m in (self.non_layer_source.before, self.non_layer_source.after) if m)
        return list(dict.fromkeys(names))


def load_config(path: str | Path) -> tuple[MergeConfig, str]:
    """Read, parse and validate a YAML config; returns it with the exact text (for the model card)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    return parse_config(data, source=str(path)), text


def parse_config(data: object, source: str = "config") -> MergeConfig:
    """Validate a config mapping: schema, then method-specific parameter names, types and ranges."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys (merge_method, models, …)")
    try:
        config = MergeConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # A typo shows up as an unknown key *and* a missing one: name the typo.
        error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        raise ConfigError(f"{source}: {_location(error['loc'])}: {_message(error)}") from None
    try:
        validate_against_method(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config


def _location(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _message(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    return error["msg"].removeprefix("Value error, ")


def validate_against_method(config: MergeConfig) -> None:
    """Check everything about parameters that needs no model files: names, types, ranges, arity."""
    method = config.method
    if (config.models is None) == (config.slices is None):
        raise ConfigError("give exactly one of 'models' and 'slices'")
    if config.non_layer_source is not None and config.slices is None:
        raise ConfigError("non_layer_source: only applies to 'slices' configs")
    if method.base == "required" and not config.base_model:
        raise ConfigError(f"base_model: required by merge_method {method.name!r}")
    _check_params(method, config.parameters, "parameters", model_level=False)
    for i, entry in enumerate(config.models or []):
        _check_params(method, entry.parameters, f"models[{i}].parameters", model_level=True)
    for i, slice_ in enumerate(config.slices or []):
        _check_params(method, slice_.parameters, f"slices[{i}].parameters", model_level=False)
        for j, source in enumerate(slice_.sources):
            where = f"slices[{i}].sources[{j}]"
            _check_params(method, source.parameters, f"{where}.parameters", model_level=True)
            start, end = source.layer_range
            if start < 0 or end <= start:
                raise ConfigError(
                    f"{where}.layer_range: [{start}, {end}] is empty or reversed "
                    "(ranges are end-exclusive: [0, 4] means layers 0, 1, 2, 3)"
                )
    if config.models is not None:
        _check_model_count(method, config)
        _check_required(method, config)
    else:
        from mergebench.slices import check_slices_config

        check_slices_config(config)


def _check_model_count(method: MergeMethod, config: MergeConfig) -> None:
    listed = [entry.model for entry in config.models or []]
    if not listed:
        raise ConfigError("models: at least one model is required")
    others = [m for m in dict.fromkeys(listed) if m != config.base_model or method.base == "unused"]
    expected = method.models_other_than_base
    if expected is not None and method.base == "unused" and len(others) != expected:
        raise ConfigError(
            f"models: merge_method {method.name!r} takes exactly {expected} model(s), got {len(others)}"
            + (" (to stack layers of several models, use 'slices')" if method.name == "passthrough" else "")
        )
    if expected is not None and len(others) != expected:
        total = expected + 1
        raise ConfigError(
            f"models: merge_method {method.name!r} needs exactly {total} models (base_model and "
            f"{expected} other), got {len(others) + 1}"
        )
    if method.base == "required" and not others:
        raise ConfigError(f"models: merge_method {method.name!r} needs a model other than base_model")


def _check_required(method: MergeMethod, config: MergeConfig) -> None:
    """Every required parameter must be set somewhere for every model that uses it."""
    for param in method.params:
        if param.default is not None or param.name in config.parameters:
            continue
        if not param.per_model:
            raise ConfigError(f"parameters.{param.name}: required by merge_method {method.name!r}")
        for i, entry in enumerate(config.models or []):
            if entry.model == config.base_model and method.base == "required":
                continue
            if param.name not in entry.parameters:
                raise ConfigError(f"models[{i}].parameters.{param.name}: required by {method.name!r}")


def _check_params(method: MergeMethod, params: dict[str, Any], where: str, *, model_level: bool) -> None:
    for name, value in params.items():
        param = method.param(name)
        if param is None:
            known = ", ".join(p.name for p in method.params) or "none"
            raise ConfigError(f"{where}.{name}: unknown parameter for {method.name!r} (known: {known})")
        if model_level and not param.per_model:
            raise ConfigError(f"{where}.{name}: not a per-model parameter; set it under 'parameters'")
        for scalar, path in _scalars(value, f"{where}.{name}"):
            param.check(scalar, path)


def _scalars(value: object, where: str):
    """Every scalar inside a parameter value (scalar, gradient, or filter list), with its key path."""
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: empty list")
        if all(isinstance(item, dict) for item in value):
            for i, item in enumerate(value):
                unknown = set(item) - {"filter", "value"}
                if unknown:
                    raise ConfigError(
                        f"{where}[{i}].{sorted(unknown)[0]}: unknown key (use filter and value)"
                    )
                if "value" not in item:
                    raise ConfigError(f"{where}[{i}].value: required key is missing")
                if "filter" in item and not isinstance(item["filter"], str):
                    raise ConfigError(f"{where}[{i}].filter: expected a string")
                yield from _scalars(item["value"], f"{where}[{i}].value")
            return
        for i, item in enumerate(value):
            if isinstance(item, (list, dict, bool)):
                raise ConfigError(f"{where}[{i}]: a gradient is a list of numbers")
            yield item, f"{where}[{i}]"
        return
    if isinstance(value, dict):
        raise ConfigError(f"{where}: expected a value, a list of numbers, or a list of {{filter, value}}")
    yield value, where


def resolve_value(value: object, tensor_name: str, position: float) -> Scalar | None:
    """Evaluate a parameter value for one tensor at relative layer position ``position`` ∈ [0, 1].

    Returns None when a filter list has no entry matching the tensor (the default then applies).
    """
    if not isinstance(value, list):
        return value  # type: ignore[return-value]
    if value and isinstance(value[0], dict):
        for entry in value:
            pattern = entry.get("filter")
            if pattern is None or pattern in tensor_name:
                return resolve_value(entry["value"], tensor_name, position)
        return None
    return interpolate_gradient([float(v) for v in value], position)


def interpolate_gradient(points: list[float], position: float) -> float:
    """Piecewise-linear value of evenly spaced ``points`` at ``position`` ∈ [0, 1]."""
    if len(points) == 1:
        return points[0]
    scaled = min(max(position, 0.0), 1.0) * (len(points) - 1)
    low = min(int(scaled), len(points) - 2)
    frac = scaled - low
    return points[low] * (1.0 - frac) + points[low + 1] * frac
