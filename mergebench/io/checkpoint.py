"""A model directory's weights opened lazily: headers now, tensor bytes on demand (``sources`` turns
a model string into a directory)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mergebench.errors import CheckpointError, MergebenchError
from mergebench.io.safetensors_header import TensorInfo, read_header, read_tensor
from mergebench.mapper import Mapper, in_order

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"


def safe_child(directory: Path, name: object, what: str) -> Path:
    """``directory / name``, refusing names that are absolute or climb out of ``directory``.

    Checked lexically (not by resolving links), so hub-cache snapshots whose files are links into a
    blob store stay usable, while an index or config cannot point the loader anywhere else.
    """
    if not isinstance(name, str) or not name or os.path.isabs(name) or "\\" in name:
        raise CheckpointError(f"{what}: file name {name!r} is not a plain relative path")
    parts = Path(name).parts
    if ".." in parts:
        raise CheckpointError(f"{what}: file name {name!r} points outside {directory}")
    return directory / name


def link_root(directory: Path) -> Path:
    """Where the files of model ``directory`` may really live: the directory itself, or for a Hugging
    Face hub-cache snapshot (``<repo cache>/snapshots/<revision>``, files linked into ``../../blobs``)
    the repo cache that holds both."""
    for candidate in (Path(os.path.abspath(directory)), Path(os.path.realpath(directory))):
        if candidate.parent.name == "snapshots" and (candidate.parent.parent / "blobs").is_dir():
            return Path(os.path.realpath(candidate.parent.parent))
    return Path(os.path.realpath(directory))


def check_within_model(path: Path, directory: Path) -> None:
    """Refuse a file of ``directory`` that resolves (through links) outside it or its hub repo cache.

    Side files are copied into the published model: a ``tokenizer_config.json`` linked to any file on
    the machine would otherwise ship that file's contents with the model.
    """
    real = Path(os.path.realpath(path))
    root = link_root(directory)
    if real != root and root not in real.parents:
        raise CheckpointError(
            f"{path}: links to {real}, outside the model directory {directory}; "
            "refusing to copy it into the output (copy the file in instead of linking it)"
        )


@dataclass(eq=False)
class Checkpoint:
    """One input model: its directory, tensor headers, and ``config.json``.

    Only headers are read when opening; ``read`` fetches one tensor's bytes when a merge needs it.
    """

    spec: str
    path: Path
    tensors: dict[str, TensorInfo]
    config: dict | None = None
    pickled: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # only via open_pickled

    def read(self, name: str, buffer: torch.Tensor | None = None, map: Mapper = in_order) -> torch.Tensor:
        """Read tensor ``name`` into memory: into ``buffer`` (uint8, exactly the tensor's byte size)
        when given, else a fresh tensor. Either way the caller owns the result and may modify it.
        ``map`` runs a large tensor's read ranges (``read_tensor``)."""
        if self.pickled is not None:
            return self.pickled[name].clone()
        try:
            info = self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.spec}: no tensor named {name!r}") from None
        return read_tensor(info, buffer, map)

    def files(self) -> list[Path]:
        """The weight files this checkpoint reads from."""
        return sorted({info.file for info in self.tensors.values()})


def open_weights(spec: str, directory: Path, *, allow_pickle: bool = False) -> Checkpoint:
    """Headers of the model weights in ``directory``: a safetensors index + shards, model.safetensors,
    any *.safetensors, or — only when allowed — pickled .bin weights."""
    config = read_json(directory / "config.json") if (directory / "config.json").is_file() else None
    if (directory / SAFETENSORS_INDEX).is_file():
        return Checkpoint(spec, directory, _sharded_headers(directory, SAFETENSORS_INDEX), config)
    if (directory / SAFETENSORS_SINGLE).is_file():
        return Checkpoint(spec, directory, _headers_of(directory, [SAFETENSORS_SINGLE]), config)
    others = sorted(p.name for p in directory.glob("*.safetensors"))
    if others:
        return Checkpoint(spec, directory, _headers_of(directory, others), config)
    pickled = [n for n in (PICKLE_INDEX, PICKLE_SINGLE) if (directory / n).is_file()]
    if pickled:
        if pickled[0] == PICKLE_INDEX:
            shard_names = sorted({p.name for p in _weight_map(directory, PICKLE_INDEX).values()})
        else:
            shard_names = [pickled[0]]
        return open_pickled(spec, directory, shard_names, config, allow=allow_pickle, what="weights")
    raise CheckpointError(f"{directory}: no model.safetensors, sharded safetensors index or weights found")


def open_pickled(
    spec: str,
    directory: Path,
    file_names: Sequence[str],
    config: dict | None = None,
    *,
    allow: bool,
    what: str,
    error: type[MergebenchError] = CheckpointError,
) -> Checkpoint:
    """The one place pickled tensors are loaded: refused unless explicitly allowed, then memory-mapped
    ``torch.load(weights_only=True)`` per file."""
    if not allow:
        raise error(
            f"{directory / file_names[0]}: pickled {what} can run arbitrary code when loaded; "
            "convert to safetensors or pass --allow-pickle if you trust its source"
        )
    tensors: dict[str, torch.Tensor] = {}
    for file_name in file_names:
        path = directory / file_name
        try:
            tensors.update(torch.load(path, map_location="cpu", mmap=True, weights_only=True))
        except Exception as exc:
            raise error(f"{path}: cannot load pickled weights ({' '.join(str(exc).split())})") from None
    infos = {
        key: TensorInfo(
            key, directory / file_names[0], t.dtype, tuple(t.shape), 0, t.numel() * t.element_size()
        )
        for key, t in tensors.items()
    }
    return Checkpoint(spec, directory, infos, config, pickled=tensors)


def read_json(path: Path, error: type[MergebenchError] = CheckpointError) -> dict:
    """A JSON object from ``path``, or ``error`` naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def _weight_map(directory: Path, index_name: str) -> dict[str, Path]:
    index_path = directory / index_name
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: missing or empty 'weight_map'")
    return {
        tensor: safe_child(directory, file_name, f"{index_path} (tensor {tensor!r})")
        for tensor, file_name in weight_map.items()
    }


def _sharded_headers(directory: Path, index_name: str) -> dict[str, TensorInfo]:
    index_path = directory / index_name
    weight_map = _weight_map(directory, index_name)
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if not shard.is_file():
            raise CheckpointError(f"{index_path}: shard {shard.name} is missing")
    infos = _headers_of(directory, [s.name for s in shards])
    for tensor, shard in weight_map.items():
        info = infos.get(tensor)
        if info is None or info.file != shard:
            raise CheckpointError(f"{index_path}: tensor {tensor!r} is not in shard {shard.name}")
    return {name: infos[name] for name in weight_map}


def _headers_of(directory: Path, file_names: Iterable[str]) -> dict[str, TensorInfo]:
    infos: dict[str, TensorInfo] = {}
    for file_name in file_names:
        shard_infos, _ = read_header(directory / file_name)
        for name, info in shard_infos.items():
            if name in infos:
                raise CheckpointError(f"{directory}: tensor {name!r} is stored in two shards")
            infos[name] = info
    return infos
