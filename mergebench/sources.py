"""Model strings → opened inputs: the only place that parses a model string.

A model string (a config's ``model:``, a command's argument) is one of:
  * a local model directory (an existing path wins, even one whose name contains ``+``);
  * a hub id ``org/name[@revision]``, taken from the Hugging Face cache or downloaded (safetensors,
    configs and tokenizer files only, never pickled weights);
  * ``base+adapter`` (mergekit's syntax): the base model with a PEFT LoRA adapter folded in, tensor by
    tensor, at merge time (no cache directory, nothing materialised).
Pickled ``.bin`` weights are opened only with ``allow_pickle``. Everything here reads headers only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mergebench.errors import AdapterError, CheckpointError
from mergebench.fold import TensorRecipe, bind_adapters
from mergebench.inputs import Input, LoraFold, TensorRef
from mergebench.io.adapter import Adapter, read_adapter
from mergebench.io.checkpoint import Checkpoint, open_weights
from mergebench.io.model_files import HUB_ALLOW_PATTERNS
from mergebench.io.safetensors_header import TensorInfo

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def split_adapter(spec: str) -> tuple[str, str] | None:
    """``"base+adapter"`` → (base, adapter); None for a plain model string (or an existing path with '+')."""
    if "+" not in spec or Path(spec).exists():
        return None
    cuts = [i for i, char in enumerate(spec) if char == "+"]
    for cut in cuts:  # prefer a cut whose left side is an existing directory
        if Path(spec[:cut]).exists():
            return spec[:cut], spec[cut + 1 :]
    return spec[: cuts[0]], spec[cuts[0] + 1 :]


def is_plain_model(spec: str) -> bool:
    """A model directory or hub id (loadable as it is), as opposed to ``base+adapter``."""
    return split_adapter(spec) is None


def local_paths(spec: str) -> list[Path]:
    """The existing local directories a model string reads from (both parts of ``base+adapter``)."""
    parts = split_adapter(spec) or (spec,)
    return [Path(part) for part in parts if Path(part).exists()]


def shown(spec: str) -> str:
    """A model string as messages show it: as written, or quoted when it holds a newline or another
    control character (a YAML block scalar leaves a trailing newline) — an error stays one line."""
    return spec if spec.isprintable() else repr(spec)


def resolve_model_dir(spec: str) -> Path:
    """Map a model string to a local directory: an existing path, else a hub id via huggingface_hub.

    The hub is asked for the cached snapshot first (works offline), then downloads safetensors, config
    and tokenizer files only — never pickled weights.
    """
    local = Path(spec).expanduser()
    if local.exists():
        if not local.is_dir():
            raise CheckpointError(f"{shown(spec)}: expected a model directory, found a file")
        return local
    repo_id, _, revision = spec.partition("@")
    if not REPO_ID.match(repo_id) or spec.startswith((".", "/", "~")):
        raise CheckpointError(f"{shown(spec)}: model directory not found")
    return _hub_snapshot(spec, repo_id, revision or None)


def _hub_snapshot(spec: str, repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS, local_files_only=True
            )
        )
    except LocalEntryNotFoundError:
        pass
    except Exception as exc:  # huggingface_hub raises many types; all mean "unusable"
        raise CheckpointError(
            f"{shown(spec)}: not a local directory, and the hub cache failed ({_first_line(exc)})"
        ) from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS))
    except Exception as exc:
        raise CheckpointError(
            f"{shown(spec)}: no local directory of that name; tried as a Hugging Face hub id: not in the "
            f"cache, and download failed ({_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text (hub errors span several), or its type."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def open_checkpoint(spec: str, *, allow_pickle: bool = False) -> Checkpoint:
    """A plain model directory or hub id, headers only."""
    return open_weights(spec, resolve_model_dir(spec), allow_pickle=allow_pickle)


def open_adapter(spec: str, *, allow_pickle: bool = False) -> Adapter:
    """A PEFT LoRA adapter directory or hub id, headers only."""
    try:
        directory = resolve_model_dir(spec)
    except CheckpointError as exc:
        raise AdapterError(f"adapter {exc}") from None
    return read_adapter(spec, directory, allow_pickle=allow_pickle)


@dataclass(eq=False)
class Source:
    """One input model as a merge sees it: a checkpoint's headers, with LoRA adapters folded in where
    the model string asked for them. ``input(name)`` says how to obtain one of its tensors."""

    spec: str
    checkpoint: Checkpoint
    adapters: tuple[Adapter, ...] = ()
    folds: dict[str, TensorRecipe] = field(default_factory=dict)  # base tensor name → recipe

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return self.checkpoint.tensors

    @property
    def config(self) -> dict | None:
        return self.checkpoint.config

    @property
    def path(self) -> Path:
        return self.checkpoint.path

    @property
    def paths(self) -> list[Path]:
        """Every directory this source reads (model and adapters)."""
        return [self.checkpoint.path, *(adapter.path for adapter in self.adapters)]

    def input(self, name: str) -> Input:
        ref = TensorRef(self.checkpoint, name)
        recipe = self.folds.get(name)
        if recipe is None:
            return ref
        factors = tuple(TensorRef(self.adapters[index].weights, key) for index, key in recipe.inputs)
        return LoraFold(ref, recipe, factors)


def open_folded(
    base_spec: str,
    adapter_specs: Sequence[str],
    weights: Sequence[float] | None = None,
    *,
    spec: str | None = None,
    allow_pickle: bool = False,
) -> Source:
    """A base model with adapters folded in (W + Σ w_i ΔW_i), every adapter validated against the
    base's headers up front."""
    base = open_checkpoint(base_spec, allow_pickle=allow_pickle)
    adapters = tuple(open_adapter(a, allow_pickle=allow_pickle) for a in adapter_specs)
    folds = bind_adapters(base, adapters, weights)
    return Source(spec or base_spec, base, adapters, folds)


def open_source(spec: str, *, allow_pickle: bool = False) -> Source:
    """Open any model string (see the module docstring) from headers only."""
    parts = split_adapter(spec)
    if parts is None:
        return Source(spec, open_checkpoint(spec, allow_pickle=allow_pickle))
    base_spec, adapter_spec = parts
    if not base_spec or not adapter_spec:
        raise AdapterError(f"{shown(spec)}: expected 'base+adapter'")
    return open_folded(base_spec, [adapter_spec], spec=spec, allow_pickle=allow_pickle)
