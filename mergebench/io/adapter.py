"""Read a PEFT LoRA adapter directory: its config math and tensor names, headers only.

PEFT's file format is the interface:
- ``adapter_config.json`` + ``adapter_model.safetensors`` (``adapter_model.bin`` is pickle: refused
  unless explicitly allowed);
- keys ``base_model.model.<module path>.lora_A.weight`` (r × in) / ``.lora_B.weight`` (out × r),
  ``.lora_B.bias`` (``lora_bias``), ``.lora_embedding_A`` (r × vocab) / ``.lora_embedding_B``
  (hidden × r), ``.lora_magnitude_vector`` (DoRA); anything else is a full tensor that replaces the
  base's (``modules_to_save``, and ``<module>.base_layer.weight`` that PEFT stores for embedding targets).

Every update is described in a *canonical* orientation, out × in, where ΔC = s·B·A. The base tensor
is C itself, or Cᵀ for ``fan_in_fan_out`` layers (GPT-2 Conv1D) and embeddings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mergebench.errors import AdapterError, CheckpointError
from mergebench.io.checkpoint import Checkpoint, open_pickled, read_json
from mergebench.io.safetensors_header import TensorInfo, read_header

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
KEY_PREFIX = "base_model.model."

# Config fields whose non-empty value changes the math in ways a plain weight merge cannot express.
_UNSUPPORTED = {
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens: it cannot be merged into weights)",
    "layer_replication": "layer_replication (it changes the model's layer structure)",
    "trainable_token_indices": "trainable token adapters (trainable_token_indices)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
}

_LORA_SUFFIXES = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_B.bias": "bias",
    ".lora_embedding_A": "embA",
    ".lora_embedding_B": "embB",
    ".lora_magnitude_vector": "magnitude",
    ".lora_magnitude_vector.weight": "magnitude",
}


def get_pattern_key(pattern_keys, module_path: str) -> str | None:
    """The first key of ``rank_pattern``/``alpha_pattern`` that PEFT would apply to ``module_path``.

    PEFT treats each key as a regex that must match the end of the module path at a dot boundary:
    ``re.match(rf"(.*\\.)?({key})$", path)``, first key (in the file's order) wins.
    """
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", module_path):
            return key
    return None


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: its factor keys in the adapter file and the scale that multiplies B·A."""

    path: str  # module path as PEFT names it, without ``base_model.model.``
    embedding: bool
    a_key: str
    b_key: str
    rank: int
    alpha: float
    scale: float
    out_features: int  # canonical orientation: ΔC = scale · B · A is out × in
    in_features: int
    fan_in_fan_out: bool  # config flag (linear layers); binding decides the real orientation
    bias_key: str | None = None
    magnitude_key: str | None = None

    @property
    def dora(self) -> bool:
        return self.magnitude_key is not None


@dataclass
class Adapter:
    """An opened adapter: config, tensor headers (a Checkpoint of the adapter file), parsed modules."""

    spec: str
    path: Path
    config: dict
    weights: Checkpoint
    modules: dict[str, LoraModule]
    # full tensors that replace the base's: parameter name as PEFT names it → key in the adapter file
    replacements: dict[str, str] = field(default_factory=dict)

    def read(self, key: str) -> torch.Tensor:
        return self.weights.read(key)

    @property
    def uses_dora(self) -> bool:
        return any(module.dora for module in self.modules.values())

    @property
    def uses_bias(self) -> bool:
        return any(module.bias_key for module in self.modules.values())


def read_adapter(spec: str, directory: Path, *, allow_pickle: bool = False) -> Adapter:
    """Open the PEFT LoRA adapter in ``directory`` from its config and headers; nothing big is read."""
    config_path = directory / ADAPTER_CONFIG
    if not config_path.is_file():
        raise AdapterError(f"{spec}: not a PEFT adapter (no {ADAPTER_CONFIG})")
    config = read_json(config_path, AdapterError)
    weights = _open_weights(spec, directory, allow_pickle)
    _check_config(spec, config)
    modules, replacements = _parse_modules(spec, config, weights.tensors)
    if not modules and not replacements:
        raise AdapterError(f"{spec}: adapter holds no LoRA weights")
    return Adapter(spec, directory, config, weights, modules, replacements)


def _open_weights(spec: str, directory: Path, allow_pickle: bool) -> Checkpoint:
    path = directory / ADAPTER_WEIGHTS
    if path.is_file():
        try:
            infos, _ = read_header(path)
        except CheckpointError as exc:
            raise AdapterError(str(exc)) from None
        return Checkpoint(spec, directory, infos)
    if (directory / ADAPTER_PICKLE).is_file():
        return open_pickled(
            spec, directory, [ADAPTER_PICKLE], allow=allow_pickle, what="adapter weights", error=AdapterError
        )
    raise AdapterError(f"{spec}: no {ADAPTER_WEIGHTS} (or {ADAPTER_PICKLE}) in {directory}")


def _check_config(spec: str, config: Mapping) -> None:
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"{spec}: peft_type {peft_type!r} is not supported (only LORA adapters)")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise AdapterError(f"{spec}: {what} is not supported")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise AdapterError(f"{spec}: {ADAPTER_CONFIG} needs a positive number for {key!r}, got {value!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            raise AdapterError(f"{spec}: {key} must be a mapping of regex → number")


def strip_prefix(key: str) -> str:
    return key[len(KEY_PREFIX) :] if key.startswith(KEY_PREFIX) else key


def _split_key(key: str) -> tuple[str, str | None]:
    """(module path, role) for LoRA tensors; (parameter name, None) for full replacement tensors."""
    name = strip_prefix(key)
    for suffix, role in _LORA_SUFFIXES.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], role
    if name.endswith(".base_layer.weight") or name.endswith(".base_layer.bias"):
        module, _, param = name.rpartition(".base_layer.")
        return f"{module}.{param}", None
    # older PEFT versions keep the wrapper's sub-module in modules_to_save keys
    name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)
    return name, None


def module_scale(config: Mapping, module_path: str) -> tuple[int, float, float]:
    """(r, alpha, scale) PEFT uses for ``module_path``: patterns first, then the global values."""
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    r_key = get_pattern_key(rank_pattern.keys(), module_path)
    alpha_key = get_pattern_key(alpha_pattern.keys(), module_path)
    r = rank_pattern[r_key] if r_key is not None else config["r"]
    alpha = alpha_pattern[alpha_key] if alpha_key is not None else config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return int(r), float(alpha), float(scale)


def _parse_modules(
    spec: str, config: Mapping, infos: Mapping[str, TensorInfo]
) -> tuple[dict[str, LoraModule], dict[str, str]]:
    parts: dict[str, dict[str, str]] = {}
    replacements: dict[str, str] = {}
    for key in infos:
        path, role = _split_key(key)
        if role is None:
            if "lora_" in path.rsplit(".", 1)[-1] or "trainable_tokens" in path:
                raise AdapterError(f"{spec}: tensor {key!r} is of an unsupported adapter kind")
            replacements[path] = key
        else:
            parts.setdefault(path, {})[role] = key
    modules: dict[str, LoraModule] = {}
    for path, roles in parts.items():
        embedding = "embA" in roles or "embB" in roles
        a_key = roles.get("embA" if embedding else "A")
        b_key = roles.get("embB" if embedding else "B")
        if a_key is None or b_key is None:
            raise AdapterError(f"{spec}: module {path!r} lacks its {'A' if a_key is None else 'B'} factor")
        a_shape, b_shape = infos[a_key].shape, infos[b_key].shape
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise AdapterError(
                f"{spec}: module {path!r}: factor shapes A {list(a_shape)} and B {list(b_shape)} do not chain "
                "(only linear and embedding LoRA layers are supported)"
            )
        r, alpha, scale = module_scale(config, path)
        if r != a_shape[0]:
            raise AdapterError(
                f"{spec}: module {path!r} has rank {a_shape[0]} in the weights but {r} in {ADAPTER_CONFIG}"
            )
        if embedding and "bias" in roles:
            raise AdapterError(f"{spec}: module {path!r}: lora_bias on an embedding is not supported")
        modules[path] = LoraModule(
            path=path,
            embedding=embedding,
            a_key=a_key,
            b_key=b_key,
            rank=r,
            alpha=alpha,
            scale=scale,
            out_features=b_shape[0],
            in_features=a_shape[1],
            fan_in_fan_out=bool(config.get("fan_in_fan_out")) and not embedding,
            bias_key=roles.get("bias"),
            magnitude_key=roles.get("magnitude"),
        )
    return modules, replacements
