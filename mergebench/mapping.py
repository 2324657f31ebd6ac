"""Config + opened sources → what each output tensor is made of, from headers alone.

Two small front ends, one for each config form, produce the same list: for every output tensor, its
input tensors (config order, which one is the base), the parameter levels that apply to each, and the
tensor's relative layer position for gradients. ``plan`` turns that list into ops; nothing here knows
about methods' arithmetic.

``models:`` — every tensor of the reference model (``base_model``, else the first model) is merged
across all inputs, at position i / (n − 1) for layer i of n. Parameter precedence: a model's
``parameters`` > the global ones.

``slices:`` — frankenmerges and per-slice merges. Output layers are the slices' layer ranges, in order,
renumbered 0, 1, 2, …  A layer range ``[start, end]`` is end-exclusive, as in mergekit: ``[0, 4]`` is
layers 0, 1, 2, 3. Every source of one slice spans the same number of layers; output layer ``i`` of a
slice is merged from layer ``start + i`` of each source, at position ``i / (n − 1)``. Parameter
precedence: a source's ``parameters`` > its slice's > the global ones. Tensors outside the layers follow
mergekit: those before the layers (embeddings) are merged from the first slice's sources, those after
(final norm, lm_head) from the last slice's, at position 0. ``non_layer_source`` names one model to copy
them from instead (a string), or one per side (``{before: …, after: …}``). The output's config.json comes
from the model providing the embeddings, with its layer count and per-layer lists rebuilt to match.
Architecture knowledge (layer names, before/after tensors, config keys) lives in ``architecture``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from mergebench.architecture import (
    ModelLayout,
    describe_model,
    layer_config_updates,
    layer_count,
    layer_index,
)
from mergebench.config import MergeConfig, base_index
from mergebench.errors import ConfigError, MergebenchError, PlanError
from mergebench.sources import Source
from mergebench.vocab import OutputTokenizer, RowSources, Vocabulary, plan_vocabulary

MAX_REPORTED_PROBLEMS = 50


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


@dataclass(frozen=True, eq=False)
class Operand:
    """One input tensor of an output tensor, with the model-level parameter dicts that apply to it."""

    source: Source
    name: str
    levels: tuple[dict, ...] = ()


@dataclass(frozen=True)
class TensorMapping:
    """What one output tensor is made of."""

    output: str
    inputs: tuple[Operand, ...]  # config order
    base: int | None  # index into ``inputs`` of the base model's tensor, when the method uses one
    reference: Operand  # the tensor whose shape and dtype the output takes; inputs must match it
    levels: tuple[dict, ...]  # tensor-level parameter dicts (slice, global), most specific first
    position: float  # relative layer position in [0, 1] for gradients
    copy: bool = False  # take ``reference`` as it is (no method)
    rows: RowSources | None = None  # a vocabulary tensor aligned by token (tokenizer merging: vocab.py)

    @property
    def models(self) -> tuple[Operand, ...]:
        return tuple(op for i, op in enumerate(self.inputs) if i != self.base)


@dataclass
class Mapping:
    """Every output tensor in output order, plus what the output's non-tensor files come from."""

    tensors: list[TensorMapping]
    reference: Source  # config.json and generation config
    tokenizer_source: Source
    output_dtype: torch.dtype | None
    config_updates: dict[str, object] = field(default_factory=dict)
    tokenizer: OutputTokenizer | None = None  # written instead of copied when tokenizer keys are set


def map_tensors(config: MergeConfig, sources: dict[str, Source], problems: Problems) -> Mapping:
    """The front end for the config's form."""
    if config.slices is not None:
        return map_slices(config, sources, problems)
    return map_models(config, sources, problems)


def tokenizer_source(config: MergeConfig, sources: dict[str, Source], reference: Source) -> Source:
    """Whose tokenizer files are copied when the output's tokenizer is one of the inputs' unchanged:
    the reference model ('base', 'union', default), or the model named by ``tokenizer_source`` or
    ``tokenizer.source``. (Building a merged vocabulary is ``vocab.plan_vocabulary``.)"""
    key = "tokenizer.source" if config.tokenizer is not None else "tokenizer_source"
    name = config.tokenizer.source if config.tokenizer is not None else config.tokenizer_source
    if name in (None, "base", "union"):
        return reference
    if name in sources:
        return sources[name]
    raise ConfigError(f"{key}: {name!r} is neither 'base', 'union' nor a model named in the config")


# ---------------------------------------------------------------------------------------------------
# models:


def relative_position(name: str, num_layers: int) -> float:
    """Where a tensor sits for gradients: i / (n − 1) inside the layers, 0 outside them."""
    index = layer_index(name)
    if index is None or num_layers <= 1:
        return 0.0
    return index / (num_layers - 1)


def map_models(config: MergeConfig, sources: dict[str, Source], problems: Problems) -> Mapping:
    """Every tensor of the reference model, merged across all inputs."""
    method = config.method
    entries = config.models or []
    listed = list(dict.fromkeys(entry.model for entry in entries))
    reference = sources[config.base_model or listed[0]]
    base_spec = config.base_model if method.uses_base(config.base_model is not None) else None
    method_models = [entry for entry in entries if entry.model != base_spec]
    # A model listed twice keeps its first entry's parameters.
    method_models = list({entry.model: entry for entry in reversed(method_models)}.values())[::-1]
    num_layers = layer_count(reference.config, reference.tensors)
    specs = ([base_spec] if base_spec else []) + [entry.model for entry in method_models]
    files_source = tokenizer_source(config, sources, reference)
    vocab = plan_vocabulary(config, sources, reference, files_source)
    rows = vocab.rows_for(specs, 0 if base_spec is not None else None) if vocab is not None else None
    tensors = []
    for name in reference.tensors:
        inputs = [Operand(sources[entry.model], name, (entry.parameters,)) for entry in method_models]
        if base_spec is not None:
            inputs.insert(0, Operand(sources[base_spec], name))
        tensors.append(
            TensorMapping(
                output=name,
                inputs=tuple(inputs),
                base=0 if base_spec is not None else None,
                reference=Operand(reference, name),
                levels=(config.parameters,),
                position=relative_position(name, num_layers),
                rows=rows if vocab is not None and name in vocab.tensors else None,
            )
        )
    for spec in specs:
        extra = sorted(set(sources[spec].tensors) - set(reference.tensors))
        for name in extra[:5]:
            problems.add(f"tensor {name!r} of model {spec} is not in {reference.spec}")
    return Mapping(
        tensors,
        reference,
        files_source,
        config.output_dtype,
        vocab.config_updates if rows is not None and vocab is not None else {},
        vocab.tokenizer if vocab is not None else None,
    )


# ---------------------------------------------------------------------------------------------------
# slices:


@dataclass(frozen=True)
class _SliceSource:
    source: Source
    layout: ModelLayout
    start: int
    parameters: dict


@dataclass(frozen=True)
class _Slice:
    sources: tuple[_SliceSource, ...]
    base: int | None  # index of the base model's source, for methods that use one
    parameters: dict
    length: int

    @property
    def primary(self) -> int:
        """The source whose tensor names and shapes the output takes (the base's, else the first)."""
        return self.base if self.base is not None else 0


class _Layouts:
    """Each model's layout, described once, remembering the config key that first named it."""

    def __init__(self, sources: dict[str, Source]) -> None:
        self.sources = sources
        self.layouts: dict[str, ModelLayout] = {}  # in order of first mention
        self.wheres: dict[str, str] = {}

    def get(self, spec: str, where: str) -> ModelLayout:
        if spec not in self.layouts:
            self.wheres[spec] = where
            source = self.sources[spec]
            try:
                self.layouts[spec] = describe_model(spec, source.config, source.tensors)
            except MergebenchError as exc:
                raise PlanError(f"{where}: {exc}") from None
        return self.layouts[spec]


def map_slices(config: MergeConfig, sources: dict[str, Source], problems: Problems) -> Mapping:
    """Every output tensor of a ``slices:`` config, every layout mismatch reported up front."""
    layouts = _Layouts(sources)
    slices = [_resolve_slice(config, i, sources, layouts) for i in range(len(config.slices or []))]
    before_spec, after_spec = config.non_layer_models()
    for spec in (before_spec, after_spec):
        if spec is not None:
            layouts.get(spec, "non_layer_source")
    _check_compatible(layouts)
    before_layout = (
        layouts.layouts[before_spec] if before_spec else slices[0].sources[slices[0].primary].layout
    )
    after_layout = (
        layouts.layouts[after_spec] if after_spec else slices[-1].sources[slices[-1].primary].layout
    )
    _check_ends_match(before_layout, after_layout)
    reference = sources[before_layout.spec]
    output_dtype = config.output_dtype or _common_float_dtype(sources, layouts.layouts, reference)
    global_levels = (config.parameters,)

    def merged(out_name: str, slice_: _Slice, names: list[str], position: float) -> TensorMapping:
        inputs = tuple(
            Operand(s.source, name, (s.parameters,)) for s, name in zip(slice_.sources, names, strict=True)
        )
        return TensorMapping(
            out_name,
            inputs,
            slice_.base,
            inputs[slice_.primary],
            (slice_.parameters, *global_levels),
            position,
        )

    def outside(names: tuple[str, ...], spec: str | None, slice_: _Slice) -> list[TensorMapping]:
        if spec is None:
            return [merged(name, slice_, [name] * len(slice_.sources), 0.0) for name in names]
        copies = []
        for name in names:
            operand = Operand(sources[spec], name)
            copies.append(TensorMapping(name, (operand,), None, operand, (), 0.0, copy=True))
        return copies

    tensors = outside(before_layout.before, before_spec, slices[0])
    layer_sources: list[tuple[dict | None, str, int]] = []
    prefix = before_layout.prefix
    for slice_ in slices:
        n = slice_.length
        primary = slice_.sources[slice_.primary]
        for i in range(n):
            out_index = len(layer_sources)
            position = i / (n - 1) if n > 1 else 0.0
            rests = primary.layout.layers[primary.start + i]
            for s in slice_.sources:
                extra = set(s.layout.layers[s.start + i]) - set(rests)
                for rest in sorted(extra)[:5]:
                    problems.add(
                        f"tensor {s.layout.layer_tensor(s.start + i, rest)!r} of model "
                        f"{s.source.spec} has no counterpart in {primary.source.spec} "
                        f"(layer {primary.start + i})"
                    )
            for rest in rests:
                names = [s.layout.layer_tensor(s.start + i, rest) for s in slice_.sources]
                tensors.append(merged(f"{prefix}{out_index}.{rest}", slice_, names, position))
            layer_sources.append((primary.source.config, primary.source.spec, primary.start + i))
    tensors += outside(after_layout.after, after_spec, slices[-1])
    if problems.lines:
        return Mapping(tensors, reference, reference, output_dtype)
    updates = layer_config_updates(before_layout.family, reference.config, layer_sources)
    files_source = tokenizer_source(config, sources, reference)
    vocab = plan_vocabulary(config, sources, reference, files_source)
    if vocab is not None:
        _check_slices_vocab(vocab, [tensors[0], tensors[-1]])
    return Mapping(
        tensors,
        reference,
        files_source,
        output_dtype,
        updates if reference.config is not None else {},
        vocab.tokenizer if vocab is not None else None,
    )


def _check_slices_vocab(vocab: Vocabulary, ends: list[TensorMapping]) -> None:
    """A slices merge takes its tokenizer keys only where no row needs re-aligning: aligning rows by
    token is done for ``models:`` configs (whose every tensor has the same inputs)."""
    for tensor in ends:
        specs = [operand.source.spec for operand in tensor.inputs]
        if vocab.rows_for(specs, tensor.base) is not None:
            raise PlanError(
                f"tokenizer: the tensors outside the layers come from {', '.join(dict.fromkeys(specs))}, "
                "whose vocabularies differ from the output's; aligning embeddings by token is supported "
                "for 'models' configs, not 'slices'"
            )


def _resolve_slice(config: MergeConfig, i: int, sources: dict[str, Source], layouts: _Layouts) -> _Slice:
    entry = (config.slices or [])[i]
    resolved = []
    for j, source in enumerate(entry.sources):
        where = f"slices[{i}].sources[{j}]"
        layout = layouts.get(source.model, f"{where}.model")
        start, end = source.layer_range
        if end > layout.num_layers:
            raise PlanError(
                f"{where}.layer_range: [{start}, {end}] is outside {source.model}'s {layout.num_layers} layers "
                f"(ranges are end-exclusive: the last layer is {layout.num_layers - 1}, so the end can be at "
                f"most {layout.num_layers})"
            )
        resolved.append(_SliceSource(sources[source.model], layout, start, source.parameters))
    start, end = entry.sources[0].layer_range
    return _Slice(tuple(resolved), base_index(config, entry), entry.parameters, end - start)


def _check_compatible(layouts: _Layouts) -> None:
    """One family, one way of naming the layers, one width: else stacked layers cannot fit together."""
    first, *others = layouts.layouts.values()
    for layout in others:
        key = layouts.wheres[layout.spec]
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
                f"{key}: {layout.spec} has hidden size {layout.hidden_size} ({layout.family.hidden_size_key}) "
                f"but {first.spec} has {first.hidden_size}; every layer of one output must have the same width"
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
    sources: dict[str, Source], layouts: dict[str, ModelLayout], reference: Source
) -> torch.dtype | None:
    """None when every input stores floats alike; else the reference's dtype, so the output is uniform."""

    def main_dtype(source: Source) -> torch.dtype | None:
        counts = Counter(i.dtype for i in source.tensors.values() if i.dtype.is_floating_point)
        return counts.most_common(1)[0][0] if counts else None

    dtypes = {main_dtype(sources[spec]) for spec in layouts} - {None}
    return main_dtype(reference) if len(dtypes) > 1 else None
