"""Run a plan: read inputs ahead on worker threads, merge one tensor at a time, stream to the writer.

Three stages overlap — reading (threads; file reads release the GIL), arithmetic (the calling
thread; torch releases the GIL) and writing (one thread) — with bounded queues between them, so
memory stays at a few output tensors' inputs however large the model is.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from tqdm import tqdm

from mergebench.io.writer import ShardedWriter
from mergebench.plan import MergeJob, MergePlan

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


def run_job(job: MergeJob, tensors: list[torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
    """Compute one output tensor from its inputs (ordered as ``job.inputs``); returns it on the CPU."""
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
    if not method.elementwise or str(device) != "cpu":
        prepared = [convert(t) for t in tensors]
        base = prepared[0] if split else None
        return method.function(prepared[split:], base, **kwargs).to(dtype=job.output.dtype).cpu()
    if method.prepare is not None:
        kwargs.update(method.prepare(tensors[split:], tensors[0] if split else None, convert, **kwargs))
    flats = [t.reshape(-1) for t in tensors]
    out = torch.empty(job.output.shape, dtype=job.output.dtype)
    flat_out = out.view(-1)
    for start in range(0, flat_out.numel(), CHUNK):
        chunks = [convert(flat[start : start + CHUNK]) for flat in flats]
        base = chunks[0] if split else None
        flat_out[start : start + CHUNK] = method.function(chunks[split:], base, offset=start, **kwargs)
    return out


def read_inputs(job: MergeJob) -> list[torch.Tensor]:
    return [ref.read() for ref in job.inputs]


def execute_plan(
    plan: MergePlan,
    writer: ShardedWriter,
    *,
    device: str = "cpu",
    progress: bool = True,
    readahead: int = 2,
    job_runner: Callable[[MergeJob, list[torch.Tensor], str], torch.Tensor] = run_job,
) -> None:
    """Merge every job in order into ``writer``. ``readahead`` bounds how many jobs' inputs are in memory."""
    bar = tqdm(
        total=plan.output_bytes,
        unit="B",
        unit_scale=True,
        desc="merging",
        disable=not progress,
        dynamic_ncols=True,
    )
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

    writer_thread = threading.Thread(target=write_loop, name="mergebench-writer", daemon=True)
    writer_thread.start()
    pending: deque[tuple[MergeJob, Future]] = deque()
    jobs = iter(plan.jobs)
    try:
        with ThreadPoolExecutor(max_workers=max(1, readahead), thread_name_prefix="mergebench-read") as pool:
            for job in jobs:
                pending.append((job, pool.submit(read_inputs, job)))
                if len(pending) > readahead:
                    break
            count = 0
            while pending:
                job, future = pending.popleft()
                next_job = next(jobs, None)
                if next_job is not None:
                    pending.append((next_job, pool.submit(read_inputs, next_job)))
                merged = job_runner(job, future.result(), device)
                if write_errors:
                    raise write_errors[0]
                out_queue.put((job.output.name, merged))
                count += 1
                bar.update(job.output.nbytes)
                bar.set_postfix_str(f"{count}/{len(plan.jobs)} tensors", refresh=False)
    finally:
        for _, future in pending:
            future.cancel()
        out_queue.put(None)
        writer_thread.join()
        bar.close()
    if write_errors:
        raise write_errors[0]
