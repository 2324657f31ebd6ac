"""``slices:`` configs — frankenmerges and per-slice merges — planned from headers alone.

Output layers are the slices' layer ranges, in order, renumbered 0, 1, 2, …  A layer range
``[start, end]`` is end-exclusive, as in mergekit: ``[0, 4]`` is layers 0, 1, 2, 3. Every source of one
slice spans the same number of layers; output layer ``i`` of a slice is merged from layer ``start + i``
of each source with the config's method (``passthrough``: one source, copied, optionally scaled), at
relative position ``t = i / (n − 1)`` for gradients. Parameter precedence: a source's ``parameters`` >
its slice's > the global ones.

Tensors outside the layers follow mergekit: those before the layers (embeddings) are merged from the
first slice's sources, those after (final norm, lm_head) from the last slice's, at position 0 (the
first value of a gradient). ``non_layer_source`` names one model to copy them from instead (a string),
or one per side (``{before: …, after: …}``). The output's config.json comes from the model providing
the embeddings, with its layer count and per-layer lists (e.g. ``layer_types``) rebuilt to match.

Architecture knowledge (layer names, layer-count key, before/after tensors) lives in
``mergebench.architecture``; nothing here is specific to one family.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from mergebench.architecture import ModelLayout, describe_model, layer_config_updates
from mergebench.config import MergeConfig
from mergebench.errors import ConfigError, MergebenchError, PlanError
from mergebench.io.checkpoint import Checkpoint
from mergebench.methods.registry import MergeMethod
from mergebench.plan import (
    MergeJob,
    MergePlan,
    Problems,
    TensorRef,
    build_job,
    check_same_tensor,
    output_spec,
    tokenizer_checkpoint,
)

END_EXCLUSIVE = "ranges are end-exclusive: [0, 4] means layers 0, 1, 2, 3"


# ---------------------------------------------------------------------------------------------------
# Config-only checks (called from config validation: no model files needed)


def non_layer_sources(config: MergeConfig) -> tuple[str | None, str | None]:
    """The explicit (before, after) non-layer source models, None where the default applies."""
    value = config.non_layer_source
    return (value.before, value.after) if value is not None else (None, None)


def check_slices_config(config: MergeConfig) -> None:
    """Source counts, equal lengths, base model presence, required parameters, non_layer_source."""
    method = config.method
    for i, slice_ in enumerate(config.slices or []):
        where = f"slices[{i}]"
        sources = slice_.sources
        first = sources[0].layer_range
        for j, source in enumerate(sources[1:], start=1):
            start, end = source.layer_range
            if end - start != first[1] - first[0]:
                raise ConfigError(
                    f"{where}.sources[{j}].layer_range: [{start}, {end}] spans {end - start} layers but "
                    f"{where}.sources[0] spans {first[1] - first[0]}; all sources of a slice must span the "
                    f"same number of layers ({END_EXCLUSIVE})"
                )
        base_index = _base_index(method, config.base_model, slice_.sources)
        if method.base == "required" and base_index is None:
            raise ConfigError(
                f"{where}.sources: merge_method {method.name!r} needs base_model "
                f"{config.base_model!r} among each slice's sources"
            )
        others = len(sources) - (1 if base_index is not None else 0)
        expected = method.models_other_than_base
        if expected is not None and others != expected:
            if method.base == "unused":
                raise ConfigError(
                    f"{where}.sources: merge_method {method.name!r} takes exactly {expected} source per "
                    f"slice, got {len(sources)}"
                )
            raise ConfigError(
                f"{where}.sources: merge_method {method.name!r} needs base_model and exactly {expected} "
                f"other source per slice, got {others} other"
            )
        if method.base == "required" and others == 0:
            raise ConfigError(
                f"{where}.sources: merge_method {method.name!r} needs a source other than base_model"
            )
        _check_required_in_slice(method, config, i, base_index)
    if non_layer_sources(config) == (None, None) and config.non_layer_source is not None:
        raise ConfigError("non_layer_source: give a model, or 'before' and/or 'after' with a model each")


def _base_index(method: MergeMethod, base_model: str | None, sources) -> int | None:
    if method.base != "required" or base_model is None:
        return None
    return next((j for j, source in enumerate(sources) if source.model == base_model), None)


def _check_required_in_slice(
    method: MergeMethod, config: MergeConfig, i: int, base_index: int | None
) -> None:
    slice_ = (config.slices or [])[i]
    for param in method.params:
        if param.default is not None or param.name in config.parameters or param.name in slice_.parameters:
            continue
        if not param.per_model:
            raise ConfigError(
                f"slices[{i}].parameters.{param.name}: required by merge_method {method.name!r}"
            )
        for j, source in enumerate(slice_.sources):
            if j != base_index and param.name not in source.parameters:
                raise ConfigError(
                    f"slices[{i}].sources[{j}].parameters.{param.name}: required by {method.name!r}"
                )


# ---------------------------------------------------------------------------------------------------
# Planning (headers only)


@dataclass(frozen=True)
class _Source:
    """One slice source, resolved against its checkpoint."""

    where: str
    checkpoint: Checkpoint
    layout: ModelLayout
    start: int
    end: int
    parameters: dict


@dataclass(frozen=True)
class _Slice:
    where: str
    sources: tuple[_Source, ...]
    base: int | None  # index into sources of the base model's source, for base-using methods
    parameters: dict

    @property
    def primary(self) -> _Source:
        """The source whose tensor names and shapes the output takes (the base's, else the first)."""
        return self.sources[self.base if self.base is not None else 0]

    @property
    def length(self) -> int:
        return self.sources[0].end - self.sources[0].start


def plan_slices_merge(config: MergeConfig, checkpoints: dict[str, Checkpoint]) -> MergePlan:
    """Plan a ``slices:`` config: every output tensor from headers, every mismatch reported up front."""
    method = config.method
    layouts: dict[str, ModelLayout] = {}  # in order of first mention
    wheres: dict[str, str] = {}  # config key where each model is first named
    slices = [
        _resolve_slice(config, i, checkpoints, layouts, wheres) for i in range(len(config.slices or []))
    ]
    before_spec, after_spec = non_layer_sources(config)
    for spec in (before_spec, after_spec):
        if spec is not None:
            _layout(spec, "non_layer_source", checkpoints, layouts, wheres)
    _check_compatible(layouts, wheres)
    before_layout = layouts[before_spec] if before_spec else slices[0].primary.layout
    after_layout = layouts[after_spec] if after_spec else slices[-1].primary.layout
    _check_ends_match(before_layout, after_layout)

    reference = checkpoints[before_layout.spec]
    output_dtype = config.output_dtype or _common_float_dtype(checkpoints, layouts, reference)
    prefix = before_layout.prefix
    problems = Problems()
    jobs: list[MergeJob] = []
    builder = _JobBuilder(config, method, output_dtype, problems)

    if before_spec:
        jobs += [
            builder.copy(name, TensorRef(checkpoints[before_spec], name)) for name in before_layout.before
        ]
    else:
        jobs += [
            builder.merge(name, slices[0], [name] * len(slices[0].sources), 0.0)
            for name in before_layout.before
        ]

    layer_sources: list[tuple[dict | None, str, int]] = []
    for slice_ in slices:
        n = slice_.length
        primary = slice_.primary
        for i in range(n):
            out_index = len(layer_sources)
            position = i / (n - 1) if n > 1 else 0.0
            rests = primary.layout.layers[primary.start + i]
            for source in slice_.sources:
                extra = set(source.layout.layers[source.start + i]) - set(rests)
                for rest in sorted(extra)[:5]:
                    problems.add(
                        f"tensor {source.layout.layer_tensor(source.start + i, rest)!r} of model "
                        f"{source.checkpoint.spec} has no counterpart in {primary.checkpoint.spec} "
                        f"(layer {primary.start + i})"
                    )
            for rest in rests:
                names = [source.layout.layer_tensor(source.start + i, rest) for source in slice_.sources]
                jobs.append(builder.merge(f"{prefix}{out_index}.{rest}", slice_, names, position))
            layer_sources.append((primary.checkpoint.config, primary.checkpoint.spec, primary.start + i))

    if after_spec:
        jobs += [builder.copy(name, TensorRef(checkpoints[after_spec], name)) for name in after_layout.after]
    else:
        jobs += [
            builder.merge(name, slices[-1], [name] * len(slices[-1].sources), 0.0)
            for name in after_layout.after
        ]
    problems.raise_if_any()

    updates = layer_config_updates(before_layout.family, reference.config, layer_sources)
    return MergePlan(
        jobs=jobs,
        reference=reference,
        tokenizer_source=tokenizer_checkpoint(config, checkpoints, reference),
        checkpoints=checkpoints,
        output_dtype=output_dtype,
        config_updates=updates if reference.config is not None else {},
    )


def _layout(
    spec: str,
    where: str,
    checkpoints: dict[str, Checkpoint],
    layouts: dict[str, ModelLayout],
    wheres: dict[str, str],
) -> ModelLayout:
    if spec not in layouts:
        wheres[spec] = where
        checkpoint = checkpoints[spec]
        try:
            layouts[spec] = describe_model(spec, checkpoint.config, checkpoint.tensors)
        except MergebenchError as exc:
            raise PlanError(f"{where}: {exc}") from None
    return layouts[spec]


def _resolve_slice(
    config: MergeConfig,
    i: int,
    checkpoints: dict[str, Checkpoint],
    layouts: dict[str, ModelLayout],
    wheres: dict[str, str],
) -> _Slice:
    entry = (config.slices or [])[i]
    sources = []
    for j, source in enumerate(entry.sources):
        where = f"slices[{i}].sources[{j}]"
        layout = _layout(source.model, f"{where}.model", checkpoints, layouts, wheres)
        start, end = source.layer_range
        if end > layout.num_layers:
            raise PlanError(
                f"{where}.layer_range: [{start}, {end}] is outside {source.model}'s {layout.num_layers} layers "
                f"(ranges are end-exclusive: the last layer is {layout.num_layers - 1}, so the end can be at "
                f"most {layout.num_layers})"
            )
        sources.append(_Source(where, checkpoints[source.model], layout, start, end, source.parameters))
    base = _base_index(config.method, config.base_model, entry.sources)
    return _Slice(f"slices[{i}]", tuple(sources), base, entry.parameters)


def _check_compatible(layouts: dict[str, ModelLayout], wheres: dict[str, str]) -> None:
    """One family, one way of naming the layers, one width: else stacked layers cannot fit together."""
    first, *others = layouts.values()
    for layout in others:
        key = wheres[layout.spec]
        if layout.kind != first.kind:
            raise PlanError(
                f"{key}: {layout.spec} is a {layout.kind} model but {first.spec} is {first.kind}; "
                "layers of different model families cannot be stacked or merged"
            )
        if layout.prefix != first.prefix:
            raise PlanError(
                f"{key}: {layout.spec} names its layers {layout.prefix}N but {first.spec} uses {first.prefix}N "
                "(saved from different model classes); save both the same way"
            )
        widths = (layout.hidden_size, first.hidden_size)
        if None not in widths and widths[0] != widths[1]:
            raise PlanError(
                f"{key}: {layout.spec} has hidden size {layout.hidden_size} ({layout.family.hidden_size_key}) but {first.spec} has "
                f"{first.hidden_size}; every layer of one output must have the same width"
            )


def _check_ends_match(before: ModelLayout, after: ModelLayout) -> None:
    """Embeddings and head come from models with one vocabulary and the same tying."""
    if before.spec == after.spec:
        return
    if (
        before.vocab_size is not None
        and after.vocab_size is not None
        and before.vocab_size != after.vocab_size
    ):
        raise PlanError(
            f"the embeddings come from {before.spec} (vocab_size {before.vocab_size}) but the tensors after "
            f"the layers from {after.spec} (vocab_size {after.vocab_size}); set non_layer_source"
        )
    if before.tied != after.tied:
        tied, untied = (before, after) if before.tied else (after, before)
        raise PlanError(
            f"{tied.spec} ties its output head to the embeddings but {untied.spec} does not, and the "
            f"output would take embeddings from {before.spec} and the head from {after.spec}; "
            "set non_layer_source to one of them"
        )


def _common_float_dtype(
    checkpoints: dict[str, Checkpoint], layouts: dict[str, ModelLayout], reference: Checkpoint
) -> torch.dtype | None:
    """None when every input stores floats alike; else the reference's dtype, so the output is uniform."""

    def main_dtype(checkpoint: Checkpoint) -> torch.dtype | None:
        counts = Counter(i.dtype for i in checkpoint.tensors.values() if i.dtype.is_floating_point)
        return counts.most_common(1)[0][0] if counts else None

    dtypes = {main_dtype(checkpoints[spec]) for spec in layouts} - {None}
    return main_dtype(reference) if len(dtypes) > 1 else None


class _JobBuilder:
    """Turns (output name, slice, input names, position) into a MergeJob, reporting mismatches."""

    def __init__(self, config: MergeConfig, method: MergeMethod, output_dtype, problems: Problems) -> None:
        self.config = config
        self.method = method
        self.output_dtype = output_dtype
        self.problems = problems

    def copy(self, name: str, ref: TensorRef) -> MergeJob:
        return MergeJob(output_spec(name, ref, self.output_dtype), (ref,))

    def merge(self, out_name: str, slice_: _Slice, names: list[str], position: float) -> MergeJob:
        refs = [
            TensorRef(source.checkpoint, name) for source, name in zip(slice_.sources, names, strict=True)
        ]
        primary_index = slice_.base if slice_.base is not None else 0
        primary = refs[primary_index]
        for index, ref in enumerate(refs):
            if index != primary_index:
                check_same_tensor(primary, ref, self.problems)
        output = output_spec(out_name, primary, self.output_dtype)
        if not primary.checkpoint.tensors[primary.name].dtype.is_floating_point:
            return MergeJob(output, (primary,))
        model_indices = [k for k in range(len(refs)) if k != slice_.base]
        job = build_job(
            output=output,
            method=self.method,
            base=refs[slice_.base] if slice_.base is not None else None,
            models=[refs[k] for k in model_indices],
            model_levels=[[slice_.sources[k].parameters] for k in model_indices],
            global_levels=[slice_.parameters, self.config.parameters],
            position=position,
            compute_dtype=self.config.compute_dtype,
            seed=self.config.seed,
            problems=self.problems,
        )
        if self.method.name == "passthrough" and job.global_params.get("scale") == 1.0:
            return MergeJob(output, job.models)  # an exact copy: skip the float32 round trip
        return job
