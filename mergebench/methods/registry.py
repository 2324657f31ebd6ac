"""The method contract: a pure function over tensors, its declared parameters, and a name to find it by.

Adding a method is one file with one decorated function (plus a reference test)::

    @merge_method("task_arithmetic", params=(WEIGHT, LAMBDA), base="required", elementwise=True,
                  summary="θ_base + λ Σ w_i (θ_i − θ_base)")
    def task_arithmetic(models, base, *, weight, lambda_, piece): ...

The function receives the input tensors other than the base's (``models``, config order, already in the
compute precision), the base tensor (or None), each declared parameter as a keyword (per-model ones as
lists aligned with ``models``; a YAML name that is a Python keyword gets a trailing underscore:
``lambda`` → ``lambda_``), and ``piece``: which output tensor this is, the seed, and — for methods
with a ``stats`` step — what that step computed over the whole tensor.

``elementwise`` methods give the same result on any contiguous flat slice of their inputs as on the
whole tensor (``piece.offset`` says where the slice starts), so the executor may stream them through
cache-sized chunks; with ``whole_rows`` only on slices made of whole rows (dim-0 slices: DELLA ranks
entries within a row). Whole-tensor quantities (TIES' trim threshold, SLERP's angle) come from the optional
``stats(inputs, **params)`` step, which reads the whole tensor through ``TensorInputs`` before any piece
is computed. The executor alone decides chunking, devices, threads and buffers.
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch

from mergebench.errors import ConfigError
from mergebench.mapper import Mapper, in_order, spans

Scalar = float | int | bool
FLOAT32_MAX = 3.4028234663852886e38  # arithmetic runs in float32: a larger parameter would become inf


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
        """The keyword the method function takes: YAML names that are Python keywords get a ``_``."""
        return f"{self.name}_" if keyword.iskeyword(self.name) else self.name

    def check(self, value: object, where: str) -> None:
        """Raise ConfigError naming ``where`` if ``value`` has the wrong type or range."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not abs(float(value)) <= FLOAT32_MAX:  # also catches nan
            raise ConfigError(f"{where}: must be a finite number within float32's range, got {value!r}")
        if not self.valid(float(value)):
            raise ConfigError(f"{where}: must be {self.expect}, got {value!r}")


BaseUse = Literal["required", "optional", "unused"]


def whole_rows_length(row: int, budget: int) -> int:
    """Entries in the most whole rows of ``row`` entries that fit in ``budget`` (at least one row): the
    length of a chunk or block for work that needs whole rows."""
    row = max(1, row)
    return max(1, budget // row) * row


@dataclass(frozen=True)
class Piece:
    """Which part of which output tensor a method call computes, and what it knows of the whole tensor."""

    name: str  # output tensor name (with the seed: the key of a randomized method's draws)
    seed: int = 0
    offset: int = 0  # flat index of the first entry (0 for a whole tensor)
    stats: Any = None  # the method's ``stats`` result for the whole tensor
    shape: tuple[int, ...] = ()  # the whole tensor's shape (a chunk is a flat slice of it)
    # The chunks are the stored tensors' (float32 or bfloat16), whose float32 values are meant: only for
    # a method that ``widens`` (``selection.kernel_views`` reads them so, ``selection.widened`` converts).
    widen: bool = False

    def part_of(self, flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """This piece's entries of a flat whole-tensor array (e.g. a stats step's keep-mask), on
        ``like``'s device and in its shape."""
        return flat[self.offset : self.offset + like.numel()].to(like.device).view(like.shape)


# Entries per input read at a time by a stats step (whole-tensor sums are accumulated in this order,
# so it is one value for every method and machine).
STATS_CHUNK = 1 << 18

Result = TypeVar("Result")


class TensorInputs:
    """A stats step's view of one output tensor's whole inputs, read in the compute precision.

    ``convert`` maps a slice of a stored tensor to the compute precision (identity when the tensors are
    already converted), so a stats step can walk a tensor of any size in small slices; ``workspace()``
    lends one tensor-sized scratch buffer (the executor recycles it). ``name`` and ``seed`` are the
    output tensor's, as in ``Piece`` (a randomized method's stats step draws what its pieces draw).
    ``map`` is how ``slices`` (and the selection and Gram helpers a step hands it to) run independent
    per-slice work: in order on this thread by default, on the executor's idle cores when it has them.
    """

    def __init__(
        self,
        models: Sequence[torch.Tensor],
        base: torch.Tensor | None,
        convert: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor,
        workspace: Callable[[], torch.Tensor] | None = None,
        *,
        name: str = "tensor",
        seed: int = 0,
        map: Mapper = in_order,
        widen: bool = False,
    ) -> None:
        self.name = name
        self.widen = widen  # ``convert`` only widens bf16/float32 to float32: ``stored`` slices may be read
        self.map = map
        self.seed = seed
        self.shape = tuple((base if base is not None else models[0]).shape)  # the whole tensor's shape
        self.has_base = base is not None
        self._models = [m.reshape(-1) for m in models]
        self._base = base.reshape(-1) if base is not None else None
        reference = self._base if self._base is not None else self._models[0]
        self.numel = reference.numel()
        self.device = reference.device  # where the values are computed (slices are converted there)
        self.count = len(self._models)
        self._convert = convert
        self.workspace = workspace or (lambda: torch.empty_like(reference))

    def slices(self, function: Callable[[int, int], Result], step: int = STATS_CHUNK) -> list[Result]:
        """``function(start, stop)`` for consecutive slices [start, stop) of ``step`` entries covering
        the tensor, results in slice order.

        Slices may run on several threads at once: ``function`` writes only its own slice of shared
        memory, and whole-tensor sums fold the results in slice order afterwards (``sums``), so a
        statistic is the same value however many threads computed it."""
        return self.map(lambda span: function(*span), spans(self.numel, step))

    def sums(
        self, function: Callable[[int, int], Sequence[float]], count: int, step: int = STATS_CHUNK
    ) -> list[float]:
        """``count`` whole-tensor sums: ``function(start, stop)`` gives each slice's ``count`` partial
        sums (``slices``), added position by position in slice order — one value however many threads
        computed the slices. Zeros for an empty tensor; integer sums stay integers."""
        totals: list[float] = [0] * count
        for part in self.slices(function, step):
            totals = [total + value for total, value in zip(totals, part, strict=True)]
        return totals

    def model(self, index: int, start: int, stop: int, step: int = 1) -> torch.Tensor:
        """Flat positions start, start + step, … below stop of model ``index``, converted."""
        return self._convert(self._models[index][start:stop:step])

    def base(self, start: int, stop: int, step: int = 1) -> torch.Tensor:
        assert self._base is not None, "this method has no base input"
        return self._convert(self._base[start:stop:step])

    def stored(self, index: int | None, start: int, stop: int) -> torch.Tensor:
        """Model ``index``'s slice (the base's for None) as stored, where ``widen`` says its float32
        values are just the stored ones widened (a kernel reads them so: no converted copy), else
        what ``model``/``base`` give."""
        if not self.widen:
            return self.base(start, stop) if index is None else self.model(index, start, stop)
        flat = self._base if index is None else self._models[index]
        assert flat is not None, "this method has no base input"
        return flat[start:stop]


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: its function, declared parameters and how it uses a base model."""

    name: str
    function: Callable[..., torch.Tensor]
    params: tuple[Param, ...]
    base: BaseUse
    model_count: int | None = None  # exact number of models other than the base, when the method needs it
    min_models: int = 1  # fewest models other than the base it accepts
    elementwise: bool = False
    whole_rows: bool = False  # (elementwise) chunks must hold whole rows, i.e. whole dim-0 slices
    stats: Callable[..., Any] | None = None
    # Parameter values for which the method returns its single input unchanged: the planner then
    # copies the tensor's bytes instead of computing (e.g. passthrough with scale 1).
    is_identity: Callable[[Mapping[str, Scalar]], bool] | None = None
    summary: str = ""
    # The function takes a CPU chunk as stored (bf16 or float32, ``Piece.widen``) and widens it itself:
    # its kernels read bf16 directly, so the executor skips the float32 copy of every input chunk.
    widens: bool = False
    # Problems between one tensor's resolved parameters (e.g. DELLA's density ± epsilon inside (0, 1)),
    # one message each: the planner reports them with every other problem, before any tensor is read.
    check: Callable[[Mapping[str, object]], list[str]] | None = None

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def uses_base(self, base_model_given: bool) -> bool:
        """Whether the base model is an input of this method (rather than only the output's template)."""
        return self.base == "required" or (self.base == "optional" and base_model_given)

    def keywords(self, params: Mapping[str, object]) -> dict[str, object]:
        """Resolved parameters (YAML names; per-model ones as sequences) → the function's keywords."""
        return {
            p.python_name: list(params[p.name]) if p.per_model else params[p.name]  # type: ignore[call-overload]
            for p in self.params
        }

    def apply(
        self,
        models: Sequence[torch.Tensor],
        base: torch.Tensor | None,
        params: Mapping[str, object],
        piece: Piece,
    ) -> torch.Tensor:
        """One call of the method function on (a piece of) the inputs."""
        return self.function(list(models), base, piece=piece, **self.keywords(params))

    def __call__(
        self,
        models: Sequence[torch.Tensor],
        base: torch.Tensor | None = None,
        *,
        name: str = "tensor",
        seed: int = 0,
        **params: object,
    ) -> torch.Tensor:
        """Whole-tensor application (stats step included) with parameters given by YAML name and
        defaults filled in: the reference behaviour every executor path must reproduce."""
        resolved = {p.name: params.get(p.name, p.default) for p in self.params}
        stats = None
        if self.stats is not None:
            inputs = TensorInputs(models, base, name=name, seed=seed)
            stats = self.stats(inputs, **self.keywords(resolved))
        shape = tuple((base if base is not None else models[0]).shape)
        return self.apply(models, base, resolved, Piece(name, seed, 0, stats, shape))


_METHODS: dict[str, MergeMethod] = {}


def merge_method(
    name: str,
    *,
    params: tuple[Param, ...],
    base: BaseUse,
    model_count: int | None = None,
    min_models: int = 1,
    elementwise: bool = False,
    whole_rows: bool = False,
    stats: Callable[..., Any] | None = None,
    is_identity: Callable[[Mapping[str, Scalar]], bool] | None = None,
    summary: str = "",
    check: Callable[[Mapping[str, object]], list[str]] | None = None,
    widens: bool = False,
) -> Callable[[Callable[..., torch.Tensor]], MergeMethod]:
    """Register the decorated function as merge method ``name``; returns the ``MergeMethod``."""

    def register(function: Callable[..., torch.Tensor]) -> MergeMethod:
        if name in _METHODS:
            raise ValueError(f"merge method {name!r} registered twice")
        method = MergeMethod(
            name,
            function,
            params,
            base,
            model_count,
            min_models,
            elementwise,
            whole_rows,
            stats,
            is_identity,
            summary,
            widens,
            check,
        )
        _METHODS[name] = method
        return method

    return register


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


_loaded = False


KERNELS = "fused"  # the compiled kernels' module


def _load_builtin_methods() -> None:
    """Import every module of this package once: each registers its methods, so adding a file adds
    its methods (discovered by file, so the registry depends on no method module). Not ``fused``: it
    registers none, and importing it imports numba (~0.1–0.45 s), which only runs whose methods call
    a kernel should pay — they import it where they do."""
    global _loaded
    if _loaded:
        return
    import importlib
    import pkgutil
    from pathlib import Path

    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name != KERNELS:
            importlib.import_module(f"{__package__}.{module.name}")
    _loaded = True


# Parameters shared by several methods, declared once.
def in_unit_interval_open_left(value: float) -> bool:
    return 0.0 < value <= 1.0


WEIGHT = Param("weight", float, None, per_model=True)
DENSITY = Param("density", float, 1.0, per_model=True, valid=in_unit_interval_open_left, expect="in (0, 1]")
LAMBDA = Param("lambda", float, 1.0)
INT8_MASK = Param("int8_mask", bool, False)  # accepted for mergekit configs; it only saved memory there


def normalize_param(default: bool) -> Param:
    return Param("normalize", bool, default)
