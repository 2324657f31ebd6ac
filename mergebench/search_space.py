"""Search spaces: a merge config in which values may be ranges, and the concrete configs it yields.

A SPACE file is an ordinary merge config (``config.py``'s schema) where any scalar may be replaced by a
range spec, so a space reads like the recipe it searches around:

* ``{min: a, max: b}``: a float in [a, b]; ``log: true`` samples on a log scale; ``step: s`` on a grid;
* ``{choices: [x, y, ...]}``: one of the listed scalars (numbers, strings, booleans);
* integers: outside a ``parameters`` mapping (``seed``, ``layer_range`` bounds) a range whose ``min``
  and ``max`` (and ``step``, if given) are written as integers samples integers. Under ``parameters``
  every numeric range samples floats, because every method parameter is a real number and
  ``{min: 0, max: 1}`` meaning "only 0 or 1" would be a trap.

Ranges may sit in global, per-model, per-slice and per-source parameters, in gradient lists
(``weight: [0, {min: 0, max: 1}, 1]``), in filter lists (``[{filter: mlp, value: {min: 0, max: 1}}]``) and
at ``merge_method`` itself (``{choices: [ties, dare_ties]}``). When the method is a choice, each trial
drops the parameters that its chosen method does not declare (so one space can carry ``density`` for
``ties`` and still try ``task_arithmetic``); ranges under a dropped parameter are not sampled for that
trial (Optuna's define-by-run handles such conditional parameters).

Each range is named by its key path in the config (``models[1].parameters.weight``, the same spelling
as config errors), and that path is the Optuna parameter name. This module is pure (no Optuna, Ray or
torch import): ``SearchSpace.sample`` takes any object with Optuna's ``suggest_*`` methods.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import yaml

from mergebench.config import parse_config
from mergebench.errors import ConfigError
from mergebench.methods.registry import get_method

Key = str | int
KeyPath = tuple[Key, ...]

# A mapping holding any of these keys is a range spec: no key of the merge config schema is named so.
MARKERS = frozenset({"min", "max", "choices"})
NUMERIC_KEYS = frozenset({"min", "max", "log", "step"})
METHOD_PATH: KeyPath = ("merge_method",)


class Suggester(Protocol):
    """What ``SearchSpace.sample`` needs of an Optuna trial."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def path_text(path: KeyPath) -> str:
    """``("models", 1, "parameters", "weight")`` → ``models[1].parameters.weight`` (config errors' spelling)."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass(frozen=True)
class Range:
    """One searched value: where it is in the config and what it may take."""

    path: KeyPath
    kind: Literal["float", "int", "choice"]
    low: float | int = 0
    high: float | int = 0
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def name(self) -> str:
        """The Optuna parameter name: the key path."""
        return path_text(self.path)

    def midpoint(self) -> Any:
        """A representative value (validation): the middle of the range (geometric for log, snapped to
        the step grid), or the first choice."""
        if self.kind == "choice":
            return self.choices[0]
        middle = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        if self.step is not None:
            middle = self.low + round((middle - self.low) / self.step) * self.step
        if self.kind == "int":
            return int(round(middle))
        return float(middle)

    def sample(self, trial: Suggester) -> Any:
        """Draw this range's value for one trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def describe(self) -> str:
        """Short human form for tables: ``[0, 1]``, ``[1e-3, 1] log``, ``{ties, dare_ties}``."""
        if self.kind == "choice":
            return "{" + ", ".join(str(c) for c in self.choices) + "}"
        text = f"[{self.low:g}, {self.high:g}]"
        return text + (" log" if self.log else "") + (f" step {self.step:g}" if self.step is not None else "")


@dataclass(frozen=True)
class SearchSpace:
    """A parsed SPACE: the config template (range specs still in place) and its ranges in file order."""

    template: dict[str, Any]
    ranges: tuple[Range, ...]
    source: str = "space"
    _by_name: dict[str, Range] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({r.name: r for r in self.ranges})

    @property
    def method_range(self) -> Range | None:
        """The range of ``merge_method``, when the method itself is searched."""
        return next((r for r in self.ranges if r.path == METHOD_PATH), None)

    def active_ranges(self, method: str | None = None) -> list[Range]:
        """The ranges sampled when ``method`` is chosen: all of them but those under parameters that the
        method does not declare (only when the method is searched)."""
        if self.method_range is None or method is None:
            return list(self.ranges)
        dropped = set(_undeclared_parameters(self.template, method))
        return [r for r in self.ranges if not any(r.path[: len(d)] == d for d in dropped)]

    def concrete(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The config with every active range replaced by ``values[range name]`` (and, when the method is
        searched, the chosen method's undeclared parameters dropped)."""
        method = values.get(path_text(METHOD_PATH)) if self.method_range is not None else None
        config = copy.deepcopy(self.template)
        for r in self.active_ranges(method):
            if r.name not in values:
                raise KeyError(f"no value for range {r.name}")
            _set(config, r.path, values[r.name])
        if method is not None:
            for path in sorted(_undeclared_parameters(self.template, method), key=len, reverse=True):
                _delete(config, path)
        return config

    def midpoint_values(self, **overrides: Any) -> dict[str, Any]:
        """Every range at its midpoint (first choice), except the ranges named in ``overrides``."""
        values = {r.name: r.midpoint() for r in self.ranges}
        values.update(overrides)
        return values

    def sample(self, trial: Suggester) -> tuple[dict[str, Any], dict[str, Any]]:
        """Draw one trial's values (the method first, then the ranges it keeps) → (values, config)."""
        values: dict[str, Any] = {}
        method_range = self.method_range
        if method_range is not None:
            values[method_range.name] = method_range.sample(trial)
        for r in self.active_ranges(values.get(path_text(METHOD_PATH))):
            if r is not method_range:
                values[r.name] = r.sample(trial)
        return values, self.concrete(values)

    def validate(self) -> None:
        """Raise ConfigError unless the config with every range at its midpoint parses, and so does the
        config for each choice of each choice range (the others at midpoints): a space whose method choice
        lacks a required parameter is reported before any trial runs."""
        variants: list[tuple[str, dict[str, Any]]] = [("ranges at their midpoints", self.midpoint_values())]
        for r in self.ranges:
            for choice in r.choices[1:] if r.kind == "choice" else ():
                label = f"{r.name} = {choice!r}, other ranges at their midpoints"
                variants.append((label, self.midpoint_values(**{r.name: choice})))
        problems: list[str] = []
        for label, values in variants:
            try:
                parse_config(self.concrete(values), source=f"{self.source} (with {label})")
            except ConfigError as exc:
                problems.extend(line for line in str(exc).splitlines() if line not in problems)
        if problems:
            raise ConfigError("\n".join(problems))


# ------------------------------------------------------------------------------------------ parsing


def load_space(path: str, text: str | None = None) -> SearchSpace:
    """Read and validate a SPACE file (``text`` given: parse that instead of reading ``path``)."""
    if text is None:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read search space ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): a space is a YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    return parse_space(data, source=str(path))


def parse_space(data: object, source: str = "space") -> SearchSpace:
    """Find every range spec in ``data`` (a config mapping), check each, and check that the configs it
    describes parse. Every problem is reported at once, each with its key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys (merge_method, models, …)")
    ranges: list[Range] = []
    problems: list[str] = []
    for path, spec in _range_specs(data, ()):
        try:
            ranges.append(_parse_range(path, spec))
        except ConfigError as exc:
            problems.append(f"{source}: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))
    space = SearchSpace(template=data, ranges=tuple(ranges), source=source)
    space.validate()
    return space


# Mappings keyed by user data rather than schema keys: a token named "min" is not a range spec.
USER_KEYED: frozenset[KeyPath] = frozenset({("tokenizer", "tokens")})


def _range_specs(node: object, path: KeyPath) -> Iterator[tuple[KeyPath, dict]]:
    """Every mapping that is a range spec, with its path, in file order (not descending into specs)."""
    if isinstance(node, dict):
        if MARKERS & set(node) and path not in USER_KEYED:
            yield path, node
            return
        for key, value in node.items():
            yield from _range_specs(value, (*path, str(key)))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _range_specs(item, (*path, i))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_range(path: KeyPath, spec: dict) -> Range:
    """One range spec → Range; ConfigError naming the path on any problem."""
    where = path_text(path) or "(top level)"
    if "choices" in spec:
        extra = sorted(str(k) for k in set(spec) - {"choices"})
        if extra:
            raise ConfigError(f"{where}: {extra[0]!r} cannot be combined with 'choices'")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list")
        for i, choice in enumerate(choices):
            if not (choice is None or isinstance(choice, (str, bool, int, float))):
                raise ConfigError(f"{where}.choices[{i}]: a choice is a scalar (number, string, true/false)")
        return Range(path, "choice", choices=tuple(choices))
    unknown = sorted(str(k) for k in set(spec) - NUMERIC_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown key in a range (use min, max, log, step; or choices)"
        )
    for key in ("min", "max"):
        if key not in spec:
            raise ConfigError(f"{where}: a range needs both min and max ({key} is missing)")
        if not _is_number(spec[key]):
            raise ConfigError(f"{where}.{key}: expected a finite number, got {spec[key]!r}")
    low, high = spec["min"], spec["max"]
    log = spec.get("log", False)
    step = spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{where}: min ({low}) must be less than max ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs min > 0, got {low}")
    if step is not None:
        if not _is_number(step) or step <= 0:
            raise ConfigError(f"{where}.step: expected a number > 0, got {step!r}")
        if log:
            raise ConfigError(f"{where}: log and step cannot be combined")
        if step > high - low:
            raise ConfigError(f"{where}.step: {step} is larger than max - min ({high - low})")
    integer = "parameters" not in path and _is_int(low) and _is_int(high) and (step is None or _is_int(step))
    return Range(path, "int" if integer else "float", low, high, log, step)


# ------------------------------------------------------------------------------------------ config edits


def _parameter_maps(config: Mapping[str, Any]) -> Iterator[tuple[KeyPath, Mapping[str, Any]]]:
    """Every ``parameters`` mapping of a config (global, per model, per slice, per slice source)."""

    def params_of(node: object, path: KeyPath) -> Iterator[tuple[KeyPath, Mapping[str, Any]]]:
        if isinstance(node, dict) and isinstance(node.get("parameters"), dict):
            yield (*path, "parameters"), node["parameters"]

    yield from params_of(config, ())
    models = config.get("models")
    for i, entry in enumerate(models if isinstance(models, list) else []):
        yield from params_of(entry, ("models", i))
    slices = config.get("slices")
    slices = slices if isinstance(slices, list) else []
    for i, slice_ in enumerate(slices):
        yield from params_of(slice_, ("slices", i))
        sources = slice_.get("sources") if isinstance(slice_, dict) else None
        for j, source in enumerate(sources if isinstance(sources, list) else []):
            yield from params_of(source, ("slices", i, "sources", j))


def _undeclared_parameters(config: Mapping[str, Any], method_name: str) -> Iterator[KeyPath]:
    """Paths of the parameters that ``method_name`` does not declare (none for an unknown method: then
    parse_config reports the method itself)."""
    try:
        method = get_method(str(method_name))
    except ConfigError:
        return
    for path, params in _parameter_maps(config):
        for name in params:
            if method.param(str(name)) is None:
                yield (*path, str(name))


def _set(node: Any, path: KeyPath, value: Any) -> None:
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _delete(node: Any, path: KeyPath) -> None:
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
