"""Tokenizer merging: the output vocabulary, and where each embedding/head row of each input comes from.

Finetunes that added tokens have different vocabularies, so their embeddings and LM heads disagree in
size and, beyond the shared tokens, in meaning per row. This module gives them one vocabulary with
mergekit 0.1.5's keys and results:

* ``tokenizer_source: union | base | <model>``, or the fuller ``tokenizer:`` section (``source``,
  ``tokens``, ``pad_to_multiple_of``); ``chat_template: auto | <built-in name> | <Jinja text>``.
* The output tokenizer is built with transformers from the inputs' own tokenizer files (fast
  tokenizers: BPE, Unigram, WordPiece, …): ``base`` and ``<model>`` take that model's tokenizer,
  ``union`` adds every other input's tokens to the base's with ``add_tokens`` — added and special
  tokens keep their flags, and each input's extra special tokens stay special. ``tokens:`` keys that
  no input has are added last. The base model is ``base_model``, else the first model.
* Rows are aligned by token string, not index. For every output token each input either has it (its
  own row; ids at or beyond its embedding rows do not count) or is filled as mergekit does: from the
  one input that has it, else from the base model when it has it, else the mean of those that have it,
  else zeros; a ``tokens:`` entry gives the fill instead (``force`` fills every input). The method
  then runs over the aligned inputs as over any tensor, so each row is merged among the inputs that
  have the token (the fills of the others are copies of those rows: zero task vectors, identical
  points), and methods with a whole-tensor step (TIES thresholds) see what mergekit's see. Rows
  added by ``pad_to_multiple_of`` hold each input's mean row (mergekit, after Hewitt's advice).

Everything here happens at plan time from tokenizer files and headers, before any tensor is read;
``RowGather`` then builds the aligned inputs row block by row block from the stored tensors at
execution, so no input is held twice. ``check_output`` loads the written model's tokenizer back
before the output is published.

Differences from mergekit, on purpose: added tokens from different models are ordered by config order
(mergekit iterates a set, so its ids vary between runs); a tokenizer's tokens at or beyond its model's
embedding rows are kept (with zero rows, and a note) rather than stripped from the BPE vocabulary by
editing its JSON; inputs must have tokenizers of one kind (mergekit aligns a WordPiece vocabulary with a
BPE one by string, which is meaningless).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mergebench.architecture import vocab_tensor_names
from mergebench.errors import ConfigError, PlanError
from mergebench.io.checkpoint import check_within_model
from mergebench.io.model_files import TOKENIZER_MARKERS, has_tokenizer, tokenizer_files
from mergebench.methods.registry import TensorInputs, whole_rows_length

if TYPE_CHECKING:
    from mergebench.config import MergeConfig, TokenEmbedding
    from mergebench.io.writer import TensorSpec
    from mergebench.sources import Source

# ---------------------------------------------------------------------------------------------------
# Chat templates

# mergekit's built-in names, written here to render exactly what mergekit 0.1.5's files render through
# transformers (tests/test_tokenizers.py compares them on several conversations), quirks included:
# llama3 ends each message with a newline, and exaone keeps its template file's indentation.
CHAT_TEMPLATES: dict[str, str] = {
    "alpaca": (
        "{% set systems = messages | selectattr('role', 'equalto', 'system') | list %}"
        "{{ (systems | last).content | trim if systems else '' }}{{ '\\n\\n' }}"
        "{% set headers = {'user': '### Instruction:', 'assistant': '### Response:', "
        "'user_context': '### Input:'} %}"
        "{% for message in messages %}"
        "{% if message['role'] in headers %}"
        "{{ headers[message['role']] + '\\n' + message['content'] | trim }}"
        "{% if not loop.last %}{{ '\\n\\n' }}{% endif %}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{ '### Response:\\n' }}"
        "{% endif %}"
    ),
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "exaone": (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}{{ '        [|system|][|endofturn|]\\n\\n' }}"
        "{% endif %}"
        "{{ '    [|' + message['role'] + '|]' + message['content'] + '\\n' }}"
        "{% if message['role'] == 'user' %}{{ '        \\n\\n' }}"
        "{% else %}{{ '        [|endofturn|]\\n\\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '    [|assistant|]\\n' }}{% endif %}"
    ),
    "llama3": (
        "{% for message in messages %}"
        "{% if loop.first %}{{ bos_token }}{% endif %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
        "{{ message['content'] | trim }}{{ '<|eot_id|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "mistral": (
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
        "{% else %}{% set turns = messages %}{% endif %}"
        "{{ bos_token }}"
        "{% for message in turns %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('After the optional system message, conversation roles must alternate "
        "user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}"
        "{% if loop.first and system is defined %}"
        "{{ ' [INST] ' + system + '\\n\\n' + message['content'] + ' [/INST]' }}"
        "{% else %}{{ ' [INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported, with the exception of "
        "an initial optional system message!') }}"
        "{% endif %}"
        "{% endfor %}"
    ),
}


def chat_template_problem(value: str) -> str | None:
    """Why ``chat_template: value`` is unusable (None when fine): mergekit's rule — ``auto``, a built-in
    name, or Jinja text (at least 20 characters with a ``{``), which must parse."""
    if value == "auto" or value in CHAT_TEMPLATES:
        return None
    if len(value) < 20 or "{" not in value:
        return (
            f"{value!r} is neither 'auto', a built-in template ({', '.join(CHAT_TEMPLATES)}) nor a Jinja "
            "template"
        )
    try:
        import jinja2
    except ImportError:  # transformers needs jinja2 for templates anyway; then it reports the problem
        return None
    try:
        jinja2.Environment().parse(value)
    except jinja2.TemplateSyntaxError as exc:
        return f"the Jinja template does not parse (line {exc.lineno}: {exc.message})"
    return None


def _template_of(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template.strip() if isinstance(template, str) and template.strip() else None


def resolve_chat_template(value: str | None, tokenizers: Sequence[Any]) -> str | None:
    """The template text to write: ``auto`` → the most common among the inputs (first seen wins a tie;
    None when no input has one), a built-in name → its text, else the Jinja text itself."""
    if value is None:
        return None
    if value == "auto":
        found = [t for t in map(_template_of, tokenizers) if t]
        return Counter(found).most_common(1)[0][0] if found else None
    return CHAT_TEMPLATES.get(value, value)


# ---------------------------------------------------------------------------------------------------
# Row sources

FILL_NONE, FILL_ROW, FILL_MEAN, FILL_ZERO = 0, 1, 2, 3


@dataclass(frozen=True, eq=False)
class RowSources:
    """Where every row of one vocabulary tensor comes from, for each input of its op (op order).

    Row r < ``tokens`` stands for token id r: input k takes its own row ``own[k, r]`` when it has the
    token (and the token is not forced), else the token's fill: row ``fill_row[r]`` of input
    ``fill_input[r]``, the mean of the inputs that have it, or zeros. Rows from ``tokens`` to ``count``
    are padding: each input's mean row over its aligned token rows.
    """

    count: int
    tokens: int
    own: torch.Tensor  # int64 [inputs, tokens]; -1 where the input lacks the token
    fill: torch.Tensor  # int8 [tokens]: FILL_*
    fill_input: torch.Tensor  # int64 [tokens]
    fill_row: torch.Tensor  # int64 [tokens]
    force: torch.Tensor  # bool [tokens]

    @cached_property
    def digest(self) -> str:
        """A fingerprint of the whole table (for ``--resume``: changed rows mean a changed plan)."""
        hasher = hashlib.sha256(f"{self.count} {self.tokens}".encode())
        for tensor in (self.own, self.fill, self.fill_input, self.fill_row, self.force):
            hasher.update(tensor.contiguous().numpy().tobytes())
        return hasher.hexdigest()

    def __repr__(self) -> str:
        return f"RowSources({self.count} rows, {self.digest[:12]})"


@dataclass(frozen=True)
class _Override:
    """One ``tokenizer.tokens`` entry resolved: the fill of its token."""

    where: str  # key path
    kind: str | None  # "zero", "row", or None (no source given)
    spec: str | None = None
    row: int = 0
    force: bool = False


@dataclass(frozen=True)
class OutputTokenizer:
    """What publishing writes for the tokenizer, and what the self-check expects of the output."""

    files: dict[str, bytes] | None  # None: the tokenizer source's files are copied unchanged
    vocab_tensors: tuple[str, ...]  # output tensors indexed by token id
    chat_template: str | None = None  # the template the output must carry (None: whatever it has)


@dataclass
class Vocabulary:
    """The planned output vocabulary: its tokenizer, and every input's own row for every output token."""

    tokenizer: OutputTokenizer
    tensors: frozenset[str]  # the reference model's vocabulary tensors
    tokens: int = 0  # output token ids 0 … tokens − 1
    count: int = 0  # output rows (tokens + padding)
    own: dict[str, torch.Tensor] = field(default_factory=dict)  # spec → int64 [tokens], -1 = lacks
    rows: dict[str, int] = field(default_factory=dict)  # spec → its embedding rows
    overrides: dict[int, _Override] = field(default_factory=dict)  # token id → fill
    config_updates: dict[str, object] = field(default_factory=dict)
    aligns: bool = False  # False: only the tokenizer files change (chat_template alone)

    def rows_for(self, specs: Sequence[str], base: int | None) -> RowSources | None:
        """The row table of a vocabulary tensor merged from ``specs`` (op order; ``base`` indexes the
        base model's input, when the method uses one) — None when every input already has the output's
        rows in the output's order, so the tensor merges as it is."""
        if not self.aligns:
            return None
        arange = torch.arange(self.tokens)
        if (
            not self.overrides
            and self.count == self.tokens
            and all(self.rows[s] == self.count and torch.equal(self.own[s], arange) for s in specs)
        ):
            return None
        own = torch.stack([self.own[spec] for spec in specs])
        present = own >= 0
        have = present.sum(0)
        n = len(specs)
        fill = torch.full((self.tokens,), FILL_NONE, dtype=torch.int8)
        fill_input = torch.zeros(self.tokens, dtype=torch.int64)
        fill_row = torch.zeros(self.tokens, dtype=torch.int64)
        force = torch.zeros(self.tokens, dtype=torch.bool)
        # mergekit's assign_embedding_sources, in its order of precedence
        donor = present.to(torch.int8).argmax(0)
        one = have == 1
        fill[one], fill_input[one] = FILL_ROW, donor[one]
        fill_row[one] = own[donor[one], one.nonzero().squeeze(1)]
        fill[have == 0] = FILL_ZERO
        partial = (have >= 2) & (have < n)
        if base is not None:
            from_base = partial & present[base]
            fill[from_base], fill_input[from_base], fill_row[from_base] = FILL_ROW, base, own[base, from_base]
            partial &= ~present[base]
        fill[partial] = FILL_MEAN
        for token_id, override in self.overrides.items():
            lacking = int(have[token_id]) < n
            if not (override.force or lacking):
                fill[token_id] = FILL_NONE
                continue
            if override.kind is None:
                missing = [specs[k] for k in range(n) if not bool(present[k, token_id])]
                raise PlanError(
                    f"{override.where}: {', '.join(missing)} lack(s) this token; give a source for its rows"
                )
            if override.kind == "zero":
                fill[token_id] = FILL_ZERO
            else:
                if override.spec not in specs:
                    raise PlanError(
                        f"{override.where}.source: {override.spec} is not an input of the merge "
                        "(a base_model the method does not use cannot give rows)"
                    )
                fill[token_id] = FILL_ROW
                fill_input[token_id], fill_row[token_id] = specs.index(override.spec), override.row
            force[token_id] = override.force
        return RowSources(self.count, self.tokens, own, fill, fill_input, fill_row, force)


# ---------------------------------------------------------------------------------------------------
# Planning


def wants_tokenizer(config: MergeConfig) -> bool:
    """Whether the config has a tokenizer key (else tokenizer files are copied as they are)."""
    return (
        config.tokenizer_source is not None
        or config.tokenizer is not None
        or config.chat_template is not None
    )


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _auto_tokenizer() -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError(
            "tokenizer_source / tokenizer / chat_template: merging tokenizers needs transformers "
            "(pip install 'mergebench[eval]')"
        ) from None
    return AutoTokenizer


def _key_paths(config: MergeConfig) -> dict[str, str]:
    """Each model's first config key, for messages ("models[1].model")."""
    keys: dict[str, str] = {}
    if config.base_model:
        keys[config.base_model] = "base_model"
    for i, entry in enumerate(config.models or []):
        keys.setdefault(entry.model, f"models[{i}].model")
    for i, slice_ in enumerate(config.slices or []):
        for j, source in enumerate(slice_.sources):
            keys.setdefault(source.model, f"slices[{i}].sources[{j}].model")
    return keys


def load_tokenizer(source: Source, key: str) -> Any:
    """A model's tokenizer, loaded with transformers from its directory (a fast tokenizer)."""
    directory = source.path
    if not has_tokenizer(directory):
        raise PlanError(
            f"{key}: {source.spec} has no tokenizer files ({', '.join(TOKENIZER_MARKERS)}); merging "
            "tokenizers reads every input's tokenizer"
        )
    for path in tokenizer_files(directory):  # as for copied side files: nothing linked from elsewhere
        check_within_model(path, directory)
    try:
        tokenizer = _auto_tokenizer().from_pretrained(str(directory))
    except Exception as exc:  # transformers raises many types; all mean "unusable"
        raise PlanError(f"{key}: {source.spec}'s tokenizer does not load ({_first_line(exc)})") from None
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise PlanError(
            f"{key}: {source.spec} has a slow (Python) tokenizer only; merging tokenizers needs a fast "
            "one (tokenizer.json)"
        )
    return tokenizer


def tokenizer_kind(tokenizer: Any) -> str:
    """The tokenizer model's kind: BPE, Unigram, WordPiece, WordLevel."""
    return type(tokenizer.backend_tokenizer.model).__name__


def _embedding_rows(spec: str, source: Source, key: str) -> tuple[list[str], int]:
    """A model's vocabulary tensors and their common number of rows, from headers."""
    try:
        names = vocab_tensor_names(spec, source.config, source.tensors)
    except PlanError as exc:
        raise PlanError(f"{key}: merging tokenizers needs the embedding tensors: {exc}") from None
    if not names:
        raise PlanError(f"{key}: {spec} has no embedding tensor to align with its tokenizer")
    rows = {name: source.tensors[name].shape[0] for name in names if source.tensors[name].shape}
    if len(set(rows.values())) != 1:
        listed = ", ".join(f"{name} {count}" for name, count in rows.items())
        raise PlanError(f"{key}: {spec}'s vocabulary tensors disagree in rows ({listed})")
    return names, next(iter(rows.values()))


def _serialize(tokenizer: Any) -> dict[str, bytes]:
    """The files transformers writes for ``tokenizer`` (the way it reads them back)."""
    with tempfile.TemporaryDirectory(prefix="mergebench-tokenizer-") as scratch:
        tokenizer.save_pretrained(scratch)
        return {p.name: p.read_bytes() for p in sorted(Path(scratch).iterdir()) if p.is_file()}


def _added_in_order(tokenizer: Any, rows: int) -> list[Any]:
    """A tokenizer's added tokens (AddedToken, flags included) by id, those below ``rows`` only."""
    return [info for index, info in sorted(tokenizer.added_tokens_decoder.items()) if index < rows]


def _extra_special(tokenizer: Any) -> list[str]:
    for attribute in ("extra_special_tokens", "additional_special_tokens"):  # transformers 5 / 4
        values = getattr(tokenizer, attribute, None)
        if isinstance(values, (list, tuple)):
            return [str(v) for v in values]
    return []


def _add_extra_special(tokenizer: Any, tokens: list[str]) -> None:
    """Mark existing tokens as extra special tokens (no new ids), in either transformers generation."""
    if not tokens:
        return
    try:
        tokenizer.add_special_tokens({"extra_special_tokens": tokens}, replace_extra_special_tokens=False)
    except TypeError:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": tokens}, replace_additional_special_tokens=False
        )


def _union(base: str, tokenizers: dict[str, Any], rows: dict[str, int], source: Source, key: str) -> Any:
    """mergekit's union: the base's tokenizer, then every input's other plain tokens (as added tokens),
    then every input's added tokens with their flags (first definition wins); inputs in config order."""
    out = load_tokenizer(source, key)  # a fresh copy to modify
    known = set(out.get_vocab())
    added: dict[str, Any] = {}
    differing: set[str] = set()
    plain: dict[str, None] = {}
    for spec in [base, *(s for s in tokenizers if s != base)]:
        tokenizer = tokenizers[spec]
        own_added = _added_in_order(tokenizer, rows[spec])
        contents = {info.content for info in tokenizer.added_tokens_decoder.values()}
        for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
            if index < rows[spec] and token not in contents and token not in known:
                plain.setdefault(token)
        for info in own_added:
            first = added.setdefault(info.content, info)
            if first is not info and _flags(first) != _flags(info):
                differing.add(info.content)
    if differing:
        _note(
            f"tokens added with different settings by different models, first one kept: {sorted(differing)}"
        )
    new_plain = [token for token in plain if token not in added]
    if new_plain:
        out.add_tokens(new_plain)
    new_added = [info for content, info in added.items() if content not in known]
    if new_added:
        out.add_tokens(new_added)
    vocab = out.get_vocab()
    current = set(_extra_special(out))
    extra = [
        t for spec in tokenizers for t in _extra_special(tokenizers[spec]) if t in vocab and t not in current
    ]
    _add_extra_special(out, list(dict.fromkeys(extra)))
    return out


def _flags(info: Any) -> tuple:
    return tuple(
        getattr(info, name, None) for name in ("special", "normalized", "lstrip", "rstrip", "single_word")
    )


def plan_vocabulary(
    config: MergeConfig, sources: dict[str, Source], reference: Source, files_source: Source
) -> Vocabulary | None:
    """The output vocabulary a config asks for (None without tokenizer keys), every problem raised
    before any tensor is read. ``files_source`` is the model whose tokenizer files are copied when the
    output tokenizer is one of the inputs' unchanged (today's behaviour for such configs)."""
    if not wants_tokenizer(config):
        return None
    settings = config.tokenizer
    source_key = "tokenizer.source" if settings is not None else "tokenizer_source"
    method = settings.source if settings is not None else config.tokenizer_source
    keys = _key_paths(config)
    specs = config.model_specs()
    if method is None:  # chat_template alone: the tokenizer source's tokenizer with the template, no rows
        return _template_only(config, sources, reference, files_source, keys)
    reference_names, _ = _embedding_rows(reference.spec, reference, keys.get(reference.spec, "base_model"))
    tokenizers = {spec: load_tokenizer(sources[spec], keys.get(spec, spec)) for spec in specs}
    template = resolve_chat_template(config.chat_template, list(tokenizers.values()))
    kinds = {spec: tokenizer_kind(tok) for spec, tok in tokenizers.items()}
    if len(set(kinds.values())) > 1:
        (first, first_kind), *_ = kinds.items()
        other = next(spec for spec, kind in kinds.items() if kind != first_kind)
        raise PlanError(
            f"{source_key}: {method}: {keys.get(other, other)} ({other}) has a {kinds[other]} tokenizer but "
            f"{keys.get(first, first)} ({first}) has {first_kind}; vocabularies of different tokenizer "
            "models cannot be aligned by token"
        )
    rows = {spec: _embedding_rows(spec, sources[spec], keys.get(spec, spec))[1] for spec in specs}
    base = config.base_model or specs[0]
    if method == "union":
        out = _union(base, tokenizers, rows, sources[base], keys.get(base, "base_model"))
        changed = len(out.get_vocab()) != len(tokenizers[base].get_vocab())
    else:
        chosen = base if method == "base" else method
        out = load_tokenizer(sources[chosen], keys.get(chosen, source_key))
        changed = False
    entries = (settings.tokens if settings is not None else None) or {}
    vocab = out.get_vocab()
    new_tokens = [token for token in entries if token not in vocab]
    if new_tokens:
        out.add_tokens(new_tokens)
        vocab = out.get_vocab()
        changed = True
    if template is not None:
        out.chat_template = template

    tokens = max(max(vocab.values()) + 1, len(vocab))
    pad = settings.pad_to_multiple_of if settings is not None else None
    count = math.ceil(tokens / pad) * pad if pad else tokens
    if count != tokens:
        _note(
            f"tokenizer.pad_to_multiple_of: {pad}: {tokens} tokens, {count} embedding rows "
            f"(config vocab_size {count}); each input's padding rows are its mean row, as in mergekit"
        )
    own = {spec: _own_rows(spec, tokenizers[spec].get_vocab(), rows[spec], vocab, tokens) for spec in specs}
    unused = torch.stack(list(own.values())).amax(0).lt(0).nonzero().squeeze(1).tolist()
    overrides = {
        vocab[token]: _override(f"tokenizer.tokens.{token}", token, entry, tokenizers, rows, vocab, own)
        for token, entry in entries.items()
    }
    orphans = [i for i in unused if i not in overrides]
    if orphans:
        names = {index: token for token, index in vocab.items()}
        shown = ", ".join(repr(names.get(i, f"#{i}")) for i in orphans[:5])
        _note(f"{len(orphans)} output token(s) are in no input's embeddings and get zero rows: {shown}")

    updates: dict[str, object] = {"vocab_size": count}
    for role in ("bos", "eos", "pad"):
        token = getattr(out, f"{role}_token", None)
        stated = (reference.config or {}).get(f"{role}_token_id")
        if isinstance(token, str) and token in vocab and isinstance(stated, int) and stated != vocab[token]:
            updates[f"{role}_token_id"] = vocab[token]
    files = _serialize(out) if changed or template is not None else None
    return Vocabulary(
        OutputTokenizer(files, tuple(reference_names), template),
        frozenset(reference_names),
        tokens=tokens,
        count=count,
        own=own,
        rows=rows,
        overrides=overrides,
        config_updates=updates,
        aligns=True,
    )


def _own_rows(
    spec: str, model_vocab: dict[str, int], rows: int, vocab: dict[str, int], tokens: int
) -> torch.Tensor:
    """For each output token id, the row of ``spec``'s embeddings for the same token string, or -1 where
    its tokenizer lacks the token or gives it an id beyond its embedding rows."""
    table = torch.full((tokens,), -1, dtype=torch.int64)
    pairs = [(index, model_vocab.get(token, -1)) for token, index in vocab.items()]
    table[torch.tensor([index for index, _ in pairs], dtype=torch.int64)] = torch.tensor(
        [row if row < rows else -1 for _, row in pairs], dtype=torch.int64
    )
    beyond = sum(1 for index in model_vocab.values() if index >= rows)
    if beyond:
        _note(f"{spec}: {beyond} token(s) of its tokenizer have ids beyond its {rows} embedding rows")
    shared = int((table >= 0).sum())
    if shared < min(len(model_vocab), tokens) // 2:
        _note(f"{spec} shares only {shared} of its {len(model_vocab)} tokens with the output vocabulary")
    return table


def _template_only(
    config: MergeConfig, sources: dict[str, Source], reference: Source, files_source: Source, keys: dict
) -> Vocabulary:
    """``chat_template`` without a vocabulary key (mergekit re-saves the donor's tokenizer with it): only
    ``auto`` reads the other inputs' tokenizers (those that have one), and the embeddings stay as they
    are, so any architecture will do (the self-check then checks ids only where it knows the rows)."""
    inputs = []
    if config.chat_template == "auto":
        for spec in config.model_specs():
            if has_tokenizer(sources[spec].path):
                inputs.append(load_tokenizer(sources[spec], keys.get(spec, spec)))
    template = resolve_chat_template(config.chat_template, inputs)
    out = load_tokenizer(files_source, "chat_template")
    if template is not None:
        out.chat_template = template
    try:
        names = tuple(vocab_tensor_names(reference.spec, reference.config, reference.tensors))
    except PlanError:
        names = ()
    files = _serialize(out) if template is not None else None
    return Vocabulary(OutputTokenizer(files, names, template), frozenset(names))


def _override(
    where: str,
    token: str,
    entry: TokenEmbedding,
    tokenizers: dict[str, Any],
    rows: dict[str, int],
    vocab: dict[str, int],
    own: dict[str, torch.Tensor],
) -> _Override:
    """One ``tokenizer.tokens`` entry checked against the tokenizers and headers. (Sources are told
    apart by ``kind``: config imports this module, so this one cannot import config's classes.)"""
    source = entry.source
    in_any = any(bool(table[vocab[token]] >= 0) for table in own.values())
    if source is None:
        if not in_any:
            raise PlanError(
                f"{where}: no input's tokenizer has this token; give a source for its rows (a model, "
                "{kind: model_token, …} or {kind: zero})"
            )
        return _Override(where, None, force=entry.force)
    if getattr(source, "kind", None) == "zero":
        return _Override(where, "zero", force=entry.force)
    if isinstance(source, str):
        row = int(own[source][vocab[token]])
        if row < 0:
            raise PlanError(
                f"{where}.source: {source} has no token {token!r} (to take another token's row use "
                "{kind: model_token, model, token})"
            )
        return _Override(where, "row", source, row, entry.force)
    spec = source.model  # {kind: model_token, model, token | token_id}
    if source.token_id is not None:
        row = source.token_id
        if row >= rows[spec]:
            raise PlanError(f"{where}.source.token_id: {row} is beyond {spec}'s {rows[spec]} embedding rows")
    else:
        found = tokenizers[spec].get_vocab().get(source.token)
        if found is None:
            raise PlanError(f"{where}.source.token: {source.token!r} is not in {spec}'s tokenizer")
        if found >= rows[spec]:
            raise PlanError(
                f"{where}.source.token: {source.token!r} has id {found}, beyond {spec}'s {rows[spec]} "
                "embedding rows"
            )
        row = found
    return _Override(where, "row", spec, row, entry.force)


# ---------------------------------------------------------------------------------------------------
# Execution: aligned inputs, row block by row block

PAD_BLOCK = 4096  # rows per step when a whole aligned tensor or a padding mean is built
SAMPLE_BLOCK = 1 << 18  # entries gathered at a time for a strided sample of aligned rows


class RowGather:
    """Row blocks of each input's token-aligned tensor, built from its stored tensor on demand.

    ``values`` are the op's stored input tensors (op order); ``convert`` maps stored rows to the
    compute precision and device. ``block`` and ``flat`` give any part of an aligned input, ``whole``
    all of it; each is a new tensor, so a method may modify it in place.
    """

    def __init__(
        self,
        rows: RowSources,
        values: Sequence[torch.Tensor],
        convert: Callable[[torch.Tensor], torch.Tensor],
        compute_dtype: torch.dtype | None,
    ) -> None:
        self.rows = rows
        self.values = values
        self.convert = convert
        # mergekit computes fills in the dtype its inputs were gathered in: the configured one, else theirs
        self.fill_dtype = compute_dtype or functools.reduce(torch.promote_types, [v.dtype for v in values])
        probe = convert(values[0][:0])
        self.dtype, self.device = probe.dtype, probe.device
        self.trailing = tuple(values[0].shape[1:])
        self._pad_means: dict[int, torch.Tensor] = {}

    def _round(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.fill_dtype).to(self.dtype)

    def _rows_of(self, k: int, indices: torch.Tensor) -> torch.Tensor:
        """Rows ``indices`` of input k, converted; a contiguous run is sliced, not gathered."""
        count = indices.numel()
        if count and int(indices[-1]) - int(indices[0]) == count - 1 and bool((indices.diff() == 1).all()):
            first = int(indices[0])
            return self.convert(self.values[k][first : first + count])
        return self.convert(self.values[k].index_select(0, indices))

    def block(self, k: int, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of input k's aligned tensor: a new tensor, compute dtype, on the device."""
        rows = self.rows
        end = min(stop, rows.tokens)
        own = rows.own[k, start:end]
        take = (own >= 0) & ~rows.force[start:end]
        if end == stop and bool(take.all()):  # the common block: rows the input has, nothing to fill
            block = self._rows_of(k, own)
            stored = self.values[k].untyped_storage().data_ptr()
            return block.clone() if block.untyped_storage().data_ptr() == stored else block
        out = torch.zeros((stop - start, *self.trailing), dtype=self.dtype, device=self.device)
        if start < end:
            if bool(take.all()):
                out[: end - start] = self._rows_of(k, own)
            else:
                where = take.nonzero().squeeze(1)
                if where.numel():
                    out[where] = self._rows_of(k, own[where])
                self._fill(out, start, end, ~take)
        if stop > rows.tokens:
            out[max(start, rows.tokens) - start :] = self._pad_mean(k)
        return out

    def _fill(self, out: torch.Tensor, start: int, end: int, need: torch.Tensor) -> None:
        rows = self.rows
        fill = rows.fill[start:end]
        by_row = need & (fill == FILL_ROW)
        inputs = rows.fill_input[start:end]
        for j in inputs[by_row].unique().tolist():
            where = (by_row & (inputs == j)).nonzero().squeeze(1)
            out[where] = self.convert(self.values[j].index_select(0, rows.fill_row[start:end][where]))
        where = (need & (fill == FILL_MEAN)).nonzero().squeeze(1)
        if where.numel():
            total = torch.zeros((where.numel(), *self.trailing), dtype=self.dtype, device=self.device)
            count = torch.zeros(where.numel(), dtype=self.dtype, device=self.device)
            for i in range(rows.own.shape[0]):
                own = rows.own[i, where + start]
                has = own >= 0
                if bool(has.any()):
                    total[has.to(self.device)] += self.convert(self.values[i].index_select(0, own[has]))
                    count += has.to(device=self.device, dtype=self.dtype)
            out[where] = self._round(total / count.reshape(-1, *([1] * len(self.trailing))))
        # FILL_ZERO, and tokens nothing fills: zeros already

    def _pad_mean(self, k: int) -> torch.Tensor:
        """Input k's mean row over its aligned token rows (what mergekit gives padding rows)."""
        if k not in self._pad_means:
            total = torch.zeros(self.trailing, dtype=torch.float64, device=self.device)
            for start in range(0, self.rows.tokens, PAD_BLOCK):
                stop = min(start + PAD_BLOCK, self.rows.tokens)
                total += self.block(k, start, stop).sum(0, dtype=torch.float64)
            self._pad_means[k] = self._round(total / self.rows.tokens)
        return self._pad_means[k]

    def flat(self, k: int, start: int, stop: int) -> torch.Tensor:
        """Entries [start, stop) of input k's flattened aligned tensor (any bounds, as chunks come)."""
        width = math.prod(self.trailing)
        stop = min(stop, self.rows.count * width)
        first, last = start // width, -(-stop // width)
        return self.block(k, first, last).reshape(-1)[start - first * width : stop - first * width]

    def whole(self, k: int) -> torch.Tensor:
        """Input k's whole aligned tensor (for methods that need it at once), built block by block."""
        out = torch.empty((self.rows.count, *self.trailing), dtype=self.dtype, device=self.device)
        for start in range(0, self.rows.count, PAD_BLOCK):
            stop = min(start + PAD_BLOCK, self.rows.count)
            out[start:stop] = self.block(k, start, stop)
        return out


class RowInputs(TensorInputs):
    """A stats step's view of token-aligned inputs: flat slices are cut from gathered row blocks, so
    whole-tensor steps (TIES thresholds) see the aligned tensors without them ever being built."""

    def __init__(
        self,
        gather: RowGather,
        shape: tuple[int, ...],
        has_base: bool,
        models: int,
        workspace: Callable[[], torch.Tensor],
        *,
        name: str = "tensor",
        seed: int = 0,
    ) -> None:
        meta = torch.empty(shape, device="meta")
        super().__init__(
            [meta] * models, meta if has_base else None, workspace=workspace, name=name, seed=seed
        )
        self._gather = gather
        self._split = 1 if has_base else 0
        self.device = torch.device("cpu")  # gathered on the CPU (the chunked path)

    def model(self, index: int, start: int, stop: int, step: int = 1) -> torch.Tensor:
        return self._strided(self._split + index, start, stop, step)

    def base(self, start: int, stop: int, step: int = 1) -> torch.Tensor:
        assert self._split, "this method has no base input"
        return self._strided(0, start, stop, step)

    def _strided(self, k: int, start: int, stop: int, step: int) -> torch.Tensor:
        """Every step-th entry of [start, stop), gathered about SAMPLE_BLOCK entries at a time
        (so a sparse sample never builds the whole aligned tensor)."""
        if step == 1:
            return self._gather.flat(k, start, stop)
        block = whole_rows_length(step, SAMPLE_BLOCK)  # a multiple of step: each block starts on a sample
        parts = [self._gather.flat(k, a, min(a + block, stop))[::step] for a in range(start, stop, block)]
        return torch.cat(parts) if parts else torch.empty(0)


# ---------------------------------------------------------------------------------------------------
# The output's self-check


def check_output(directory: Path, tokenizer: OutputTokenizer, specs: Sequence[TensorSpec]) -> None:
    """Before publishing: the written tokenizer loads with AutoTokenizer, every id it can produce is a
    row of the embeddings, its special tokens resolve, and config.json agrees. Raises PlanError."""

    def fail(why: str) -> PlanError:
        return PlanError(f"output self-check failed: {why}; nothing was published")

    try:
        loaded = _auto_tokenizer().from_pretrained(str(directory))
    except Exception as exc:
        raise fail(f"the merged tokenizer does not load with AutoTokenizer ({_first_line(exc)})") from None
    by_name = {spec.name: spec for spec in specs}
    counts = {by_name[name].shape[0] for name in tokenizer.vocab_tensors if name in by_name}
    if len(counts) > 1:
        raise fail(f"the vocabulary tensors have different row counts {sorted(counts)}")
    vocab = loaded.get_vocab()
    if counts:
        rows = counts.pop()
        token, top = max(vocab.items(), key=lambda item: item[1])
        if top >= rows:
            raise fail(f"token {token!r} has id {top} but the embeddings have {rows} rows")
        specials = {t for t in loaded.all_special_tokens if isinstance(t, str)}
        for special in sorted(specials):
            index = loaded.convert_tokens_to_ids(special)
            unknown = index is None or (index == loaded.unk_token_id and special != loaded.unk_token)
            if unknown or special not in vocab or index >= rows:
                raise fail(f"special token {special!r} does not resolve to an embedding row (id {index})")
        config_path = directory / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        stated = config.get("vocab_size")
        if isinstance(stated, int) and stated != rows:
            raise fail(f"config.json says vocab_size {stated} but the embeddings have {rows} rows")
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = config.get(key)
            if isinstance(value, int) and not 0 <= value < rows:
                raise fail(f"config.json {key} {value} is not an embedding row (of {rows})")
    if tokenizer.chat_template is not None and _template_of(loaded) != tokenizer.chat_template.strip():
        raise fail("the chat template did not survive saving")
