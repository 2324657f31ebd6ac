"""Config → sources → mapping → a list of ops that own their inputs, from headers alone.

An op produces one output tensor: ``Copy`` takes one input as it is (a stored tensor, or a base
tensor with LoRA adapters folded in), ``Merge`` applies a method with every parameter already resolved
for this tensor. Every mismatch (missing tensor, shape or dtype disagreement, unresolved parameter) is
collected, so a user sees all problems in seconds, before any tensor data is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mergebench.architecture import VOCAB_TENSOR
from mergebench.config import MergeConfig, Scalar, resolve_value
from mergebench.errors import MergebenchError
from mergebench.inputs import Input, TensorRef
from mergebench.io.writer import TensorSpec
from mergebench.mapping import Mapping, Operand, Problems, TensorMapping, map_tensors
from mergebench.methods.registry import MergeMethod
from mergebench.sources import Source, local_paths, open_source
from mergebench.vocab import OutputTokenizer, RowSources


@dataclass(frozen=True)
class Copy:
    """The output tensor is ``source``, converted to the output dtype."""

    output: TensorSpec
    source: Input

    @property
    def inputs(self) -> tuple[Input, ...]:
        return (self.source,)


@dataclass(frozen=True)
class Merge:
    """The output tensor is ``method`` applied to the inputs with parameters resolved for this tensor.

    ``params`` holds every declared parameter by its YAML name; per-model ones as tuples aligned with
    ``models``.
    """

    output: TensorSpec
    method: MergeMethod
    base: Input | None
    models: tuple[Input, ...]
    params: dict[str, object]
    compute_dtype: torch.dtype | None = None
    seed: int = 0

    @property
    def inputs(self) -> tuple[Input, ...]:
        return (self.base, *self.models) if self.base is not None else self.models


@dataclass(frozen=True)
class RowMerge(Merge):
    """A vocabulary tensor (embeddings, LM head) merged over inputs aligned by token: input k's row r is
    what ``rows`` says — its own row of token r, or the fill mergekit gives a model that lacks the token —
    and ``method`` then runs as for ``Merge``. The executor builds the aligned rows block by block."""

    rows: RowSources = field(kw_only=True)


Op = Copy | Merge


def op_refs(op: Op) -> list[TensorRef]:
    """The stored tensors an op reads, in order: each input's refs, inputs in ``op.inputs`` order."""
    return [ref for item in op.inputs for ref in item.refs]


def op_input_bytes(op: Op) -> int:
    return sum(ref.nbytes for ref in op_refs(op))


@dataclass
class MergePlan:
    """Ops in output order, plus where the output's config.json and tokenizer come from."""

    ops: list[Op]
    reference: Source
    tokenizer_source: Source
    sources: dict[str, Source]
    output_dtype: torch.dtype | None = None
    config_updates: dict[str, object] = field(default_factory=dict)
    tokenizer: OutputTokenizer | None = None  # tokenizer keys: files to write (or copy) and self-check

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [op.output for op in self.ops]

    @property
    def output_bytes(self) -> int:
        return sum(spec.nbytes for spec in self.output_specs)

    @property
    def input_bytes(self) -> int:
        return sum(op_input_bytes(op) for op in self.ops)

    @property
    def input_paths(self) -> list[Path]:
        """Every directory the plan reads from (an output must not overlap any of them)."""
        return [path for source in self.sources.values() for path in source.paths]


def open_sources(config: MergeConfig, *, allow_pickle: bool = False) -> dict[str, Source]:
    """Open every model the config names (headers only); a failure names the config key."""
    sources = {}
    for spec, where in config.model_locations().items():
        try:
            sources[spec] = open_source(spec, allow_pickle=allow_pickle)
        except MergebenchError as exc:
            raise type(exc)("\n".join(f"{where}: {line}" for line in str(exc).splitlines())) from None
    return sources


def config_local_paths(config: MergeConfig) -> list[Path]:
    """Every existing local directory the config reads from, known before anything is opened."""
    return [path for spec in config.model_specs() for path in local_paths(spec)]


def plan_merge(config: MergeConfig, *, allow_pickle: bool = False) -> MergePlan:
    """Open the config's models and plan every output tensor; raises listing every problem found."""
    sources = open_sources(config, allow_pickle=allow_pickle)
    problems = Problems()
    mapping = map_tensors(config, sources, problems)
    ops = [op for tensor in mapping.tensors if (op := _plan_tensor(config, mapping, tensor, problems))]
    names = [tensor.output for tensor in mapping.tensors]
    for where, pattern in config.parameter_filters():
        if not any(pattern in name for name in names):
            problems.add(f"{where}: filter {pattern!r} matches no tensor of the output")
    problems.raise_if_any()
    return MergePlan(
        ops,
        mapping.reference,
        mapping.tokenizer_source,
        sources,
        mapping.output_dtype,
        mapping.config_updates,
        mapping.tokenizer,
    )


def _plan_tensor(
    config: MergeConfig, mapping: Mapping, tensor: TensorMapping, problems: Problems
) -> Op | None:
    reference = tensor.reference
    if tensor.rows is not None:
        return _plan_rows(config, mapping, tensor, tensor.rows, problems)
    output = _output_spec(tensor.output, reference, mapping.output_dtype)
    if tensor.copy:
        return Copy(output, _input(reference))
    ok = [
        _check_same_tensor(reference, operand, problems) for operand in tensor.inputs if operand != reference
    ]
    if not all(ok):
        return None
    if not reference.source.tensors[reference.name].dtype.is_floating_point:
        return Copy(output, _input(reference))
    method = config.method
    models = tensor.models
    params = resolve_params(method, tensor, problems)
    if method.is_identity is not None and len(models) == 1 and method.is_identity(params):
        return Copy(output, _input(models[0]))  # an exact copy: skip the float round trip
    return Merge(
        output,
        method,
        _input(tensor.inputs[tensor.base]) if tensor.base is not None else None,
        tuple(_input(operand) for operand in models),
        params,
        config.compute_dtype,
        config.seed,
    )


def _plan_rows(
    config: MergeConfig, mapping: Mapping, tensor: TensorMapping, rows: RowSources, problems: Problems
) -> RowMerge | None:
    """A vocabulary tensor aligned by token: inputs may differ in rows, not in the rest of the shape."""
    reference = tensor.reference
    want = reference.source.tensors[reference.name]
    ok = True
    for operand in tensor.inputs:
        info = operand.source.tensors.get(operand.name)
        if info is None:
            problems.add(f"tensor {operand.name!r} is missing in model {operand.source.spec}")
            ok = False
        elif info.shape[1:] != want.shape[1:] or not info.dtype.is_floating_point:
            problems.add(
                f"tensor {operand.name!r}: rows of shape {list(info.shape[1:])} ({info.dtype}) in "
                f"{operand.source.spec} vs {list(want.shape[1:])} ({want.dtype}) in {reference.source.spec}"
            )
            ok = False
    if not ok:
        return None
    spec = _output_spec(tensor.output, reference, mapping.output_dtype)
    output = TensorSpec(spec.name, (rows.count, *spec.shape[1:]), spec.dtype)
    return RowMerge(
        output,
        config.method,
        _input(tensor.inputs[tensor.base]) if tensor.base is not None else None,
        tuple(_input(operand) for operand in tensor.models),
        resolve_params(config.method, tensor, problems),
        config.compute_dtype,
        config.seed,
        rows=rows,
    )


def _input(operand: Operand) -> Input:
    return operand.source.input(operand.name)


def resolve_params(method: MergeMethod, tensor: TensorMapping, problems: Problems) -> dict[str, object]:
    """Every parameter of ``method`` for one output tensor: per-model ones from each model's levels
    down to the tensor's levels, the others from the tensor's levels; then the method's default."""
    params: dict[str, object] = {}
    for param in method.params:
        if param.per_model:
            values = []
            for operand in tensor.models:
                value = _first_value(method, param.name, [*operand.levels, *tensor.levels], tensor)
                if value is None:
                    problems.add(
                        f"tensor {tensor.output!r}: no value of {param.name!r} applies for model {operand.source.spec}"
                    )
                values.append(value)
            params[param.name] = tuple(values)
        else:
            value = _first_value(method, param.name, tensor.levels, tensor)
            if value is None:
                problems.add(f"tensor {tensor.output!r}: no value of {param.name!r} applies")
            params[param.name] = value
    weights = params.get("weight")
    if method.check is not None and not any(value is None for value in _flat(params.values())):
        for line in method.check(params):
            problems.add(f"tensor {tensor.output!r}: {line}")
    for flag in ("normalize", "normalize_weights"):
        if params.get(flag) and isinstance(weights, tuple) and None not in weights and sum(weights) == 0:
            problems.add(f"tensor {tensor.output!r}: weights sum to 0, cannot normalize (set {flag}: false)")
    return params


def _flat(values) -> list[object]:
    return [item for value in values for item in (value if isinstance(value, tuple) else (value,))]


def _first_value(
    method: MergeMethod, name: str, levels: Sequence[dict], tensor: TensorMapping
) -> Scalar | None:
    """First value that applies to this tensor, from the most specific level down, else the default."""
    for level in levels:
        if name in level:
            value = resolve_value(level[name], tensor.output, tensor.position)
            if value is not None:
                return value
    param = method.param(name)
    return None if param is None else param.default


def _check_same_tensor(reference: Operand, other: Operand, problems: Problems) -> bool:
    """Shapes must match exactly; non-float tensors must also share a dtype. Reports and returns ok."""
    want = reference.source.tensors[reference.name]
    info = other.source.tensors.get(other.name)
    if info is None:
        problems.add(f"tensor {other.name!r} is missing in model {other.source.spec}")
        return False
    if info.shape != want.shape:
        hint = (
            " (different vocabulary sizes? tokenizer_source: union or base aligns them by token)"
            if VOCAB_TENSOR.search(other.name)
            else ""
        )
        problems.add(
            f"tensor {other.name!r}: shape {list(info.shape)} in {other.source.spec} vs "
            f"{list(want.shape)} in {reference.source.spec}{hint}"
        )
        return False
    both_float = info.dtype.is_floating_point and want.dtype.is_floating_point
    if info.dtype != want.dtype and not both_float:  # float inputs are all cast to the compute dtype
        problems.add(f"tensor {other.name!r}: dtype {info.dtype} in {other.source.spec} vs {want.dtype}")
        return False
    return True


def _output_spec(name: str, reference: Operand, output_dtype: torch.dtype | None) -> TensorSpec:
    """The output tensor's spec: shape of its reference, dtype from the config for float tensors."""
    info = reference.source.tensors[reference.name]
    dtype = output_dtype if (output_dtype is not None and info.dtype.is_floating_point) else info.dtype
    return TensorSpec(name, info.shape, dtype)
