"""The merge config: mergekit-compatible YAML, validated up front with the failing key's path.

Parameter values take three forms, as mergekit users write them:
  * a scalar (``0.5``, ``true``);
  * a gradient: a list of numbers, linearly interpolated over the layer's relative position
    t = i / (n − 1) in its slice (tensors outside the layers take the first value);
  * a filter list: ``[{filter: self_attn, value: ...}, {value: ...}]``, where ``filter`` is a plain
    substring of the tensor name, the first match wins, and an entry without ``filter`` matches all.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mergebench.dtypes import NAMES as DTYPE_NAMES
from mergebench.dtypes import torch_dtype
from mergebench.errors import ConfigError
from mergebench.methods.registry import MergeMethod, Scalar, get_method
from mergebench.vocab import chat_template_problem

if TYPE_CHECKING:
    import torch


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
    """One output slice: its sources (all spanning the same number of layers) and parameters.

    ``base_model`` overrides the global one for this slice (mergekit's key). ``residual_weight`` is
    accepted because mergekit's schema has it; mergekit 0.1.5 never uses it, and neither do we.
    """

    sources: list[SliceSource] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    base_model: str | None = None
    residual_weight: float | None = None


class NonLayerSource(_Strict):
    """``non_layer_source: {before: model, after: model}``: where a slices merge takes the tensors outside
    the layers — ``before`` (embeddings) and ``after`` (final norm, lm_head); each optional."""

    before: str | None = None
    after: str | None = None


# --- tokenizer merging (mergekit's keys; what they do: mergebench/vocab.py) ---------------------------


class ModelTokenSource(_Strict):
    """``{kind: model_token, model, token | token_id}``: the row of one token of one input model."""

    kind: Literal["model_token"]
    model: str
    token: str | None = None
    token_id: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_token(self) -> ModelTokenSource:
        if (self.token is None) == (self.token_id is None):
            raise ValueError("give exactly one of 'token' and 'token_id'")
        return self


class ZeroSource(_Strict):
    """``{kind: zero}``: a row of zeros."""

    kind: Literal["zero"]


class TokenEmbedding(_Strict):
    """One entry of ``tokenizer.tokens``: where the token's embedding/head rows come from for the models
    that lack it (all models with ``force``). ``source`` is a model, a model_token or zero."""

    source: ModelTokenSource | ZeroSource | str | None = None
    force: bool = False

    @field_validator("source", mode="before")
    @classmethod
    def _source_kind(cls, value: object) -> object:
        """One clear line for a wrong source instead of one error per member of the union."""
        if not isinstance(value, dict):
            return value
        kinds = {"model_token": ModelTokenSource, "zero": ZeroSource}
        model = kinds.get(value.get("kind"))  # type: ignore[arg-type]
        if model is None:
            raise ValueError("expected a model, {kind: model_token, model, token | token_id} or {kind: zero}")
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"{_location(('source', *first['loc']))}: {_message(first)}") from None


class TokenizerSettings(_Strict):
    """``tokenizer:``: the output vocabulary (``source``: union, base or a model), per-token row
    sources (``tokens``) and ``pad_to_multiple_of`` for the embedding rows."""

    source: str = "union"
    tokens: dict[str, TokenEmbedding] | None = None
    pad_to_multiple_of: int | None = Field(default=None, gt=0)


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
    tokenizer: TokenizerSettings | None = None
    chat_template: str | None = None  # auto | a built-in template's name | Jinja text
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
        return torch_dtype(self.dtype) if self.dtype else None

    @property
    def output_dtype(self) -> torch.dtype | None:
        name = self.out_dtype or self.dtype
        return torch_dtype(name) if name else None

    def model_specs(self) -> list[str]:
        """Every distinct model string the config names, base model first."""
        names = [self.base_model] if self.base_model else []
        for entry in self.models or []:
            names.append(entry.model)
        for slice_ in self.slices or []:
            names.extend(source.model for source in slice_.sources)
            names.extend([slice_.base_model] if slice_.base_model else [])
        if self.non_layer_source is not None:
            names.extend(m for m in (self.non_layer_source.before, self.non_layer_source.after) if m)
        return list(dict.fromkeys(names))

    def model_locations(self) -> dict[str, str]:
        """Each distinct model string → the key path where the config first names it (for messages)."""
        places = [("base_model", self.base_model)] if self.base_model else []
        places += [(f"models[{i}].model", entry.model) for i, entry in enumerate(self.models or [])]
        for i, slice_ in enumerate(self.slices or []):
            places += [(f"slices[{i}].sources[{j}].model", s.model) for j, s in enumerate(slice_.sources)]
            places += [(f"slices[{i}].base_model", slice_.base_model)] if slice_.base_model else []
        before, after = self.non_layer_models()
        places += [("non_layer_source.before", before), ("non_layer_source.after", after)]
        locations: dict[str, str] = {}
        for where, spec in places:
            if spec is not None:
                locations.setdefault(spec, where)
        return locations

    def parameter_filters(self) -> list[tuple[str, str]]:
        """Every ``filter`` of every parameter value, with its key path (a filter matching nothing is a
        mistake: usually a typo, or a name from another architecture)."""
        levels = [("parameters", self.parameters)]
        levels += [(f"models[{i}].parameters", e.parameters) for i, e in enumerate(self.models or [])]
        for i, slice_ in enumerate(self.slices or []):
            levels.append((f"slices[{i}].parameters", slice_.parameters))
            levels += [
                (f"slices[{i}].sources[{j}].parameters", s.parameters) for j, s in enumerate(slice_.sources)
            ]
        found = []
        for where, params in levels:
            for name, value in params.items():
                if isinstance(value, list):
                    for k, item in enumerate(value):
                        if isinstance(item, dict) and isinstance(item.get("filter"), str):
                            found.append((f"{where}.{name}[{k}].filter", item["filter"]))
        return found

    def non_layer_models(self) -> tuple[str | None, str | None]:
        """The explicit (before, after) non-layer source models of a slices config, None where unset."""
        value = self.non_layer_source
        return (value.before, value.after) if value is not None else (None, None)


def slice_base(config: MergeConfig, slice_: SliceEntry) -> str | None:
    """The base model of one slice: its own ``base_model``, else the config's."""
    return slice_.base_model or config.base_model


def base_index(config: MergeConfig, slice_: SliceEntry) -> int | None:
    """Which source of a slice is the base model's, when the method uses one (else None)."""
    base = slice_base(config, slice_)
    if base is None or not config.method.uses_base(True):
        return None
    return next((j for j, source in enumerate(slice_.sources) if source.model == base), None)


def load_yaml_documents(path: str | Path) -> tuple[list[object], str]:
    """The YAML documents of a config (one) or a multi-stage recipe (several), and the file's text."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): a config is a YAML file") from None
    try:
        _check_expansion(path, text)
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    return documents, text


MAX_EXPANDED_NODES = 200_000  # a real recipe has hundreds; alias bombs reach billions


def _check_expansion(path: Path, text: str) -> None:
    """Refuse YAML whose aliases expand to more than MAX_EXPANDED_NODES values ("billion laughs"):
    loading shares aliased objects, but validating walks every expanded value. The expanded size is
    counted on the node graph, each node once, so the check itself stays linear."""
    sizes: dict[int, int] = {}

    def expanded(node: yaml.Node) -> int:
        key = id(node)
        if key not in sizes:
            sizes[key] = 0  # a recursive alias counts once (and pydantic will reject the cycle)
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [item for pair in node.value for item in pair]
            else:
                children = []
            sizes[key] = 1 + sum(expanded(child) for child in children)
        return sizes[key]

    for document in yaml.compose_all(text, Loader=yaml.SafeLoader):
        if document is not None and expanded(document) > MAX_EXPANDED_NODES:
            raise ConfigError(
                f"{path}: YAML aliases expand to more than {MAX_EXPANDED_NODES:,} values; refusing to load"
            )


def load_config(path: str | Path) -> tuple[MergeConfig, str]:
    """Read, parse and validate a one-document YAML config; returns it with the exact text (for the
    model card)."""
    documents, text = load_yaml_documents(path)
    if len(documents) > 1:
        raise ConfigError(
            f"{path}: holds {len(documents)} YAML documents; a multi-stage recipe is run by `merge`"
        )
    return parse_config(documents[0] if documents else None, source=str(path)), text


def parse_config(data: object, source: str = "config") -> MergeConfig:
    """Validate a config mapping: schema, then everything about the method's models and parameters that
    needs no model files. Every problem is reported (one line each, prefixed with ``source``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys (merge_method, models, …)")
    try:
        config = MergeConfig.model_validate(data)
    except ValidationError as exc:
        problems = _schema_problems(exc.errors())
    else:
        problems = [*_method_problems(config), *_tokenizer_problems(config)]
    if problems:
        raise ConfigError("\n".join(f"{source}: {line}" for line in problems))
    return config


def _schema_problems(errors: list) -> list[str]:
    """One line per schema error. A typo shows up as an unknown key *and* a missing one: name the typo."""
    typo_parents = {e["loc"][:-1] for e in errors if e["type"] == "extra_forbidden"}
    lines = []
    for error in errors:
        if error["type"] == "missing" and error["loc"][:-1] in typo_parents:
            continue
        line = f"{_location(error['loc'])}: {_message(error)}"
        if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
            close = difflib.get_close_matches(str(error["loc"][0]), list(MergeConfig.model_fields), n=1)
            line += f" (did you mean {close[0]!r}?)" if close else ""
        lines.append(line)
    return lines


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


END_EXCLUSIVE = "ranges are end-exclusive: [0, 4] means layers 0, 1, 2, 3"


def _method_problems(config: MergeConfig) -> Iterator[str]:
    """Names, types and ranges of parameters, model counts and slice shapes: all that needs no files."""
    try:
        method = config.method
    except ConfigError as exc:
        yield str(exc)
        return
    if (config.models is None) == (config.slices is None):
        yield "give exactly one of 'models' and 'slices'"
        return
    if config.non_layer_source is not None and config.slices is None:
        yield "non_layer_source: only applies to 'slices' configs"
    slices_without_base = [s for s in config.slices or [] if not s.base_model]
    if (
        method.base == "required"
        and not config.base_model
        and (config.models is not None or slices_without_base)
    ):
        yield f"base_model: required by merge_method {method.name!r}"
    yield from _param_problems(method, config.parameters, "parameters", model_level=False)
    for i, entry in enumerate(config.models or []):
        yield from _param_problems(method, entry.parameters, f"models[{i}].parameters", model_level=True)
    if config.models is not None:
        yield from _models_problems(method, config)
    for i, slice_ in enumerate(config.slices or []):
        yield from _slice_problems(method, config, i, slice_)
    if config.non_layer_source is not None and config.non_layer_models() == (None, None):
        yield "non_layer_source: give a model, or 'before' and/or 'after' with a model each"


def _tokenizer_problems(config: MergeConfig) -> Iterator[str]:
    """Tokenizer keys: one form at a time, models that are inputs, a known chat template."""
    named = set(config.model_specs())
    if config.tokenizer_source is not None and config.tokenizer is not None:
        yield "tokenizer: give either tokenizer_source or tokenizer, not both"
    settings = config.tokenizer
    if settings is not None and settings.source not in ("union", "base", *named):
        yield f"tokenizer.source: {settings.source!r} is not 'union', 'base' or a model named in the config"
    for token, entry in ((settings.tokens if settings else None) or {}).items():
        where = f"tokenizer.tokens.{token}"
        if not token:
            yield "tokenizer.tokens: a token is an empty string"
        source = entry.source
        model = source.model if isinstance(source, ModelTokenSource) else source
        if isinstance(model, str) and model not in named:
            key = "source.model" if isinstance(source, ModelTokenSource) else "source"
            yield f"{where}.{key}: {model!r} is not a model named in the config"
        if entry.force and source is None:
            yield f"{where}.force: needs a source (a model, {{kind: model_token, …}} or {{kind: zero}})"
    if config.chat_template is not None:
        problem = chat_template_problem(config.chat_template)
        if problem:
            yield f"chat_template: {problem}"


def _models_problems(method: MergeMethod, config: MergeConfig) -> Iterator[str]:
    """Model count and required parameters of a ``models:`` config."""
    listed = [entry.model for entry in config.models or []]
    if not listed:
        yield "models: at least one model is required"
        return
    first: dict[str, int] = {}
    for i, entry in enumerate(config.models or []):
        j = first.setdefault(entry.model, i)
        if j != i and (config.models or [])[j].parameters != entry.parameters:
            yield f"models[{i}].model: {entry.model!r} is already models[{j}], with other parameters; list it once"
    uses_base = method.uses_base(config.base_model is not None)
    others = [m for m in dict.fromkeys(listed) if not (uses_base and m == config.base_model)]
    expected = method.model_count
    base_missing = method.base == "required" and not config.base_model  # reported once, above
    if expected is not None and len(others) != expected and not base_missing:
        if uses_base:
            yield (
                f"models: merge_method {method.name!r} needs exactly {expected + 1} models (base_model and "
                f"{expected} other), got {len(others) + 1}"
            )
        else:
            hint = " (to stack layers of several models, use 'slices')" if expected == 1 else ""
            yield f"models: merge_method {method.name!r} takes exactly {expected} model(s), got {len(others)}{hint}"
    if method.base == "required" and not others:
        yield f"models: merge_method {method.name!r} needs a model other than base_model"
    elif expected is None and len(others) < method.min_models:
        yield f"models: merge_method {method.name!r} needs at least {method.min_models} models besides base_model, got {len(others)}"
    models = [
        (f"models[{i}]", entry.parameters)
        for i, entry in enumerate(config.models or [])
        if not (uses_base and entry.model == config.base_model)
    ]
    yield from _required_problems(method, [config.parameters], "parameters", models)


def _slice_problems(method: MergeMethod, config: MergeConfig, i: int, slice_: SliceEntry) -> Iterator[str]:
    """Parameters, layer ranges, source count and required parameters of one slice."""
    where = f"slices[{i}]"
    yield from _param_problems(method, slice_.parameters, f"{where}.parameters", model_level=False)
    lengths = []
    for j, source in enumerate(slice_.sources):
        yield from _param_problems(
            method, source.parameters, f"{where}.sources[{j}].parameters", model_level=True
        )
        start, end = source.layer_range
        if start < 0 or end <= start:
            yield (
                f"{where}.sources[{j}].layer_range: [{start}, {end}] is empty or reversed ({END_EXCLUSIVE})"
            )
        else:
            lengths.append((j, end - start))
    if lengths and lengths[0][0] == 0:
        for j, length in lengths[1:]:
            if length != lengths[0][1]:
                start, end = slice_.sources[j].layer_range
                yield (
                    f"{where}.sources[{j}].layer_range: [{start}, {end}] spans {length} layers but "
                    f"{where}.sources[0] spans {lengths[0][1]}; all sources of a slice must span the "
                    f"same number of layers ({END_EXCLUSIVE})"
                )
    base = base_index(config, slice_)
    if method.base == "required" and base is None:
        if slice_base(config, slice_) is not None:
            yield (
                f"{where}.sources: merge_method {method.name!r} needs base_model "
                f"{slice_base(config, slice_)!r} among each slice's sources"
            )
        return
    others = len(slice_.sources) - (1 if base is not None else 0)
    expected = method.model_count
    if expected is not None and others != expected:
        if base is None:
            yield (
                f"{where}.sources: merge_method {method.name!r} takes exactly {expected} source per "
                f"slice, got {len(slice_.sources)}"
            )
        else:
            yield (
                f"{where}.sources: merge_method {method.name!r} needs base_model and exactly {expected} "
                f"other source per slice, got {others} other"
            )
    if method.base == "required" and others == 0:
        yield f"{where}.sources: merge_method {method.name!r} needs a source other than base_model"
    elif expected is None and others < method.min_models:
        yield f"{where}.sources: merge_method {method.name!r} needs at least {method.min_models} sources besides base_model, got {others}"
    models = [(f"{where}.sources[{j}]", s.parameters) for j, s in enumerate(slice_.sources) if j != base]
    yield from _required_problems(
        method, [config.parameters, slice_.parameters], f"{where}.parameters", models
    )


def _required_problems(
    method: MergeMethod, levels: list[dict], where: str, models: list[tuple[str, dict]]
) -> Iterator[str]:
    """Every required parameter must be set somewhere for every model that uses it: in one of the
    tensor-level ``levels`` (reported at ``where``), else in each model's own parameters."""
    for param in method.params:
        if param.default is not None or any(param.name in level for level in levels):
            continue
        if not param.per_model:
            yield f"{where}.{param.name}: required by merge_method {method.name!r}"
            continue
        for model_where, parameters in models:
            if param.name not in parameters:
                yield f"{model_where}.parameters.{param.name}: required by {method.name!r}"


def _param_problems(
    method: MergeMethod, params: dict[str, Any], where: str, *, model_level: bool
) -> Iterator[str]:
    for name, value in params.items():
        param = method.param(name)
        if param is None:
            known = ", ".join(p.name for p in method.params) or "none"
            yield f"{where}.{name}: unknown parameter for {method.name!r} (known: {known})"
            continue
        if model_level and not param.per_model:
            yield f"{where}.{name}: not a per-model parameter; set it under 'parameters'"
            continue
        try:
            for scalar, path in _scalars(value, f"{where}.{name}"):
                param.check(scalar, path)
        except ConfigError as exc:
            yield str(exc)


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
