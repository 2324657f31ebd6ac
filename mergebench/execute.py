"""Run a plan: read inputs ahead, merge a few tensors at a time, stream results to the writer in order.

Three stages overlap — reading (threads; file reads release the GIL), arithmetic (one
single-threaded worker per core; torch releases the GIL) and writing (one thread) — with bounded
queues between them, so memory stays at a few output tensors' inputs however large the model is.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from tqdm import tqdm

from mergebench.io.writer import ShardedWriter
from mergebench.plan import MergeJob, MergePlan

JobRunner = Callable[[MergeJob, list[torch.Tensor], str, "BufferPool"], torch.Tensor]

# Elementwise methods run over flat chunks of this many entries: small enough that every
# intermediate stays in cache and no tensor-sized temporaries are allocated.
CHUNK = 1 << 18


def arithmetic_dtype(compute_dtype: torch.dtype | None) -> torch.dtype:
    """Math always accumulates in at least float32 (float64 when asked for)."""
    return torch.float64 if compute_dtype == torch.float64 else torch.float32


def method_kwargs(job: MergeJob) -> dict[str, object]:
    """The job's resolved parameters as the method function's keyword arguments."""
    assert job.method is not None
    kwargs: dict[str, object] = {}
    for param in job.method.params:
        kwargs[param.python_name] = (
            list(job.model_params[param.name]) if param.per_model else job.global_params[param.name]
        )
    if job.method.randomized:
        kwargs["key"] = (job.seed, job.output.name)
    return kwargs


def run_job(
    job: MergeJob,
    tensors: list[torch.Tensor],
    device: torch.device | str = "cpu",
    buffers: BufferPool | None = None,
    *,
    chunked: bool | None = None,
) -> torch.Tensor:
    """Compute one output tensor from its inputs (ordered as ``job.inputs``); returns it on the CPU.

    ``buffers`` lends recycled memory for the output and for whole-tensor scratch space.
    ``chunked`` (default: elementwise methods on the CPU) streams the math through small chunks;
    otherwise whole tensors go to ``device`` at once, which is what a GPU wants.
    """
    buffers = buffers or BufferPool(idle_limit=0)
    method = job.method
    if method is None:
        return tensors[0].to(job.output.dtype)
    arith = arithmetic_dtype(job.compute_dtype)

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        if job.compute_dtype is not None:
            tensor = tensor.to(job.compute_dtype)  # inputs are rounded to the compute dtype, as configured
        return tensor.to(device=device, dtype=arith)

    kwargs = method_kwargs(job)
    split = 1 if job.base is not None else 0
    if chunked is None:
        chunked = method.elementwise and torch.device(device).type == "cpu"
    if not chunked:
        prepared = [convert(t) for t in tensors]
        base = prepared[0] if split else None
        return method.function(prepared[split:], base, **kwargs).to(dtype=job.output.dtype).cpu()
    if method.prepare is not None:
        kwargs.update(
            method.prepare(tensors[split:], tensors[0] if split else None, convert, buffers, **kwargs)
        )
    flats = [t.reshape(-1) for t in tensors]
    nbytes = job.output.nbytes
    flat_out = (
        buffers.take(nbytes).view(job.output.dtype) if nbytes else torch.empty(0, dtype=job.output.dtype)
    )
    out = flat_out.reshape(job.output.shape)
    for start in range(0, flat_out.numel(), CHUNK):
        chunks = [convert(flat[start : start + CHUNK]) for flat in flats]
        base = chunks[0] if split else None
        flat_out[start : start + CHUNK] = method.function(chunks[split:], base, offset=start, **kwargs)
    return out


class BufferPool:
    """Byte buffers recycled by exact size.

    Fresh memory is expensive here: on VMs that hand freed pages back to the host, touching newly
    allocated pages runs at a fraction of memory bandwidth, and a merge would otherwise allocate
    (and fault in) every input and output byte once. Inputs are read into, and outputs built in,
    buffers that return here once used. Idle buffers beyond ``idle_limit`` bytes are dropped,
    oldest first, so the pool never holds more than the work in flight plus that limit.
    """

    def __init__(self, idle_limit: int = 384 << 20) -> None:
        self.idle_limit = idle_limit
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
        buffer = torch.empty(nbytes, dtype=torch.uint8)
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


def read_inputs(job: MergeJob, pool: BufferPool) -> list[torch.Tensor]:
    return [ref.read(pool.take(ref.nbytes)) for ref in job.inputs]


def same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def default_workers(device: str) -> int:
    """Jobs computed at once: one per core on the CPU (each single-threaded), one on a GPU."""
    return max(1, min(4, os.cpu_count() or 1)) if torch.device(device).type == "cpu" else 1


def execute_plan(
    plan: MergePlan,
    writer: ShardedWriter,
    *,
    device: str = "cpu",
    progress: bool = True,
    readahead: int = 2,
    readahead_bytes: int = 384 << 20,
    workers: int | None = None,
    job_runner: JobRunner = run_job,
) -> None:
    """Merge every job into ``writer``, in plan order.

    ``workers`` jobs are computed at once, and the inputs of up to ``readahead`` more (about
    ``readahead_bytes`` in all) are read ahead; results are written strictly in order. The job
    runner gets ``(job, inputs, device, buffers)`` and may return one of its input tensors
    (modified in place) as the output.
    """
    workers = workers or default_workers(device)
    bar = tqdm(
        total=plan.output_bytes,
        unit="B",
        unit_scale=True,
        desc="merging",
        disable=not progress,
        dynamic_ncols=True,
    )
    buffers = BufferPool()
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
            name, tensor = item
            try:
                writer.write(name, tensor)
            except BaseException as exc:  # re-raised in the caller's thread
                write_errors.append(exc)
            buffers.give(tensor)

    def compute(job: MergeJob, reading: Future) -> torch.Tensor:
        inputs = reading.result()
        merged = job_runner(job, inputs, device, buffers)
        for tensor in inputs:
            if not same_storage(tensor, merged):
                buffers.give(tensor)
        return merged

    writer_thread = threading.Thread(target=write_loop, name="mergebench-writer", daemon=True)
    writer_thread.start()
    in_flight: deque[tuple[MergeJob, Future]] = deque()
    upcoming = deque(plan.jobs)
    readers = ThreadPoolExecutor(max_workers=max(1, readahead), thread_name_prefix="mergebench-read")
    computers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mergebench-compute")
    try:

        def fill() -> None:
            while upcoming and len(in_flight) < workers + readahead:
                held = sum(job.input_bytes for job, _ in in_flight)
                if in_flight and held + upcoming[0].input_bytes > readahead_bytes:
                    return
                job = upcoming.popleft()
                in_flight.append(
                    (job, computers.submit(compute, job, readers.submit(read_inputs, job, buffers)))
                )

        for count in range(1, len(plan.jobs) + 1):
            fill()
            job, future = in_flight.popleft()
            merged = future.result()
            if write_errors:
                raise write_errors[0]
            out_queue.put((job.output.name, merged))
            bar.update(job.output.nbytes)
            bar.set_postfix_str(f"{count}/{len(plan.jobs)} tensors", refresh=False)
    finally:
        for _, future in in_flight:
            future.cancel()
        computers.shutdown(wait=True, cancel_futures=True)
        readers.shutdown(wait=True, cancel_futures=True)
        out_queue.put(None)
        writer_thread.join()
        bar.close()
        torch.set_num_threads(intra_op_threads)
    if write_errors:
        raise write_errors[0]
