"""Read and validate a safetensors file's header without touching its tensor data.

Planning needs names, shapes and dtypes of every tensor of every model in seconds, and must catch a
truncated or corrupt shard before any heavy work starts, so the header is parsed and checked here
against the file's real size.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from mergebench.dtypes import from_safetensors_code
from mergebench.errors import CheckpointError
from mergebench.mapper import Mapper, in_order

MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is: enough to plan a merge and to read it later."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse ``path``'s header: returns tensor infos by name and the free-form ``__metadata__``."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointError(f"{path}: corrupt or truncated safetensors header")
            raw = handle.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    infos = {name: _tensor_info(path, name, entry, data_start) for name, entry in header.items()}
    _check_layout(path, infos, data_start, size)
    return infos, metadata


def _check_layout(path: Path, infos: dict[str, TensorInfo], data_start: int, size: int) -> None:
    """The data section must be exactly the tensors' bytes, back to back from offset 0: what the
    safetensors library requires (it refuses overlaps, gaps and trailing bytes). Two tensors sharing
    bytes would otherwise be read as each other's data without any error."""
    data_end = max((info.offset + info.nbytes - data_start for info in infos.values()), default=0)
    if data_start + data_end > size:
        missing = data_start + data_end - size
        raise CheckpointError(f"{path}: truncated shard ({missing} bytes of tensor data missing)")
    expected, previous = 0, None
    for info in sorted(infos.values(), key=lambda i: (i.offset, i.offset + i.nbytes)):
        start, end = info.offset - data_start, info.offset - data_start + info.nbytes
        if start < expected:
            raise CheckpointError(
                f"{path}: tensor {info.name!r} (data bytes {start}..{end}) overlaps tensor "
                f"{previous!r} (ending at {expected}) in the data section"
            )
        if start > expected:
            where = f"after tensor {previous!r}" if previous else "at the start of the data section"
            raise CheckpointError(
                f"{path}: tensor {info.name!r} starts at data byte {start}, leaving {start - expected} "
                f"unused bytes {where}"
            )
        expected, previous = end, info.name
    if data_start + expected < size:
        last = f"the end of tensor {previous!r}, the last in the data section" if previous else "the header"
        raise CheckpointError(f"{path}: {size - data_start - expected} bytes after {last} (corrupt shard)")


def _tensor_info(path: Path, name: str, entry: object, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}")
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    dtype = from_safetensors_code(code) if isinstance(code, str) else None
    if dtype is None:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {code!r}")
    if not (
        isinstance(shape, list)
        and all(isinstance(d, int) and d >= 0 for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}")
    nbytes = offsets[1] - offsets[0]
    if nbytes != math.prod(shape) * dtype.itemsize:
        raise CheckpointError(f"{path}: tensor {name!r} byte length does not match its shape and dtype")
    return TensorInfo(name, path, dtype, tuple(shape), data_start + offsets[0], nbytes)


READ_PART = 16 << 20  # bytes per range of a larger tensor read on its own handle (``map`` spreads them)


def read_tensor(info: TensorInfo, buffer: torch.Tensor | None = None, map: Mapper = in_order) -> torch.Tensor:
    """Read one tensor's bytes straight into ``buffer`` (a uint8 tensor of ``info.nbytes`` bytes, e.g.
    from a pool) or a fresh tensor: one copy, no memory map kept alive.

    A plain ``readinto`` keeps peak RSS at the size of the tensors in flight: pages of a mapped
    multi-GB shard would otherwise stay counted against the process. A tensor above READ_PART is read
    as ranges of that size, each through its own handle, which ``map`` may run on several threads: a
    copy out of the page cache (and the first touch of the buffer's pages) runs at one core's pace,
    and a model's embedding-sized first and last tensors are read while the other cores wait for them.
    """
    if buffer is None:
        buffer = torch.empty(info.nbytes, dtype=torch.uint8)
    view = memoryview(buffer.numpy())
    starts = range(0, info.nbytes, READ_PART)
    if len(starts) > 1:
        map(lambda start: _read_range(info, view, start, min(start + READ_PART, info.nbytes)), starts)
    elif starts:
        _read_range(info, view, 0, info.nbytes)
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=info.dtype)
    return buffer.view(info.dtype).reshape(info.shape)


def _read_range(info: TensorInfo, view: memoryview, start: int, stop: int) -> None:
    """Bytes [start, stop) of the tensor into the same range of ``view``."""
    try:
        with open(info.file, "rb", buffering=0) as handle:
            handle.seek(info.offset + start)
            while start < stop:
                got = handle.readinto(view[start:stop])
                if not got:
                    raise CheckpointError(f"{info.file}: truncated while reading tensor {info.name!r}")
                start += got
    except OSError as exc:
        raise CheckpointError(f"{info.file}: cannot read tensor {info.name!r} ({exc.strerror})") from None
