"""Config + opened checkpoints → the list of output-tensor jobs, from headers alone.

Every mismatch (missing tensor, shape or dtype disagreement, unresolved parameter) is collected
here, so a user sees all problems in seconds, before any tensor data is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mergebench.architecture import layer_count, layer_index
from mergebench.config import MergeConfig, Scalar, resolve_value
from mergebench.errors import ConfigError, PlanError
from mergebench.io.checkpoint import Checkpoint
from mergebench.io.writer import TensorSpec
from mergebench.methods.registry import MergeMethod

MAX_REPORTED_PROBLEMS = 50


@dataclass(frozen=True)
class TensorRef:
    """One input tensor: which checkpoint, which name."""

    checkpoint: Checkpoint
    name: str

    @property
    def nbytes(self) -> int:
        return self.checkpoint.tensors[self.name].nbytes

    def read(self, buffer: torch.Tensor | None = None) -> torch.Tensor:
        return self.checkpoint.read(self.name, buffer)


@dataclass(frozen=True)
class MergeJob:
    """How to produce one output tensor. ``method`` None means: copy ``models[0]`` unchanged."""

    output: TensorSpec
    models: tuple[TensorRef, ...]
    base: TensorRef | None = None
    method: MergeMethod | None = None
    model_params: dict[str, tuple[Scalar, ...]] = field(default_factory=dict)
    global_params: dict[str, Scalar] = field(default_factory=dict)
    compute_dtype: torch.dtype | None = None
    seed: int = 0

    @property
    def inputs(self) -> tuple[TensorRef, ...]:
        return (self.base, *self.models) if self.base is not None else self.models

    @property
    def input_bytes(self) -> int:
        return sum(ref.nbytes for ref in self.inputs)


@dataclass
class MergePlan:
    """Jobs in output order, plus the checkpoint whose config.json and tokenizer the output takes."""

    jobs: list[MergeJob]
    reference: Checkpoint
    tokenizer_source: Checkpoint
    checkpoints: dict[str, Checkpoint]
    output_dtype: torch.dtype | None = None
    config_updates: dict[str, object] = field(default_factory=dict)

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [job.output for job in self.jobs]

    @property
    def output_bytes(self) -> int:
        return sum(spec.nbytes for spec in self.output_specs)

    @property
    def input_bytes(self) -> int:
        return sum(job.input_bytes for job in self.jobs)


class Problems:
    """Collects every planning problem, then raises them together as one PlanError."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)

    def raise_if_any(self) -> None:
        if not self.lines:
            return
        shown = self.lines[:MAX_REPORTED_PROBLEMS]
        if len(self.lines) > len(shown):
            shown.append(f"… and {len(self.lines) - len(shown)} more problems")
        raise PlanError("\n".join(shown))


def relative_position(name: str, num_layers: int) -> float:
    """Where a tensor sits for gradients: i / (n − 1) inside the layers, 0 outside them."""
    index = layer_index(name)
    if index is None or num_layers <= 1:
        return 0.0
    return index / (num_layers - 1)


def resolve_param(
    method: MergeMethod, name: str, levels: Sequence[dict], tensor_name: str, position: float
) -> Scalar | None:
    """First value that applies to this tensor, from the most specific level down, else the default."""
    for level in levels:
        if name in level:
            value = resolve_value(level[name], tensor_name, position)
            if value is not None:
                return value
    param = method.param(name)
    return None if param is None else param.default


def build_job(
    *,
    output: TensorSpec,
    method: MergeMethod,
    base: TensorRef | None,
    models: Sequence[TensorRef],
    model_levels: Sequence[Sequence[dict]],
    global_levels: Sequence[dict],
    position: float,
    compute_dtype: torch.dtype | None,
    seed: int,
    problems: Problems,
) -> MergeJob:
    """Resolve every parameter of ``method`` for one output tensor and package the job."""
    model_params: dict[str, tuple[Scalar, ...]] = {}
    global_params: dict[str, Scalar] = {}
    for param in method.params:
        if param.per_model:
            values = []
            for ref, levels in zip(models, model_levels, strict=True):
                value = resolve_param(method, param.name, [*levels, *global_levels], output.name, position)
                if value is None:
                    problems.add(
                        f"tensor {output.name!r}: no value of {param.name!r} applies for model {ref.checkpoint.spec}"
                    )
                values.append(value)
            model_params[param.name] = tuple(values)
        else:
            value = resolve_param(method, param.name, global_levels, output.name, position)
            if value is None:
                problems.add(f"tensor {output.name!r}: no value of {param.name!r} applies")
            global_params[param.name] = value
    if global_params.get("normalize") and "weight" in model_params:
        weights = model_params["weight"]
        if None not in weights and sum(weights) == 0:  # type: ignore[arg-type]
            problems.add(f"tensor {output.name!r}: weights sum to 0, cannot normalize (set normalize: false)")
    return MergeJob(output, tuple(models), base, method, model_params, global_params, compute_dtype, seed)


def check_same_tensor(reference: TensorRef, other: TensorRef, problems: Problems) -> bool:
    """Shapes must match exactly; non-float tensors must also share a dtype. Reports and returns ok."""
    want = reference.checkpoint.tensors[reference.name]
    info = other.checkpoint.tensors.get(other.name)
    if info is None:
        problems.add(f"tensor {other.name!r} is missing in model {other.checkpoint.spec}")
        return False
    if info.shape != want.shape:
        hint = " (different vocabulary sizes?)" if _looks_like_vocab(other.name) else ""
        problems.add(
            f"tensor {other.name!r}: shape {list(info.shape)} in {other.checkpoint.spec} vs "
            f"{list(want.shape)} in {reference.checkpoint.spec}{hint}"
        )
        return False
    both_float = info.dtype.is_floating_point and want.dtype.is_floating_point
    if info.dtype != want.dtype and not both_float:  # float inputs are all cast to the compute dtype
        problems.add(f"tensor {other.name!r}: dtype {info.dtype} in {other.checkpoint.spec} vs {want.dtype}")
        return False
    return True


def _looks_like_vocab(name: str) -> bool:
    return any(key in name for key in ("embed", "lm_head", "wte", "word_embeddings", "output.weight"))


def output_spec(name: str, source: TensorRef, output_dtype: torch.dtype | None) -> TensorSpec:
    """The output tensor's spec: shape of its source, dtype from the config for float tensors."""
    info = source.checkpoint.tensors[source.name]
    dtype = output_dtype if (output_dtype is not None and info.dtype.is_floating_point) else info.dtype
    return TensorSpec(name, info.shape, dtype)


def plan_models_merge(config: MergeConfig, checkpoints: dict[str, Checkpoint]) -> MergePlan:
    """Plan a ``models:`` config: every tensor of the reference model, merged across all inputs."""
    method = config.method
    entries = config.models or []
    listed = list(dict.fromkeys(entry.model for entry in entries))
    reference = checkpoints[config.base_model or listed[0]]
    uses_base = method.base == "required"
    base_spec = config.base_model if uses_base else None
    method_models = [entry for entry in entries if entry.model != base_spec]
    # A model listed twice keeps its first entry's parameters.
    method_models = list({entry.model: entry for entry in reversed(method_models)}.values())[::-1]
    num_layers = layer_count(reference.config, reference.tensors)
    problems = Problems()
    jobs: list[MergeJob] = []
    input_specs = ([base_spec] if base_spec else []) + [entry.model for entry in method_models]
    for name, info in reference.tensors.items():
        refs = {spec: TensorRef(checkpoints[spec], name) for spec in input_specs}
        ref0 = TensorRef(reference, name)
        if not all([check_same_tensor(ref0, ref, problems) for ref in refs.values()]):
            continue
        output = output_spec(name, ref0, config.output_dtype)
        if not info.dtype.is_floating_point:
            jobs.append(MergeJob(output, (ref0,)))
            continue
        jobs.append(
            build_job(
                output=output,
                method=method,
                base=refs[base_spec] if base_spec else None,
                models=[refs[entry.model] for entry in method_models],
                model_levels=[[entry.parameters] for entry in method_models],
                global_levels=[config.parameters],
                position=relative_position(name, num_layers),
                compute_dtype=config.compute_dtype,
                seed=config.seed,
                problems=problems,
            )
        )
    for spec in input_specs:
        extra = sorted(set(checkpoints[spec].tensors) - set(reference.tensors))
        for name in extra[:5]:
            problems.add(f"tensor {name!r} of model {spec} is not in {reference.spec}")
    problems.raise_if_any()
    return MergePlan(
        jobs=jobs,
        reference=reference,
        tokenizer_source=tokenizer_checkpoint(config, checkpoints, reference),
        checkpoints=checkpoints,
        output_dtype=config.output_dtype,
    )


def tokenizer_checkpoint(
    config: MergeConfig, checkpoints: dict[str, Checkpoint], reference: Checkpoint
) -> Checkpoint:
    """``tokenizer_source``: 'base' (default) → the reference model, or a model named in the config."""
    source = config.tokenizer_source
    if source in (None, "base"):
        return reference
    if source in checkpoints:
        return checkpoints[source]
    raise ConfigError(
        f"tokenizer_source: {source!r} is neither 'base' nor a model named in the config"
        + (" ('union' vocabularies are not supported)" if source == "union" else "")
    )
