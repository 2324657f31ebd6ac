"""Run a plan: read inputs ahead, merge a few tensors at a time, stream results to the writer in order.

Three stages overlap — reading (threads; file reads release the GIL), arithmetic (one
single-threaded worker per core; torch releases the GIL) and writing (one thread) — with bounded
queues between them, so memory stays at a few output tensors' inputs however large the model is.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from mergebench.errors import CheckpointError
from mergebench.inputs import LoraFold
from mergebench.io.writer import ShardedWriter, tensor_crc32
from mergebench.mapper import Mapper, in_order
from mergebench.methods.registry import Piece, TensorInputs, whole_rows_length
from mergebench.planner import Copy, Merge, Op, RowMerge, op_input_bytes, op_refs
from mergebench.vocab import RowGather, RowInputs

# Elementwise methods run over flat chunks of this many entries: small enough that every
# intermediate stays in cache and no tensor-sized temporaries are allocated.
CHUNK = 1 << 18
# With this many workers or more, chunks are CHUNK_SCALE times longer (see chunk_entries).
MANY_WORKERS, CHUNK_SCALE = 8, 4


def chunk_entries(workers: int) -> int:
    """Entries per chunk when ``workers`` ops are computed at once.

    Every torch call holds the GIL for its Python-side handling; with 256K-entry chunks that share
    kept 16 threads at 2.5–3× one thread's rate on a 16-core machine (RAM's and linear's chunk
    arithmetic), 1M-entry chunks reached 7–9× (and 1.3–1.6× the 256K-chunk throughput at 16 threads).
    On a 2-core VM the short chunks are faster (RAM 466 vs 245 M entries/s on both cores): so longer
    chunks only with many workers. tools/bench_chunks.py measures it (README, "Many cores")."""
    return CHUNK * CHUNK_SCALE if workers >= MANY_WORKERS else CHUNK


WIDENED = (torch.bfloat16, torch.float32)  # stored dtypes a kernel reads as float32 (``Piece.widen``)


def arithmetic_dtype(compute_dtype: torch.dtype | None) -> torch.dtype:
    """Math always accumulates in at least float32 (float64 when asked for)."""
    return torch.float64 if compute_dtype == torch.float64 else torch.float32


def run_op(
    op: Op,
    tensors: list[torch.Tensor],
    device: torch.device | str = "cpu",
    buffers: BufferPool | None = None,
    *,
    chunked: bool | None = None,
    helpers: ChunkHelpers | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Compute one output tensor from the stored tensors it reads (``op_refs(op)`` order); returns it on
    the CPU.

    ``buffers`` lends recycled memory for the output and for whole-tensor scratch space.
    ``chunked`` (default: elementwise methods on the CPU) streams the math through small chunks;
    otherwise whole tensors go to ``device`` at once, which is what a GPU wants. ``helpers`` lets idle
    cores take a share of a large op's chunks; ``chunk`` is the chunk length (default CHUNK).
    """
    buffers = buffers or BufferPool(idle_limit=0)
    values = []
    for item in op.inputs:
        count = len(item.refs)
        parts = tensors[:count]
        if isinstance(item, LoraFold):  # W + Σ B·A is computed where the arithmetic runs (a GPU's matmuls)
            parts = [part.to(device, non_blocking=True) for part in parts]
        values.append(item.build(parts))
        tensors = tensors[count:]
    if isinstance(op, Copy):
        return to_host(values[0].to(op.output.dtype), op, buffers)
    method = op.method
    arith = arithmetic_dtype(op.compute_dtype)

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        # Stored bytes travel as they are (half the traffic of float32 for bf16) and are widened where
        # the math runs; an asynchronous copy from pinned memory overlaps other streams' work.
        tensor = tensor.to(device, non_blocking=True)
        if op.compute_dtype is not None:
            tensor = tensor.to(op.compute_dtype)  # inputs are rounded to the compute dtype, as configured
        return tensor.to(arith)

    base, models = (values[0], values[1:]) if op.base is not None else (None, values)
    # A vocabulary tensor merged by token (RowMerge): the method sees each input's token-aligned rows,
    # built from the stored tensor block by block (vocab.RowGather), never a second stored copy.
    aligned = RowGather(op.rows, values, convert, op.compute_dtype) if isinstance(op, RowMerge) else None
    if chunked is None:
        chunked = method.elementwise and torch.device(device).type == "cpu"
    if not chunked and aligned is not None:
        models = [aligned.whole(k) for k in range(len(values))]
        base = models.pop(0) if op.base is not None else None
    elif not chunked:
        models = [convert(t) for t in models]
        base = convert(base) if base is not None else None
    workspace: list[torch.Tensor] = []

    def lend_workspace() -> torch.Tensor:
        numel = math.prod(op.output.shape)  # every (aligned) input's
        if not chunked:
            return torch.empty(numel, dtype=arith, device=device)
        workspace.append(buffers.take(numel * arith.itemsize))
        return workspace[-1].view(arith)

    # Stored chunks whose float32 values are their bits widened (bf16 or float32 in, float32 math) go to a
    # method that ``widens`` as they are: its kernels read bf16 directly, no float32 copy per chunk.
    widen = (
        chunked
        and aligned is None
        and torch.device(device).type == "cpu"
        and arith == torch.float32
        and all(
            v.dtype in WIDENED and op.compute_dtype in (None, torch.float32, v.dtype)
            for v in ([base] if base is not None else []) + list(models)
        )
    )
    spread = helpers.map if helpers is not None and chunked else in_order
    if method.stats is not None or not method.elementwise:
        _require_finite(op, [base] if base is not None else [], models, spread)
    stats = None
    if method.stats is not None:
        identity = {"name": op.output.name, "seed": op.seed}
        if aligned is not None and chunked:
            inputs = RowInputs(
                aligned, op.output.shape, base is not None, len(models), lend_workspace, **identity
            )
        else:
            convert_slice = convert if chunked else (lambda t: t)
            inputs = TensorInputs(
                models, base, convert_slice, lend_workspace, map=spread, widen=widen, **identity
            )
        stats = method.stats(inputs, **method.keywords(op.params))
    for buffer in workspace:
        buffers.give(buffer)
    stored = widen and method.widens  # chunks handed over as stored
    piece = Piece(op.output.name, op.seed, 0, stats, op.output.shape, widen=stored)
    if not chunked:
        return to_host(method.apply(models, base, op.params, piece).to(dtype=op.output.dtype), op, buffers)
    flats = [t.reshape(-1) for t in ([base] if base is not None else []) + models]
    nbytes = op.output.nbytes
    flat_out = buffers.take(nbytes).view(op.output.dtype) if nbytes else torch.empty(0, dtype=op.output.dtype)
    out = flat_out.reshape(op.output.shape)
    split = 1 if base is not None else 0
    step = chunk_length(op.output.shape, method.whole_rows, chunk)

    def compute_chunks(starts: range) -> None:
        for start in starts:
            if aligned is not None:
                chunks = [aligned.flat(k, start, start + step) for k in range(len(flats))]
            elif stored:
                chunks = [flat[start : start + step] for flat in flats]
            else:
                chunks = [convert(flat[start : start + step]) for flat in flats]
            part = method.apply(
                chunks[split:], chunks[0] if split else None, op.params, replace(piece, offset=start)
            )
            flat_out[start : start + step] = part

    starts = range(0, flat_out.numel(), step)
    # Token-aligned inputs are gathered block by block through shared state: one thread walks them.
    if helpers is None or aligned is not None:
        compute_chunks(starts)
    else:
        helpers.run(compute_chunks, starts)
    return out


class ChunkHelpers:
    """Idle cores take a share of a large op's chunks.

    Ops run one per worker, so while many ops are in flight every core is busy; but a model's largest
    tensors (embeddings, LM head) are also its first and last, and would otherwise run on one core
    while the rest wait or idle. An op's chunks are cut into pieces of PIECE_CHUNKS chunks, which its
    own thread and helper threads claim one at a time. Helpers are offered up to the op's share of
    the cores (cores ÷ ops computing), re-counted before each piece the op's thread claims — the LM
    head, started beside the last layers, takes more cores as they finish — and the op's thread never
    waits for a helper that has not started. Chunks are independent (elementwise methods), so the
    result is the same however they are shared. (The share used to be fixed when the op asked: on 16
    cores the first wave of ops, blocked on numba's first kernel, held the embedding to one core, and
    a DELLA merge ran 9.73 s instead of 7.96, median of 5 alternated runs:
    ``bench/results/ab-h200-16c-chunk-helpers-20261127.log``.)
    """

    PIECE_CHUNKS = 8  # chunks a thread claims at a time: a hand-over costs a few microseconds

    def __init__(self, cores: int) -> None:
        self.cores = cores
        self._pool = ThreadPoolExecutor(max_workers=max(1, cores - 1), thread_name_prefix="mergebench-help")
        self._lock = threading.Lock()
        self._ops_running = 0

    def __enter__(self) -> ChunkHelpers:
        with self._lock:
            self._ops_running += 1
        return self

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._ops_running -= 1

    def map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``[function(item) for item in items]``, the items shared like ``run``'s chunks (a stats
        step's slices: the results come back in items' order, whoever computed them)."""
        results: list[Any] = [None] * len(items)

        def compute(indices: range) -> None:
            for index in indices:
                results[index] = function(items[index])

        self.run(compute, range(len(items)))
        return results

    def run(self, compute: Callable[[range], None], starts: range) -> None:
        """``compute(piece)`` for consecutive pieces of ``starts``, on this thread and on helpers."""
        size = self.PIECE_CHUNKS
        pieces = [starts[i : i + size] for i in range(0, len(starts), size)]
        if len(pieces) <= 1:
            compute(starts)
            return
        claims = itertools.count()  # next() is atomic: each piece is claimed once
        failed = threading.Event()

        def claim() -> range | None:
            index = next(claims)
            return pieces[index] if index < len(pieces) and not failed.is_set() else None

        def attempt(piece: range) -> None:
            try:
                compute(piece)
            except BaseException:
                failed.set()  # the others stop claiming; the error reaches the op's thread
                raise

        def work() -> None:
            while (piece := claim()) is not None:
                attempt(piece)

        helpers: list[Future] = []
        try:
            while True:
                with self._lock:
                    share = self.cores // max(1, self._ops_running)
                while len(helpers) < min(share, len(pieces)) - 1:
                    helpers.append(self._pool.submit(work))
                if (piece := claim()) is None:
                    break
                attempt(piece)
        finally:  # a helper not started yet is not waited for: every piece has been claimed
            started = [helper for helper in helpers if not helper.cancel()]
            futures_wait(started)
        for helper in started:
            helper.result()  # a helper's error

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def chunk_length(shape: Sequence[int], whole_rows: bool, chunk: int | None = None) -> int:
    """Entries per chunk: ``chunk`` (default CHUNK), or for a method that needs whole rows the most
    whole dim-0 slices that fit in it (at least one; a 0-D or 1-D tensor is one row)."""
    chunk = chunk or CHUNK
    if not whole_rows:
        return chunk
    return whole_rows_length(math.prod(shape[1:]) if len(shape) >= 2 else math.prod(shape), chunk)


FINITE_SLICE = 1 << 22  # entries per ``aminmax`` of the finite check on the CPU (shared with idle cores)


def _finite(tensor: torch.Tensor) -> bool:
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def _require_finite(
    op: Merge, bases: list[torch.Tensor], models: list[torch.Tensor], map: Mapper = in_order
) -> None:
    """Methods that combine whole tensors (a stats step, or not elementwise) refuse NaN and Inf inputs:
    one such value would make the whole tensor's statistics — and so every entry — undefined.
    Elementwise methods keep a non-finite value in its own entry, as plain float arithmetic does.

    min and max propagate NaN and reach ±Inf, so one ``aminmax`` reduction per input (per slice on the
    CPU, ``map`` spreading the slices) tells: ~50× cheaper than ``isfinite(...).all()`` on bf16 (which
    cost SLERP 60% of its run time)."""
    for item, tensor in zip(op.inputs, [*bases, *models], strict=True):
        if tensor.numel() == 0 or not tensor.dtype.is_floating_point:
            continue
        flat = tensor.reshape(-1)
        step = FINITE_SLICE if flat.device.type == "cpu" else flat.numel()
        if not all(map(lambda start: _finite(flat[start : start + step]), range(0, flat.numel(), step))):
            ref = item.refs[0]
            raise CheckpointError(
                f"tensor {ref.name!r} of {ref.checkpoint.spec} holds NaN or Inf values; "
                f"{op.method.name} needs finite weights (its whole-tensor statistics would be undefined)"
            )


class BufferPool:
    """Byte buffers recycled by exact size.

    Fresh memory is expensive here: on VMs that hand freed pages back to the host, touching newly
    allocated pages runs at a fraction of memory bandwidth, and a merge would otherwise allocate
    (and fault in) every input and output byte once. Inputs are read into, and outputs built in,
    buffers that return here once used. Idle buffers beyond ``idle_limit`` bytes are dropped,
    oldest first, so the pool never holds more than the work in flight plus that limit.
    """

    def __init__(self, idle_limit: int = 384 << 20, *, pinned: bool = False) -> None:
        self.idle_limit = idle_limit
        self.pinned = pinned  # page-locked buffers, so copies to and from a GPU run asynchronously
        self._idle: OrderedDict[int, torch.Tensor] = OrderedDict()  # data_ptr → buffer, oldest first
        self._issued: set[int] = set()
        self._idle_bytes = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> torch.Tensor:
        with self._lock:
            for ptr, buffer in self._idle.items():
                if buffer.numel() == nbytes:
                    del self._idle[ptr]
                    self._idle_bytes -= nbytes
                    return buffer
        buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pinned)
        with self._lock:
            self._issued.add(buffer.data_ptr())
        return buffer

    def give(self, tensor: torch.Tensor) -> None:
        """Return a buffer this pool issued (any dtype view of it); other tensors are ignored."""
        ptr = tensor.untyped_storage().data_ptr()
        with self._lock:
            if ptr not in self._issued or ptr in self._idle:
                return
            buffer = torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage())
            self._idle[ptr] = buffer
            self._idle_bytes += buffer.numel()
            while self._idle_bytes > self.idle_limit and self._idle:
                old_ptr, old = self._idle.popitem(last=False)
                self._issued.discard(old_ptr)
                self._idle_bytes -= old.numel()


def to_host(result: torch.Tensor, op: Op, buffers: BufferPool) -> torch.Tensor:
    """An op's result on the CPU, for the writer. From a GPU: into a (pinned) pool buffer; waiting for
    the stream also covers this op's input copies, so the input buffers can be recycled on return."""
    if result.device.type == "cpu":
        return result
    out = buffers.take(op.output.nbytes).view(op.output.dtype).reshape(op.output.shape)
    out.copy_(result, non_blocking=True)
    torch.cuda.current_stream(result.device).synchronize()
    return out


def read_inputs(op: Op, pool: BufferPool, map: Mapper = in_order) -> list[torch.Tensor]:
    """The stored tensors an op reads, into pooled buffers; ``map`` runs a large tensor's read ranges."""
    return [ref.read(pool.take(ref.nbytes), map) for ref in op_refs(op)]


def same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


GPU_WORKERS = 3  # enough streams to overlap one op's upload, another's math and a third's download


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def default_workers(device: str) -> int:
    """Ops computed at once: one per available core on the CPU (each single-threaded, so the cores are
    never oversubscribed), a few streams on a GPU."""
    return available_cores() if torch.device(device).type == "cpu" else GPU_WORKERS


def default_idle_bytes() -> int:
    """Idle buffers the pool keeps for reuse: 1 GB, or an eighth of the memory available if less.
    Enough to hold a model's embedding-sized input buffers from its first op to its LM head (its last),
    which would otherwise be faulted in afresh: on a 0.85B model, 1 GB instead of 384 MB cut a 3-model
    merge's page faults by a third (416K → 283K) at the same peak RSS (its first op is the peak)."""
    available = available_memory()
    return min(1 << 30, available // 8) if available else 384 << 20


def default_readahead_bytes(workers: int) -> int:
    """Inputs held in flight: enough to keep every worker busy on mid-sized tensors (~128 MB each), at
    least 384 MB, and never more than a quarter of the memory available."""
    budget = max(384 << 20, workers * (128 << 20))
    available = available_memory()
    return min(budget, available // 4) if available else budget


def _load_kernels_early(ops: Sequence[Op], device: str) -> None:
    """Start loading the compiled kernels in the background when a CPU run will call them: numba's
    first kernel (its import, then its registries, even with the machine code cached on disk) is
    0.3–0.5 s of Python on the first op's critical path otherwise; here it overlaps the first
    inputs' reads."""
    if torch.device(device).type == "cpu" and any(isinstance(op, Merge) and op.method.widens for op in ops):
        threading.Thread(target=_load_kernels, name="mergebench-kernels", daemon=True).start()


def _load_kernels() -> None:
    try:
        from mergebench.methods import fused

        fused.warm_up()
    except Exception:  # only a head start: the op that calls a kernel meets any failure itself
        pass


def execute_plan(
    ops: Sequence[Op],
    writer: ShardedWriter,
    *,
    device: str = "cpu",
    progress: bool = True,
    readahead: int = 2,
    readahead_bytes: int | None = None,
    workers: int | None = None,
    skip: Collection[int] = (),
) -> None:
    """Compute every op into ``writer``, in order, except the ops at the indices in ``skip`` (results
    an interrupted run already wrote: ``--resume``).

    ``workers`` ops are computed at once, and the inputs of up to ``readahead`` more (about
    ``readahead_bytes`` in all) are read ahead; results are written strictly in order. An
    op's result may be one of its input tensors (modified in place).
    """
    if skip:
        skipped = set(skip)
        ops = [op for index, op in enumerate(ops) if index not in skipped]
    workers = workers or default_workers(device)
    readahead_bytes = readahead_bytes or default_readahead_bytes(workers)
    _load_kernels_early(ops, device)
    on_gpu = torch.device(device).type == "cuda"
    streams = threading.local()
    bar = tqdm(
        total=sum(op.output.nbytes for op in ops),
        unit="B",
        unit_scale=True,
        desc="merging",
        disable=not progress,
        dynamic_ncols=True,
    )
    buffers = BufferPool(default_idle_bytes(), pinned=on_gpu)
    # Chunked arithmetic is made of many small operations: spreading each over an OpenMP team costs
    # more in synchronisation than it gains, and collapses (10-20x slower) whenever another process
    # competes for the cores. Jobs run side by side instead, each on one intra-op thread.
    intra_op_threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    out_queue: queue.Queue = queue.Queue(maxsize=2)
    write_errors: list[BaseException] = []

    def write_loop() -> None:
        while (item := out_queue.get()) is not None:
            if write_errors:
                continue  # drain after a failure so the producer never blocks
            name, tensor, crc32 = item
            try:
                writer.write(name, tensor, crc32)
            except BaseException as exc:  # re-raised in the caller's thread
                write_errors.append(exc)
            buffers.give(tensor)

    def compute(op: Op, reading: Future) -> tuple[torch.Tensor, int | None]:
        inputs = reading.result()
        if on_gpu:  # each worker thread issues its work on a stream of its own
            if not hasattr(streams, "stream"):
                streams.stream = torch.cuda.Stream(device)
            with torch.cuda.stream(streams.stream):
                merged = run_op(op, inputs, device, buffers)
        else:
            assert helpers is not None
            with helpers:
                merged = run_op(op, inputs, device, buffers, helpers=helpers, chunk=chunk)
        for tensor in inputs:
            if not same_storage(tensor, merged):
                buffers.give(tensor)
        # Checksummed here, where workers run in parallel, rather than on the one writer thread.
        return merged, tensor_crc32(merged) if writer.checksums else None

    writer_thread = threading.Thread(target=write_loop, name="mergebench-writer", daemon=True)
    writer_thread.start()
    in_flight: deque[tuple[Op, Future]] = deque()
    upcoming = deque(ops)
    readers = ThreadPoolExecutor(max_workers=max(1, readahead), thread_name_prefix="mergebench-read")
    # the ranges of a large tensor, read on every core (see read_tensor)
    ranges = ThreadPoolExecutor(max_workers=available_cores(), thread_name_prefix="mergebench-range")

    def read_ranges(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return list(ranges.map(function, items))

    computers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mergebench-compute")
    helpers = None if on_gpu else ChunkHelpers(workers)
    chunk = chunk_entries(workers)
    try:

        def fill() -> None:
            while upcoming and len(in_flight) < workers + readahead:
                held = sum(op_input_bytes(op) for op, _ in in_flight)
                if in_flight and held + op_input_bytes(upcoming[0]) > readahead_bytes:
                    return
                op = upcoming.popleft()
                in_flight.append(
                    (op, computers.submit(compute, op, readers.submit(read_inputs, op, buffers, read_ranges)))
                )

        for count in range(1, len(ops) + 1):
            fill()
            op, future = in_flight.popleft()
            merged, crc32 = future.result()
            if write_errors:
                raise write_errors[0]
            out_queue.put((op.output.name, merged, crc32))
            bar.update(op.output.nbytes)
            bar.set_postfix_str(f"{count}/{len(ops)} tensors", refresh=False)
    finally:
        for _, future in in_flight:
            future.cancel()
        computers.shutdown(wait=True, cancel_futures=True)
        if helpers is not None:
            helpers.shutdown()
        readers.shutdown(wait=True, cancel_futures=True)
        ranges.shutdown(wait=True, cancel_futures=True)
        out_queue.put(None)
        writer_thread.join()
        bar.close()
        torch.set_num_threads(intra_op_threads)
    if write_errors:
        raise write_errors[0]
