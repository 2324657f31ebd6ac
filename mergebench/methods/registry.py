"""Merge methods by name, each with the parameters it declares (used for config validation and docs)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from mergebench.errors import ConfigError


@dataclass(frozen=True)
class Param:
    """A parameter a method accepts. ``per_model`` ones may be set per input model (or globally as a
    default for all models); the others only globally. ``default=None`` means required."""

    name: str
    kind: type  # float or bool
    default: float | bool | None = None
    per_model: bool = False
    valid: Callable[[float], bool] = field(default=lambda value: math.isfinite(value), repr=False)
    expect: str = "a finite number"

    @property
    def python_name(self) -> str:
        return "lambda_" if self.name == "lambda" else self.name

    def check(self, value: object, where: str) -> None:
        """Raise ConfigError naming ``where`` if ``value`` has the wrong type or range."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not self.valid(float(value)):
            raise ConfigError(f"{where}: must be {self.expect}, got {value!r}")


BaseUse = Literal["required", "unused"]


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: a pure function ``(models, base, **params) -> tensor`` plus its contract.

    ``models`` are the input tensors other than the base model's, in config order, already in the
    compute dtype; per-model parameters arrive as lists aligned with ``models``.

    ``elementwise`` methods give the same result applied to any contiguous flat chunk of the inputs
    (they take ``offset``, the chunk's flat start), so the executor streams them through small,
    cache-sized buffers. Such a method may need whole-tensor statistics first (TIES' trim
    threshold, SLERP's angle): ``prepare(models, base, convert, scratch, **params)`` computes them from
    the raw inputs — ``convert`` maps a raw chunk to the compute dtype, ``scratch`` lends recycled
    buffers (``take(nbytes)`` / ``give(tensor)``) — and returns extra keyword
    arguments for every chunk call. Called without them, the function computes them itself.
    ``randomized`` methods receive ``key=(seed, tensor name)`` to seed their randomness.
    """

    name: str
    function: Callable[..., torch.Tensor]
    params: tuple[Param, ...]
    base: BaseUse
    models_other_than_base: int | None = None  # exact count, when the method needs one
    randomized: bool = False
    elementwise: bool = False
    prepare: Callable[..., dict] | None = None
    summary: str = ""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


_METHODS: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    if method.name in _METHODS:
        raise ValueError(f"merge method {method.name!r} registered twice")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    _load_builtin_methods()
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS))
        raise ConfigError(f"merge_method: unknown method {name!r} (known: {known})") from None


def all_methods() -> dict[str, MergeMethod]:
    _load_builtin_methods()
    return dict(_METHODS)


def _load_builtin_methods() -> None:
    from mergebench.methods import basic, passthrough, slerp, ties_dare  # noqa: F401  (they register on import)


# Parameters shared by several methods, declared once.
def in_unit_interval_open_left(value: float) -> bool:
    return 0.0 < value <= 1.0


WEIGHT = Param("weight", float, None, per_model=True)
DENSITY = Param("density", float, 1.0, per_model=True, valid=in_unit_interval_open_left, expect="in (0, 1]")
LAMBDA = Param("lambda", float, 1.0)
INT8_MASK = Param("int8_mask", bool, False)  # accepted for mergekit configs; it only saved memory there


def normalize_param(default: bool) -> Param:
    return Param("normalize", bool, default)
