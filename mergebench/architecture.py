"""What differs between model families — the one place that knows about architectures.

For each supported family: how its tensor names carry the layer index (``model.layers.12.…``,
``transformer.h.3.…``, ``bert.encoder.layer.0.…``), which config.json key holds the layer count and the
hidden size, which non-layer tensors sit before the layers (embeddings) and which after them (final
norm, lm_head, pooler), whether embeddings are tied by default, and which config.json lists hold one
entry per layer. A family is recognised from config.json (``model_type``, else ``architectures``), or
from the tensor names alone when there is no config; anything else is refused with a message saying
what was not understood, never merged as a guess.

``layer_index``/``layer_count`` are the lightweight helpers the ``models:`` planner uses for gradients.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from mergebench.errors import PlanError

# "model.layers.12.self_attn...", "transformer.h.3.attn...", "encoder.layer.0...", "gpt_neox.layers.5..."
LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block)\.(\d+)\.")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")

# Module-path prefixes that model classes wrap around the base model: PEFT names modules from the class
# it trained (``transformer.h.0…``) while a checkpoint may store them without it (``h.0…``), or with another.
WRAPPER_PREFIXES = ("model", "transformer", "base_model", "language_model", "model.language_model")
# Tensors whose first dimension is the vocabulary (embeddings and output heads), across families.
VOCAB_TENSOR = re.compile(r"embed|lm_head|wte|word_embeddings|output\.weight")
# Embedding modules as PEFT names them, when the model class cannot be instantiated to ask.
EMBEDDING_MODULE = re.compile(r"(^|\.)(embed[^.]*|wte|wpe|word_embeddings)$")

# config.json lists with one entry per layer (transformers names): sliced along with the layers.
PER_LAYER_KEYS = ("layer_types", "mlp_layer_types", "no_rope_layers", "layers_block_type")


@dataclass(frozen=True)
class Family:
    """How one family of checkpoints is laid out. Patterns are regexes searched in full tensor names."""

    name: str
    model_types: tuple[str, ...]  # config.json ``model_type`` values with this layout
    class_stems: tuple[str, ...]  # ``architectures`` class-name stems ("Llama" of "LlamaForCausalLM")
    blocks: str  # the module list holding the layers: "layers", "h", "encoder.layer"
    before: tuple[str, ...]  # non-layer tensors that come before the layers (embeddings)
    after: tuple[str, ...]  # non-layer tensors that come after them (final norm, heads)
    layer_count_key: str = "num_hidden_layers"
    hidden_size_key: str = "hidden_size"
    tied_by_default: tuple[str, ...] = ()  # model types whose embeddings are tied when config is silent
    # Tensors indexed by token id along dim 0 (embeddings, output head and its bias): what a tokenizer
    # merge re-aligns row by row. Explicit per family, because VOCAB_TENSOR also matches e.g. BERT's
    # position embeddings.
    vocab: tuple[str, ...] = ()

    @cached_property
    def layer_regex(self) -> re.Pattern[str]:
        # Shortest prefix: the first "<blocks>.<N>." in the name is the layer (experts etc. nest deeper).
        return re.compile(
            rf"^(?P<prefix>(?:[^.]+\.)*?{re.escape(self.blocks)}\.)(?P<index>\d+)\.(?P<rest>.+)$"
        )

    def position(self, name: str) -> str | None:
        """'before' or 'after' for a non-layer tensor this family knows, else None."""
        if any(re.search(pattern, name) for pattern in self.before):
            return "before"
        if any(re.search(pattern, name) for pattern in self.after):
            return "after"
        return None


FAMILIES: tuple[Family, ...] = (
    Family(
        "llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"),
        class_stems=("Llama", "Mistral", "Qwen2", "Qwen3", "Gemma", "Gemma2", "Gemma3", "Phi3"),
        blocks="layers",
        before=(r"(?:^|\.)embed_tokens\.", r"(?:^|\.)rotary_emb\."),
        after=(r"(?:^|\.)norm\.", r"^lm_head\.", r"^score\."),
        tied_by_default=("gemma", "gemma2", "gemma3_text"),
        vocab=(r"(?:^|\.)embed_tokens\.weight$", r"^lm_head\.weight$"),
    ),
    Family(
        "gpt2",
        model_types=("gpt2",),
        class_stems=("GPT2",),
        blocks="h",
        before=(r"(?:^|\.)wte\.", r"(?:^|\.)wpe\."),
        after=(r"(?:^|\.)ln_f\.", r"^lm_head\.", r"^score\."),
        layer_count_key="n_layer",
        hidden_size_key="n_embd",
        tied_by_default=("gpt2",),
        vocab=(r"(?:^|\.)wte\.weight$", r"^lm_head\.weight$"),
    ),
    Family(
        "gpt_neox",
        model_types=("gpt_neox",),
        class_stems=("GPTNeoX",),
        blocks="layers",
        before=(r"(?:^|\.)embed_in\.", r"(?:^|\.)rotary_emb\."),
        after=(r"(?:^|\.)final_layer_norm\.", r"^embed_out\.", r"^score\."),
        vocab=(r"(?:^|\.)embed_in\.weight$", r"^embed_out\.weight$"),
    ),
    Family(
        "bert",
        model_types=("bert", "roberta", "xlm-roberta"),
        class_stems=("Bert", "Roberta", "XLMRoberta"),
        blocks="encoder.layer",
        before=(r"(?:^|\.)embeddings\.",),
        after=(r"(?:^|\.)pooler\.", r"^cls\.", r"^lm_head\.", r"^classifier\.", r"^qa_outputs\."),
        tied_by_default=("bert", "roberta", "xlm-roberta"),
        vocab=(
            r"(?:^|\.)word_embeddings\.weight$",
            r"^cls\.predictions\.bias$",
            r"^cls\.predictions\.decoder\.(?:weight|bias)$",
            r"^lm_head\.bias$",
            r"^lm_head\.decoder\.(?:weight|bias)$",
        ),
    ),
)
_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}
_CLASS_SUFFIX = re.compile(
    r"^(?P<stem>.+?)(?:ForCausalLM|LMHeadModel|Model|ForMaskedLM|ForSequenceClassification|"
    r"ForTokenClassification|ForQuestionAnswering|ForPreTraining)$"
)


def supported_model_types() -> str:
    return ", ".join(model_type for family in FAMILIES for model_type in family.model_types)


@dataclass(frozen=True)
class ModelLayout:
    """One checkpoint seen through its family: layers by index, non-layer tensors before and after."""

    spec: str
    family: Family
    kind: str  # config's model_type, or the family name when there is no config
    prefix: str  # everything before the layer index, e.g. "model.layers."
    layers: tuple[tuple[str, ...], ...]  # per layer: the names after "<prefix><index>.", in file order
    before: tuple[str, ...]
    after: tuple[str, ...]
    hidden_size: int | None
    vocab_size: int | None
    tied: bool

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_tensor(self, index: int, rest: str) -> str:
        """Full name of tensor ``rest`` of layer ``index`` in this layout."""
        return f"{self.prefix}{index}.{rest}"


def detect_family(spec: str, config: Mapping | None, tensor_names: Iterable[str]) -> tuple[Family, str]:
    """The family of a checkpoint and its kind (model_type), from config.json, else from tensor names."""
    config = config or {}
    model_type = config.get("model_type")
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    if isinstance(model_type, str) and model_type:
        family = _BY_MODEL_TYPE.get(model_type)
        if family is None:
            classes = f" ({', '.join(architectures)})" if architectures else ""
            raise PlanError(
                f"{spec}: model_type {model_type!r}{classes} is not a supported architecture for layer "
                f"slices (supported: {supported_model_types()})"
            )
        return family, model_type
    for architecture in architectures:
        match = _CLASS_SUFFIX.match(architecture)
        stem = match.group("stem") if match else None
        for family in FAMILIES:
            if stem in family.class_stems:
                # stems and model types are listed in the same order
                return family, family.model_types[family.class_stems.index(stem)]
    if architectures:
        raise PlanError(
            f"{spec}: architecture {', '.join(architectures)} is not supported for layer slices "
            f"(supported model types: {supported_model_types()})"
        )
    names = list(tensor_names)
    matching = [family for family in FAMILIES if _names_fit(family, names)]
    if not matching:
        example = names[0] if names else "(no tensors)"
        raise PlanError(
            f"{spec}: cannot tell the architecture: config.json has no model_type, and tensor names such "
            f"as {example!r} match no known layout (supported model types: {supported_model_types()})"
        )
    return matching[0], matching[0].name


def _names_fit(family: Family, names: list[str]) -> bool:
    has_layers = False
    for name in names:
        if family.layer_regex.match(name):
            has_layers = True
        elif family.position(name) is None:
            return False
    return has_layers and any(family.position(name) == "before" for name in names)


def describe_model(spec: str, config: Mapping | None, tensor_names: Iterable[str]) -> ModelLayout:
    """Split a checkpoint's tensors into layers and non-layer tensors, checked against config.json."""
    names = list(tensor_names)
    family, kind = detect_family(spec, config, names)
    config = config or {}
    prefixes: dict[str, str] = {}
    by_layer: dict[int, list[str]] = {}
    before: list[str] = []
    after: list[str] = []
    for name in names:
        match = family.layer_regex.match(name)
        if match:
            prefixes.setdefault(match["prefix"], name)
            by_layer.setdefault(int(match["index"]), []).append(match["rest"])
            continue
        position = family.position(name)
        if position is None:
            raise PlanError(
                f"{spec}: tensor {name!r} is neither in a layer ({family.blocks}.N) nor a known tensor "
                f"before or after the layers of a {kind} model; this checkpoint layout is not supported"
            )
        (before if position == "before" else after).append(name)
    if not by_layer:
        raise PlanError(
            f"{spec}: no layer tensors found (expected names like '…{family.blocks}.0.…' for {kind})"
        )
    if len(prefixes) > 1:
        first, second = list(prefixes.values())[:2]
        raise PlanError(
            f"{spec}: layers are stored in two places ({first!r} and {second!r}); "
            "models with several layer stacks are not supported"
        )
    count = max(by_layer) + 1
    stated = config.get(family.layer_count_key)
    missing = [i for i in range(count) if i not in by_layer]
    if isinstance(stated, int) and stated != count:
        raise PlanError(
            f"{spec}: config.json says {family.layer_count_key} = {stated}, but the tensors hold "
            f"{count} layers"
        )
    if missing:
        raise PlanError(
            f"{spec}: layer {missing[0]} has no tensors (the tensors hold layers up to {count - 1})"
        )
    tied = config.get("tie_word_embeddings")
    if not isinstance(tied, bool):
        tied = kind in family.tied_by_default
    hidden = config.get(family.hidden_size_key)
    vocab = config.get("vocab_size")
    return ModelLayout(
        spec=spec,
        family=family,
        kind=kind,
        prefix=next(iter(prefixes)),
        layers=tuple(tuple(by_layer[i]) for i in range(count)),
        before=tuple(before),
        after=tuple(after),
        hidden_size=hidden if isinstance(hidden, int) else None,
        vocab_size=vocab if isinstance(vocab, int) else None,
        tied=tied,
    )


def vocab_tensor_names(spec: str, config: Mapping | None, tensor_names: Iterable[str]) -> list[str]:
    """The tensors of a checkpoint whose dim 0 is the vocabulary (its family's ``vocab`` patterns), in
    file order: a tokenizer merge aligns exactly these by token."""
    names = list(tensor_names)
    family, _ = detect_family(spec, config, names)
    return [name for name in names if any(re.search(pattern, name) for pattern in family.vocab)]


def layer_config_updates(
    family: Family, reference: Mapping | None, layer_sources: list[tuple[Mapping | None, str, int]]
) -> dict[str, object]:
    """config.json changes for an output whose layer k is layer ``index`` of a model with config ``cfg``.

    ``layer_sources`` holds ``(cfg, spec, index)`` per output layer. Sets the family's layer-count key
    and rebuilds every per-layer list the reference config has, entry by entry from each layer's source.
    """
    updates: dict[str, object] = {family.layer_count_key: len(layer_sources)}
    for key in PER_LAYER_KEYS:
        if not isinstance((reference or {}).get(key), list):
            continue
        values = []
        for cfg, spec, index in layer_sources:
            entries = (cfg or {}).get(key)
            count = (cfg or {}).get(family.layer_count_key)
            if not isinstance(entries, list) or (isinstance(count, int) and len(entries) != count):
                raise PlanError(
                    f"{spec}: config.json has no per-layer list {key!r} matching its layers, "
                    "but the output's config needs one entry per layer"
                )
            values.append(entries[index])
        updates[key] = values
    return updates


def layer_index(tensor_name: str) -> int | None:
    """The transformer block a tensor belongs to, or None for embeddings, final norm, lm_head."""
    match = LAYER_PATTERN.search(tensor_name)
    return int(match.group(1)) if match else None


def layer_count(config: dict | None, tensor_names) -> int:
    """Number of blocks: from config.json when it says, else one past the highest index seen."""
    for key in LAYER_COUNT_KEYS:
        value = (config or {}).get(key)
        if isinstance(value, int) and value > 0:
            return value
    indices = [i for i in map(layer_index, tensor_names) if i is not None]
    return max(indices) + 1 if indices else 0
