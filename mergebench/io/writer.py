"""Write a merged model: size-bounded safetensors shards streamed tensor by tensor, published atomically.

Every output tensor's shape and dtype are known from the plan, so shard boundaries, file names and
each shard's header are fixed before any data is computed. Tensors are then appended to their shard
as they arrive: no shard is ever assembled in memory.

Every output byte goes through ``OutputFile`` (raw descriptor, synced on close), so any OS error on
the output side — a full disk at a write, a sync or a close — is one ``OutputError`` naming the file.
``OutputDirectory`` owns everything beside the output: the lock that keeps two runs out of one
directory, the partial directory (with a record of its owner and finished shards, so a killed run can
be cleaned up or resumed) and the atomic rename into place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import mmap
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from zlib_ng import zlib_ng

from mergebench.dtypes import safetensors_code
from mergebench.errors import CheckpointError, OutputError
from mergebench.libc import start_writeback

INDEX_NAME = "model.safetensors.index.json"
# Inside a partial directory: who writes it and which shards are finished (removed before publishing).
PARTIAL_RECORD = ".mergebench-partial.json"
# Test hook: "N" pauses the writer before the N-th tensor (N = all tensors: before the index),
# "N.5" halfway through tensor N's bytes; it says so on stderr and waits for a line on stdin.
PAUSE_ENV = "MERGEBENCH_TEST_PAUSE"
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


def shard_files(shards: Sequence[Sequence[TensorSpec]]) -> list[str]:
    count = len(shards)
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def warn(message: str) -> None:
    """A ``warning:`` line on stderr: something beside the output was cleaned up and the run goes on."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


# Written bytes are handed to the disk (``start_writeback``) every this many bytes.
WRITEBACK_STEP = 64 << 20
# Direct I/O writes whole blocks of this many bytes (a multiple of every device's alignment) from two
# page-aligned staging buffers; only a file's last partial block goes through the page cache.
DIRECT_BLOCK = 8 << 20
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux and some BSDs; 0 elsewhere: always buffered


class OutputFile:
    """A new output file written through its raw descriptor.

    Buffered file objects report a full disk at some later flush or close (or not at all when the
    error happens while another exception unwinds); here every write, the sync and the close report
    it at once as one ``OutputError`` naming the file. ``close`` returns only once the data is on
    disk, so a published model (and a shard recorded for ``--resume``) survives a power loss; written
    data is handed to the disk as it accumulates (``start_writeback``), so that wait is short.

    ``direct`` writes around the page cache (O_DIRECT): the bytes go from two reused buffers to the
    disk — one is written by a helper thread while the caller fills the other — so the kernel
    neither copies them nor allocates and later reclaims page-cache memory for them (on a 2-core VM
    that was more CPU time than a linear merge's arithmetic), and a merge larger than memory does
    not push its inputs out of the cache. Where the file system refuses O_DIRECT (at open, or a
    write for its alignment) the rest of the file is written through the page cache.
    """

    def __init__(self, path: Path, *, direct: bool = False) -> None:
        self.path = path
        self.size = 0
        self._written_back = 0  # bytes already handed to start_writeback
        self._blocks: list[memoryview] = []  # direct I/O's staging buffers; empty when buffered
        self._current = 0  # the block being filled
        self._staged = 0  # bytes in it
        self._flusher: ThreadPoolExecutor | None = None
        self._pending: tuple[Future, memoryview] | None = None  # the other block's write in flight
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        try:
            try:
                self._fd = os.open(path, flags | (_O_DIRECT if direct else 0), 0o666)
                if direct and _O_DIRECT:
                    self._blocks = [memoryview(mmap.mmap(-1, DIRECT_BLOCK)) for _ in range(2)]
            except OSError as exc:
                if not (direct and exc.errno == errno.EINVAL):
                    raise
                self._fd = os.open(path, flags, 0o666)  # no O_DIRECT on this file system
        except OSError as exc:
            raise OutputError(f"{path}: cannot create ({_reason(exc)})") from None

    @property
    def direct(self) -> bool:
        """Whether bytes still bypass the page cache."""
        return bool(self._blocks)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.size += len(view)
        while view and self._blocks:
            block = self._blocks[self._current]
            take = min(len(view), len(block) - self._staged)
            block[self._staged : self._staged + take] = view[:take]
            self._staged += take
            view = view[take:]
            if self._staged == len(block):
                self._flush_block()
        if view:
            self._write_all(view)
            if self.size - self._written_back >= WRITEBACK_STEP:
                start_writeback(self._fd, self._written_back, self.size - self._written_back)
                self._written_back = self.size

    def _flush_block(self) -> None:
        """Hand the full block to the helper thread (after the previous one is written)."""
        staged, self._staged = self._blocks[self._current][: self._staged], 0
        self._finish_pending()
        if not self._blocks:  # direct I/O was refused meanwhile
            self._write_all(staged)
            return
        if self._flusher is None:
            self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergebench-direct")
        self._pending = (self._flusher.submit(self._write_out, staged), staged)
        self._current ^= 1

    def _write_out(self, view: memoryview) -> tuple[int, OSError | None]:
        """Write ``view`` (on the helper thread, or the caller's): (bytes written, the error that
        stopped it or None), so the caller decides what a refusal means."""
        done = 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            return done, exc
        return done, None

    def _finish_pending(self) -> None:
        """Wait for the block in flight; a refusal (EINVAL: the device wants another alignment) writes
        its rest, and everything after it, through the page cache; any other error is raised."""
        if self._pending is None:
            return
        (future, block), self._pending = self._pending, None
        done, error = future.result()
        if error is None:
            return
        if error.errno != errno.EINVAL:
            raise self._failed(error)
        self._leave_direct()
        self._write_all(block[done:])

    def _write_all(self, view: memoryview) -> None:
        _, error = self._write_out(view)
        if error is not None:
            raise self._failed(error)

    def _failed(self, exc: OSError) -> OutputError:
        return OutputError(f"{self.path}: write failed ({_reason(exc)})")

    def _leave_direct(self) -> None:
        """Write the rest through the page cache (the last partial block, or after a refusal)."""
        self._blocks = []
        try:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~_O_DIRECT)
        except OSError as exc:
            raise self._failed(exc) from None

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            if self._blocks:  # the last partial block: through the page cache
                tail = self._blocks[self._current][: self._staged]
                self._finish_pending()
                if self._blocks:
                    self._leave_direct()
                self._write_all(tail)
            self._stop_flusher()
            os.fsync(self._fd)
        except OSError as exc:
            self.abort()
            raise self._failed(exc) from None
        except OutputError:
            self.abort()
            raise
        fd, self._fd = self._fd, -1
        try:
            os.close(fd)
        except OSError as exc:
            raise self._failed(exc) from None

    def _stop_flusher(self) -> None:
        """Wait for a write in flight (the descriptor must outlive it) and end the helper thread."""
        if self._pending is not None:
            self._pending[0].exception()
            self._pending = None
        if self._flusher is not None:
            self._flusher.shutdown(wait=True)
            self._flusher = None

    def abort(self) -> None:
        self._stop_flusher()
        fd, self._fd = self._fd, -1
        if fd >= 0:
            _close_quietly(fd)

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_file(path: Path, data: bytes | str) -> None:
    """Create ``path`` holding ``data``, synced to disk; a failure is an ``OutputError`` naming it."""
    with OutputFile(path) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def copy_file(source: Path, destination: Path) -> None:
    """Copy a side file's bytes (a read failure names the source, a write failure the destination)."""
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{source}: cannot read ({_reason(exc)})") from None
    write_file(destination, data)


def sync_directory(path: Path) -> None:
    """Make a directory's entries (new files, renames) durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputError(f"{path}: cannot sync directory ({_reason(exc)})") from None


def _pause_point() -> float | None:
    value = os.environ.get(PAUSE_ENV)
    try:
        return float(value) if value else None
    except ValueError:
        return None


ShardDone = Callable[[str, int, str], None]  # (file name, size, crc32) of a finished, synced shard


class ShardedWriter:
    """Streams tensors, in plan order, into ``model-0000i-of-0000N.safetensors`` plus the index json.

    A shard is synced and closed as soon as its last tensor is written, and ``on_shard_done`` hears of
    it with its size and CRC-32 (the record ``--resume`` trusts). ``done_shards`` shards are already
    in ``directory`` from an interrupted run: writing starts at the first tensor of the next one.
    """

    def __init__(
        self,
        directory: Path,
        specs: Sequence[TensorSpec],
        max_shard_size: int,
        *,
        single_file: str | None = None,
        done_shards: int = 0,
        on_shard_done: ShardDone | None = None,
        direct: bool = False,
    ) -> None:
        self.directory = directory
        self.direct = direct  # shards written around the page cache (``OutputFile``)
        self.single_file = single_file
        if single_file is not None:  # one named file, no index (e.g. adapter_model.safetensors)
            self.shards = [list(specs)]
            self.file_names = [single_file]
        else:
            self.shards = assign_shards(specs, max_shard_size)
            self.file_names = shard_files(self.shards)
        self._order = [(shard_index, spec) for shard_index, shard in enumerate(self.shards) for spec in shard]
        self.first_position = sum(len(shard) for shard in self.shards[:done_shards])
        self._position = self.first_position
        self._file: OutputFile | None = None
        self._hash: Crc32 | None = None
        self._open_shard = -1
        self._on_shard_done = on_shard_done
        self._pause = _pause_point()
        # Finished shards are synced (and recorded) by one background thread, in order, while the next
        # shard is written: fsync of a large shard would otherwise stall the whole merge behind it.
        self._syncer: ThreadPoolExecutor | None = None
        self._syncing: list[Future] = []

    @property
    def checksums(self) -> bool:
        """Whether shards are checksummed: callers may then pass each tensor's ``tensor_crc32``."""
        return self._on_shard_done is not None

    def write(self, name: str, tensor: torch.Tensor, crc32: int | None = None) -> None:
        """Append the next tensor; it must be the one the plan put next, with its planned shape/dtype.

        ``crc32`` is ``tensor_crc32(tensor)`` when the caller computed it already (in parallel, on the
        thread that made the tensor): this thread then only combines it into the shard's CRC."""
        shard_index, spec = self._order[self._position]
        if name != spec.name or tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise RuntimeError(f"writer expected {spec}, got {name} {tuple(tensor.shape)} {tensor.dtype}")
        self._maybe_pause(self._position)
        if shard_index != self._open_shard:
            self._start(shard_index)
        if spec.nbytes:
            data = tensor_bytes(tensor)
            if self._pause == self._position + 0.5:
                self._emit(data[: len(data) // 2])
                self._maybe_pause(self._position + 0.5)
                data, crc32 = data[len(data) // 2 :], None
            self._emit(data, crc32)
        self._position += 1
        if self._position == len(self._order) or self._order[self._position][0] != shard_index:
            self._finish()

    def _start(self, shard_index: int) -> None:
        self._raise_sync_errors(wait=False)
        if self._file is not None:
            self._file.abort()
            self._file = None
        self._file = OutputFile(self.directory / self.file_names[shard_index], direct=self.direct)
        self._hash = Crc32() if self._on_shard_done is not None else None
        self._open_shard = shard_index
        self._emit(_header_bytes(self.shards[shard_index]))

    def _emit(self, data: bytes | memoryview, crc32: int | None = None) -> None:
        assert self._file is not None
        self._file.write(data)
        if self._hash is None:
            return
        if crc32 is None:
            self._hash.update(data)
        else:
            self._hash.append(crc32, len(data))

    def _finish(self) -> None:
        """Hand the open shard to the syncer: synced and closed, then recorded as done."""
        assert self._file is not None
        file, self._file = self._file, None
        digest = self._hash.hexdigest() if self._hash is not None else None

        def sync() -> None:
            file.close()
            if self._on_shard_done is not None and digest is not None:
                self._on_shard_done(file.path.name, file.size, digest)

        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergebench-sync")
        self._syncing.append(self._syncer.submit(sync))
        self._raise_sync_errors(wait=self._pause is not None)  # test pauses see every shard recorded

    def _raise_sync_errors(self, *, wait: bool) -> None:
        """Re-raise the first failure of a background sync (e.g. a full disk) in the writer's thread."""
        while self._syncing and (wait or self._syncing[0].done()):
            self._syncing.pop(0).result()

    def _maybe_pause(self, point: float) -> None:
        if self._pause is not None and point == self._pause:
            os.write(2, f"mergebench: paused at {point:g} ({PAUSE_ENV})\n".encode())
            sys.stdin.readline()

    def close(self) -> None:
        """Write the index (every planned tensor must have arrived; every shard is already closed)."""
        if self._position != len(self._order):
            self.abort()
            raise RuntimeError(f"writer closed after {self._position} of {len(self._order)} tensors")
        try:
            self._raise_sync_errors(wait=True)
        finally:
            self._stop_syncer()
        self._maybe_pause(len(self._order))
        if self.single_file is not None:
            if not self._order:  # an empty file still gets its header
                self._start(0)
                self._finish()
            return
        weight_map = {spec.name: self.file_names[i] for i, spec in self._order}
        total = sum(spec.nbytes for _, spec in self._order)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        write_file(self.directory / INDEX_NAME, json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        """Drop the open shard's descriptor (its partial file goes with the partial directory), after the
        shards being synced are done (a failure there is already being reported)."""
        if self._file is not None:
            self._file.abort()
            self._file = None
        for future in self._syncing:
            future.exception()  # waits; the error, if any, was or will be raised by close/write
        self._syncing.clear()
        self._stop_syncer()

    def _stop_syncer(self) -> None:
        if self._syncer is not None:
            self._syncer.shutdown(wait=True)
            self._syncer = None


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


# ---- beside the output: lock, owner record, stale and resumable partial directories ---------------


def _process_start(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc (None where unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _owner() -> dict[str, object]:
    started = _process_start(os.getpid())
    return {"pid": os.getpid(), "start": started[1] if started else None, "host": socket.gethostname()}


def _owner_alive(owner: object) -> bool:
    """Whether the run that wrote a partial directory may still be running (unknown counts as alive)."""
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return False  # no owner record: its run died before writing one (we hold the lock)
    if owner.get("host") != socket.gethostname():
        return True  # another machine's process: cannot tell, leave it alone
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    started = _process_start(pid)
    if started is None:
        return True
    state, start = started
    return state != "Z" and (owner.get("start") is None or owner.get("start") == start)  # else: pid reused


def _read_record(directory: Path) -> dict | None:
    try:
        record = json.loads((directory / PARTIAL_RECORD).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes a tensor is stored as (its CPU, contiguous, native-order copy)."""
    return memoryview(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())


def tensor_crc32(tensor: torch.Tensor) -> int:
    """CRC-32 of the bytes ``ShardedWriter.write`` will store for ``tensor``."""
    return zlib_ng.crc32(tensor_bytes(tensor))


class Crc32:
    """A running CRC-32 (zlib's): catches a truncated, torn or bit-flipped shard on ``--resume``.

    The bytes of a tensor may be hashed elsewhere (``tensor_crc32``, on the worker thread that
    computed it) and appended here by CRC arithmetic alone: at 1.4–5 GB/s, hashing every output byte
    on the one writer thread was what bounded a fast merge on many cores. zlib-ng's CRC (the same
    CRC-32, carry-less multiply instructions) runs ~34 GB/s on the 2-core VM, zlib's 7 GB/s: 4% of a
    3-model merge's CPU time was zlib's."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = zlib_ng.crc32(data, self.value)

    def append(self, crc32: int, length: int) -> None:
        """As if ``update`` had been given ``length`` bytes whose own CRC-32 is ``crc32``."""
        self.value = zlib_ng.crc32_combine(self.value, crc32, length)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


def _crc32_of(path: Path) -> str:
    digest = Crc32()
    with open(path, "rb") as handle:
        while chunk := handle.read(64 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_partial(path: Path, why: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    warn(why if not path.exists() else f"could not remove {path}, left by an interrupted mergebench run")


class OutputLock:
    """An exclusive ``flock`` on ``.<name>.lock`` beside the output, held from the target check to the
    rename, so two runs can never both publish into one directory (the second is refused at once).

    The holder unlinks the file before closing it; a run that opened the old file before the unlink
    sees a different inode after locking and tries again, so removing the file never lets two in.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = target.with_name(f".{target.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot create lock file ({_reason(exc)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _close_quietly(fd)
                raise OutputError(
                    f"{self.target}: another mergebench run is writing this output (it holds {self.path}); "
                    "wait for it to finish or choose another directory"
                ) from None
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    _close_quietly(fd)
                    raise OutputError(f"{self.path}: cannot lock ({_reason(exc)})") from None
                warn(f"{self.path}: this file system cannot lock files; concurrent runs are not detected")
            try:
                current = os.stat(self.path)
                mine = os.fstat(fd)
                same = (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)
            except OSError:
                same = False
            if same:
                self._fd = fd
                return
            _close_quietly(fd)  # the holder removed the file after we opened it: lock the new one

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        _close_quietly(self._fd)
        self._fd = None


class OutputDirectory:
    """A temporary directory beside ``target``, renamed into place only when everything succeeded.

    A failure or interruption removes the temporary directory (and parents this created), so no
    half-written model is ever left at ``target``; an existing ``target`` is only replaced with
    ``overwrite`` and never when it is, contains, or lies inside an input model. A ``target`` that is a
    symbolic link is published into the directory it points to (the link stays).

    Under the lock, partial directories of dead runs into the same target are removed (a warning
    says so) — or, with ``resume`` and the same ``identity`` (config and plan), the one with the most
    recorded shards that still match their size and CRC-32 is taken over: ``done_shards`` lists them.
    """

    def __init__(
        self,
        target: Path,
        *,
        overwrite: bool,
        inputs: Sequence[Path] = (),
        resume: bool = False,
        identity: dict | None = None,
    ) -> None:
        self.target = Path(os.path.realpath(target))
        self.overwrite = overwrite
        self.inputs = list(inputs)
        self.resume = resume
        self.identity = identity
        check_output_target(self.target, overwrite=overwrite, inputs=self.inputs)
        self.done_shards: list[dict] = []
        self.temp: Path | None = None
        self._lock = OutputLock(self.target)
        self._created_parents: list[Path] = []
        self._mode = 0o755

    def __enter__(self) -> Path:
        self._mode = 0o777 & ~_umask()
        parent = self.target.parent
        self._created_parents = [p for p in [parent, *parent.parents] if not p.exists()]
        try:
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"{self.target}: cannot create output directory ({_reason(exc)})") from None
            self._lock.acquire()
            # Again, under the lock: a run that held it may have published here meanwhile.
            check_output_target(self.target, overwrite=self.overwrite, inputs=self.inputs)
            self.temp = self._take_over_partial() or self._new_partial()
        except BaseException:
            self._discard()
            raise
        return self.temp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
            if isinstance(exc, OSError):  # a write of the caller's that no helper converted
                where = exc.filename or self.target
                raise OutputError(f"{where}: cannot write output ({_reason(exc)})") from None
            return
        try:
            self._publish()
        except BaseException:
            self._discard()
            raise
        self._lock.release()

    def record_shard(self, file_name: str, size: int, crc32: str) -> None:
        """A shard is complete and synced: note it, atomically, for ``--resume``."""
        self.done_shards.append({"file": file_name, "size": size, "crc32": crc32})
        self._save_record()

    def _save_record(self) -> None:
        assert self.temp is not None
        record = {"owner": _owner(), "identity": self.identity, "shards": self.done_shards}
        staged = self.temp / f"{PARTIAL_RECORD}.tmp"
        write_file(staged, json.dumps(record, indent=1) + "\n")
        try:
            os.replace(staged, self.temp / PARTIAL_RECORD)
        except OSError as exc:
            raise OutputError(f"{self.temp / PARTIAL_RECORD}: cannot write ({_reason(exc)})") from None
        sync_directory(self.temp)

    def _new_partial(self) -> Path:
        try:
            self.temp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=self.target.parent))
        except OSError as exc:
            raise OutputError(f"{self.target}: cannot create output directory ({_reason(exc)})") from None
        self._save_record()  # the owner, so a later run can tell when this one is dead
        return self.temp

    def _take_over_partial(self) -> Path | None:
        """Remove the partial directories of dead runs; with ``resume``, keep the best verified one."""
        dead = []
        for path in sorted(self.target.parent.glob(f".{self.target.name}.partial-*")):
            if path.is_symlink() or not path.is_dir():
                continue
            record = _read_record(path)
            if not _owner_alive(record.get("owner") if record else None):
                dead.append((path, record))
        if self.resume and not dead:
            warn(f"--resume: no interrupted run into {self.target} found; starting fresh")
        chosen: tuple[Path, list[dict]] | None = None
        if self.resume:
            same_job = [(p, r) for p, r in dead if r and self.identity and r.get("identity") == self.identity]
            for path, record in sorted(same_job, key=lambda item: -len(item[1].get("shards") or [])):
                problem = self._verify(path, record)
                if problem is None:
                    chosen = (path, record["shards"])
                    break
                _remove_partial(path, f"cannot resume from {path}: {problem}; removed it, starting fresh")
        for path, record in dead:
            if (chosen and path == chosen[0]) or not path.exists():
                continue
            if self.resume:
                what = (
                    "it was made from another config, plan or inputs" if record else "its record is damaged"
                )
                why = f"cannot resume from {path}: {what}; removed it, starting fresh"
            else:
                owner = record.get("owner") if record else None
                pid = owner.get("pid") if isinstance(owner, dict) else None
                by = f"pid {pid}" if pid else "no owner record"
                why = f"removed {path}, left by an interrupted mergebench run ({by})"
            _remove_partial(path, why)
        return self._adopt(*chosen) if chosen else None

    def _verify(self, path: Path, record: dict) -> str | None:
        """Why the recorded shards of ``path`` cannot be kept, or None when each matches size and CRC-32."""
        assert self.identity is not None
        expected = self.identity.get("files") or []
        shards = record.get("shards")
        if not isinstance(shards, list) or len(shards) > len(expected):
            return "its record is damaged"
        for name, entry in zip(expected, shards, strict=False):
            if not isinstance(entry, dict) or entry.get("file") != name:
                return "its record is damaged"
            file = path / name
            try:
                if file.is_symlink() or not file.is_file():
                    return f"{name} is missing"
                if file.stat().st_size != entry.get("size"):
                    return f"{name} does not have its recorded size"
                if _crc32_of(file) != entry.get("crc32"):
                    return f"{name} does not match its recorded checksum"
            except OSError as exc:
                return f"{name} is unreadable ({_reason(exc)})"
        return None

    def _adopt(self, path: Path, shards: list[dict]) -> Path:
        keep = {entry["file"] for entry in shards}
        try:
            for child in path.iterdir():
                if child.name not in keep:
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        except OSError as exc:
            raise OutputError(f"{path}: cannot clean up for --resume ({_reason(exc)})") from None
        self.temp = path
        self.done_shards = list(shards)
        self._save_record()  # now ours
        total = len(self.identity.get("files") or []) if self.identity else 0
        print(f"resuming from {path}: {len(shards)} of {total} shards kept", file=sys.stderr, flush=True)
        return path

    def _publish(self) -> None:
        """Drop the record, set the umask's mode, and rename into place (rolled back on any failure)."""
        assert self.temp is not None
        temp, target = self.temp, self.target
        try:
            os.unlink(temp / PARTIAL_RECORD)
            os.chmod(temp, self._mode)
        except OSError as exc:
            raise OutputError(f"{temp}: cannot finish output ({_reason(exc)})") from None
        sync_directory(temp)
        old = None
        if os.path.lexists(target):  # replaced only once the new output is in place (--overwrite)
            old = target.with_name(f".{target.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            if old is not None:
                os.rename(target, old)
            os.rename(temp, target)
            sync_directory(target.parent)
        except (OSError, OutputError) as exc:
            if os.path.lexists(target) and not os.path.lexists(temp):
                with contextlib.suppress(OSError):
                    os.rename(target, temp)  # undo: the new output back into the partial directory
            kept = ""
            if old is not None and os.path.lexists(old):
                try:
                    os.rename(old, target)
                except OSError:
                    kept = f"; the previous output is at {old}"
            if isinstance(exc, OutputError):
                raise OutputError(f"{exc}{kept}") from None
            raise OutputError(f"{target}: cannot publish output ({_reason(exc)}){kept}") from None
        self.temp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            if os.path.lexists(old):
                warn(f"published {target}, but could not remove the replaced output at {old}")

    def _discard(self) -> None:
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)
            self.temp = None
        self._lock.release()
        for directory in self._created_parents:  # deepest first
            try:
                directory.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                break
        self._created_parents = []


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
