"""Write a merged model: size-bounded safetensors shards streamed tensor by tensor, published atomically.

Every output tensor's shape and dtype are known from the plan, so shard boundaries, file names and
each shard's header are fixed before any data is computed. Tensors are then appended to their shard
as they arrive: no shard is ever assembled in memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from mergebench.dtypes import safetensors_code
from mergebench.errors import OutputError

INDEX_NAME = "model.safetensors.index.json"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def human_bytes(count: int) -> str:
    """1234567 → '1.23 MB' (decimal units, as shard sizes are given)."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{value:.2f} TB"


def parse_size(text: str | int) -> int:
    """'5GB' → 5·10⁹ bytes, '2GiB' → 2·2³⁰, '1000' → 1000 (the conventions of Hugging Face tools)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 5GB, 500MB, 2GiB or a byte count)")
    number, unit = float(match.group(1)), (match.group(2) or "").lower().removesuffix("b")
    if unit.endswith("i"):  # binary prefixes: KiB, MiB, GiB, TiB
        factor = 1024 ** ("kmgt".index(unit[0]) + 1)
    else:
        factor = _UNITS[unit]
    size = int(number * factor)
    if size <= 0:
        raise ValueError(f"shard size must be positive: {text!r}")
    return size


@dataclass(frozen=True)
class TensorSpec:
    """One tensor the writer will receive: its output name, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * self.dtype.itemsize


def assign_shards(specs: Sequence[TensorSpec], max_shard_size: int) -> list[list[TensorSpec]]:
    """Greedy, order-preserving split into shards of at most ``max_shard_size`` bytes (a tensor larger
    than the limit gets a shard of its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards if shards[0] else []


def _header_bytes(shard: Sequence[TensorSpec]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in shard:
        header[spec.name] = {
            "dtype": safetensors_code(spec.dtype),
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned, as the format recommends
    return len(raw).to_bytes(8, "little") + raw


class ShardedWriter:
    """Streams tensors, in plan order, into ``model-0000i-of-0000N.safetensors`` plus the index json."""

    def __init__(
        self,
        directory: Path,
        specs: Sequence[TensorSpec],
        max_shard_size: int,
        *,
        single_file: str | None = None,
    ) -> None:
        self.directory = directory
        self.single_file = single_file
        if single_file is not None:  # one named file, no index (e.g. adapter_model.safetensors)
            self.shards = [list(specs)]
            self.file_names = [single_file]
        else:
            self.shards = assign_shards(specs, max_shard_size)
            count = len(self.shards)
            self.file_names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        self._order = [(shard_index, spec) for shard_index, shard in enumerate(self.shards) for spec in shard]
        self._position = 0
        self._handle: BinaryIO | None = None
        self._open_shard = -1

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; it must be the one the plan put next, with its planned shape/dtype."""
        shard_index, spec = self._order[self._position]
        if name != spec.name or tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise RuntimeError(f"writer expected {spec}, got {name} {tuple(tensor.shape)} {tensor.dtype}")
        if shard_index != self._open_shard:
            self._switch_to(shard_index)
        assert self._handle is not None
        if spec.nbytes:
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            self._write(memoryview(data.numpy()))
        self._position += 1

    def _switch_to(self, shard_index: int) -> None:
        self._close_handle()
        path = self.directory / self.file_names[shard_index]
        try:
            self._handle = open(path, "wb")
        except OSError as exc:
            raise OutputError(f"{path}: cannot create shard ({exc.strerror})") from None
        self._open_shard = shard_index
        self._write(_header_bytes(self.shards[shard_index]))

    def _write(self, data) -> None:
        assert self._handle is not None
        try:
            self._handle.write(data)
        except OSError as exc:  # e.g. disk full: the output directory is discarded by the caller
            raise OutputError(f"{self._handle.name}: write failed ({exc.strerror})") from None

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def close(self) -> None:
        """Finish the last shard and write the index; every planned tensor must have arrived."""
        self._close_handle()
        if self._position != len(self._order):
            raise RuntimeError(f"writer closed after {self._position} of {len(self._order)} tensors")
        if self.single_file is not None:
            if not self._order:  # an empty file still gets its header
                self._switch_to(0)
                self._close_handle()
            return
        weight_map = {spec.name: self.file_names[i] for i, spec in self._order}
        total = sum(spec.nbytes for _, spec in self._order)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        self._close_handle()


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """One safetensors file from tensors in memory (small outputs such as adapters), written by the same
    code as model shards: the one safetensors write path."""
    specs = [TensorSpec(name, tuple(tensor.shape), tensor.dtype) for name, tensor in tensors.items()]
    writer = ShardedWriter(path.parent, specs, max_shard_size=0, single_file=path.name)
    try:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
        writer.close()
    finally:
        writer.abort()


def _is_within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


class OutputDirectory:
    """A temporary directory beside ``target``, renamed into place only when everything succeeded.

    A failure or interruption removes the temporary directory (and parents this created), so no
    half-written model is ever left at ``target``; an existing ``target`` is only replaced with
    ``overwrite`` and never when it is, contains, or lies inside an input model.
    """

    def __init__(self, target: Path, *, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
        self.target = Path(os.path.abspath(target))
        check_output_target(self.target, overwrite=overwrite, inputs=inputs)
        self._created_parents: list[Path] = []
        self.temp: Path | None = None

    def __enter__(self) -> Path:
        parent = self.target.parent
        missing = [p for p in [parent, *parent.parents] if not p.exists()]
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._created_parents = missing
            self.temp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=parent))
        except OSError as exc:
            raise OutputError(f"{self.target}: cannot create output directory ({exc.strerror})") from None
        return self.temp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.temp is not None
        if exc_type is not None:
            self._discard()
            return
        try:
            self._publish()
        except OSError as error:
            self._discard()
            raise OutputError(f"{self.target}: cannot publish output ({error.strerror})") from None

    def _publish(self) -> None:
        assert self.temp is not None
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.rename(self.target, old)
        os.rename(self.temp, self.target)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()

    def _discard(self) -> None:
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)
        for directory in self._created_parents:  # deepest first
            try:
                directory.rmdir()
            except OSError:
                break


def check_output_target(target: Path, *, overwrite: bool, inputs: Sequence[Path]) -> None:
    """Refuse outputs that would clobber data: non-empty without ``overwrite``, or overlapping an input."""
    target = Path(os.path.realpath(target))
    for source in inputs:
        source = Path(os.path.realpath(source))
        if _is_within(target, source):
            raise OutputError(f"{target}: output is inside input model {source}; choose another location")
        if _is_within(source, target):
            raise OutputError(f"{target}: output would contain input model {source}; choose another location")
    if target.exists():
        if not target.is_dir():
            raise OutputError(f"{target}: exists and is not a directory")
        if any(target.iterdir()) and not overwrite:
            raise OutputError(f"{target}: exists and is not empty (pass --overwrite to replace it)")
