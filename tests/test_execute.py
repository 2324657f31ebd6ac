"""The chunked, streaming executor computes exactly what the whole-tensor method functions do."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import mergebench.execute as execute
from mergebench.io.writer import TensorSpec
from mergebench.mapper import in_order
from mergebench.methods import all_methods, get_method
from mergebench.methods.registry import TensorInputs
from mergebench.planner import Merge

PARAMS = {
    "linear": ({"weight": (0.3, 0.9)}, {"normalize": True}),
    "task_arithmetic": ({"weight": (1.0, -0.6)}, {"normalize": False, "lambda": 0.9}),
    "ties": (
        {"weight": (1.0, 0.5), "density": (0.3, 0.55)},
        {"normalize": True, "lambda": 1.0, "int8_mask": False},
    ),
    "dare_linear": (
        {"weight": (1.0, 0.5), "density": (0.3, 0.8)},
        {"normalize": False, "lambda": 1.0, "rescale": True, "int8_mask": False},
    ),
    "dare_ties": (
        {"weight": (1.0, 0.5), "density": (0.3, 0.8)},
        {"normalize": True, "lambda": 1.0, "rescale": True, "int8_mask": False},
    ),
    "slerp": ({}, {"t": 0.35}),
}


class InMemory:
    """An input whose stored tensor the test passes in directly (run_op builds inputs from its refs)."""

    refs = (None,)

    def build(self, tensors):
        return tensors[0]


@pytest.mark.parametrize("method_name", sorted(PARAMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_equals_whole_tensor(monkeypatch, method_name, dtype):
    method = get_method(method_name)
    model_params, global_params = PARAMS[method_name]
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(70, 131, generator=generator)
    # quantised deltas: many equal magnitudes, so TIES' tie-break crosses chunk boundaries
    others = [base + torch.randint(-3, 4, base.shape, generator=generator) * 0.01 for _ in range(2)]
    if method_name == "slerp":
        others = others[:1]
        model_params = {}
    models = others if method_name != "linear" else [base, others[0]]
    tensors = [t.to(dtype) for t in ([base, *others] if method.base == "required" else models)]
    job = Merge(
        output=TensorSpec("model.layers.0.mlp.up_proj.weight", tuple(base.shape), dtype),
        method=method,
        base=InMemory() if method.base == "required" else None,
        models=(InMemory(),) * (len(tensors) - (1 if method.base == "required" else 0)),
        params={**model_params, **global_params},
        compute_dtype=None,
        seed=3,
    )
    monkeypatch.setattr(execute, "CHUNK", 1000)  # many chunks, misaligned with rows and RNG blocks
    chunked = execute.run_op(job, tensors)
    # the whole-tensor path a GPU takes, run here on the CPU, gives the same result
    on_device = execute.run_op(job, tensors, "cpu", chunked=False)
    assert torch.allclose(chunked.float(), on_device.float(), rtol=1e-6, atol=1e-7)
    split = 1 if method.base == "required" else 0
    as_float = [t.float() for t in tensors]
    whole = method(
        as_float[split:], as_float[0] if split else None, name=job.output.name, seed=job.seed, **job.params
    )
    whole = whole.to(dtype)
    assert torch.equal(chunked, whole) or torch.allclose(chunked.float(), whole.float(), rtol=1e-6, atol=1e-7)


def test_buffer_pool_recycles_by_size_and_bounds_idle_memory():
    pool = execute.BufferPool(idle_limit=250)
    a = pool.take(100)
    pool.give(a.view(torch.int32))  # any view of an issued buffer returns it
    assert pool.take(100).data_ptr() == a.data_ptr()
    assert pool.take(100).data_ptr() != a.data_ptr()  # a is in use again: a new one
    pool.give(torch.empty(100, dtype=torch.uint8))  # foreign tensors are ignored
    buffers = [pool.take(100) for _ in range(3)]
    for buffer in buffers:
        pool.give(buffer)
    # only 200 idle bytes fit the limit: the oldest buffer was dropped
    reused = {pool.take(100).data_ptr() for _ in range(3)}
    assert buffers[0].data_ptr() not in reused and {b.data_ptr() for b in buffers[1:]} <= reused


def default_params(method, count: int) -> dict:
    """Every declared parameter: its default, or a plausible value where it is required."""
    values = {}
    for p in method.params:
        value = p.default if p.default is not None else (0.5 if p.name != "weight" else 0.7)
        values[p.name] = tuple([value] * count) if p.per_model else value
    return values


@pytest.mark.parametrize("method_name", sorted(all_methods()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_method_gives_the_same_result_on_the_gpu_path(monkeypatch, method_name, dtype):
    """The whole-tensor path a GPU takes (run here on the CPU) equals the CPU's default path for every
    registered method: chunked for elementwise methods, whole tensors for the others."""
    method = get_method(method_name)
    count = method.model_count or 3
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(37, 91, generator=generator)
    tensors = [base] + [base + 0.02 * torch.randn(base.shape, generator=generator) for _ in range(count)]
    tensors = [t.to(dtype) for t in tensors]
    uses_base = method.base != "unused"
    job = Merge(
        output=TensorSpec("model.layers.0.self_attn.q_proj.weight", tuple(base.shape), dtype),
        method=method,
        base=InMemory() if uses_base else None,
        models=(InMemory(),) * count,
        params=default_params(method, count),
        seed=5,
    )
    monkeypatch.setattr(execute, "CHUNK", 1000)
    inputs = tensors if uses_base else tensors[1:]
    cpu = execute.run_op(job, list(inputs))
    gpu_path = execute.run_op(job, list(inputs), "cpu", chunked=False)
    assert torch.allclose(cpu.float(), gpu_path.float(), rtol=1e-6, atol=1e-6), method_name


@pytest.mark.parametrize(
    ("shape", "chunk", "expected"),
    [
        ((70, 131), 1000, 917),  # 7 whole rows of 131
        ((4, 300), 1000, 900),
        ((2, 700, 3), 1000, 2100),  # one row (a dim-0 slice of 2100 entries) even though it exceeds CHUNK
        ((5000,), 1000, 5000),  # a 1-D tensor is one row
        ((), 1000, 1000),  # one entry: a row of 1
    ],
)
def test_whole_row_methods_get_chunks_of_whole_rows(monkeypatch, shape, chunk, expected):
    monkeypatch.setattr(execute, "CHUNK", chunk)
    assert execute.chunk_length(shape, whole_rows=True) == expected
    assert execute.chunk_length(shape, whole_rows=False) == chunk


@pytest.mark.parametrize("shape", [(6, 50, 7), (2300,), (40, 33)])
def test_della_streams_through_row_chunks_of_any_shape(monkeypatch, shape):
    """DELLA ranks entries along dim 1 within each row, so the chunked path must equal the whole tensor
    for 3-D tensors (rows span several inner entries) and 1-D ones (one row) too."""
    method = get_method("della_linear")
    generator = torch.Generator().manual_seed(4)
    base = torch.randn(shape, generator=generator)
    tensors = [base] + [base + 0.05 * torch.randn(shape, generator=generator) for _ in range(2)]
    params = {"weight": (1.0, 0.6), "density": (0.4, 0.7), "epsilon": (0.2, 0.1), "normalize": False,
              "lambda": 1.0, "rescale": True, "rescale_l1": True, "int8_mask": False}  # fmt: skip
    job = Merge(
        output=TensorSpec("model.layers.1.mlp.down_proj.weight", shape, torch.float32),
        method=method,
        base=InMemory(),
        models=(InMemory(), InMemory()),
        params=params,
        seed=11,
    )
    monkeypatch.setattr(execute, "CHUNK", 500)  # not a multiple of any row length here
    chunked = execute.run_op(job, list(tensors))
    whole = method(tensors[1:], tensors[0], name=job.output.name, seed=job.seed, **params)
    assert torch.equal(chunked, whole)
    assert not torch.equal(chunked, tensors[0])  # something was merged


ELEMENTWISE = sorted(n for n, m in all_methods().items() if m.elementwise)


def elementwise_job(method_name: str, shape: tuple[int, ...], seed: int) -> tuple[Merge, list[torch.Tensor]]:
    """A bf16 op of ``method_name`` on a base and finetunes a small move away, and its inputs."""
    method = get_method(method_name)
    count = method.model_count or 3
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator)
    tensors = [base] + [base + 0.02 * torch.randn(shape, generator=generator) for _ in range(count)]
    tensors = [t.to(torch.bfloat16) for t in tensors]
    uses_base = method.base != "unused"
    job = Merge(
        output=TensorSpec("model.layers.0.mlp.up_proj.weight", shape, torch.bfloat16),
        method=method,
        base=InMemory() if uses_base else None,
        models=(InMemory(),) * count,
        params=default_params(method, count),
        seed=seed + 7,
    )
    return job, tensors if uses_base else tensors[1:]


@pytest.mark.parametrize("method_name", ELEMENTWISE)
def test_chunks_shared_with_helper_threads_give_the_same_bytes(monkeypatch, method_name):
    """An op whose chunks are split among helper threads (idle cores) writes exactly what one thread
    walking every chunk writes, for every elementwise method (randomized ones included)."""
    job, inputs = elementwise_job(method_name, (64, 250), seed=2)
    monkeypatch.setattr(execute, "CHUNK", 500)  # 32+ chunks: enough for four runs of MIN_CHUNKS
    alone = execute.run_op(job, list(inputs))
    helpers = execute.ChunkHelpers(4)
    shared = []
    original = helpers._pool.submit
    monkeypatch.setattr(helpers._pool, "submit", lambda fn: shared.append(fn) or original(fn))
    try:
        with helpers:
            together = execute.run_op(job, list(inputs), helpers=helpers)
    finally:
        helpers.shutdown()
    assert len(shared) == 3  # the op alone on four cores: three helpers offered
    assert torch.equal(alone, together)


def pieces_run(
    helpers: execute.ChunkHelpers, starts: range, seconds: float = 0.004
) -> list[tuple[range, str]]:
    """``helpers.run`` over ``starts``, each piece sleeping ``seconds``: (piece, thread) in claim order."""
    done: list[tuple[range, str]] = []

    def compute(piece: range) -> None:
        done.append((piece, threading.current_thread().name))
        time.sleep(seconds)

    helpers.run(compute, starts)
    return done


def test_helpers_claim_pieces_so_each_chunk_runs_once():
    """``ChunkHelpers.run`` hands out consecutive pieces of PIECE_CHUNKS starts, each to one thread:
    every start once, on more than one thread when helpers are free."""
    helpers = execute.ChunkHelpers(3)
    arrived = threading.Barrier(3, timeout=30)  # each thread's first piece waits for the other two
    seen: set[str] = set()
    done: list[tuple[range, str]] = []

    def compute(piece: range) -> None:
        thread = threading.current_thread().name
        done.append((piece, thread))
        if thread not in seen:
            seen.add(thread)
            arrived.wait()

    try:
        with helpers:
            helpers.run(compute, range(0, 1000, 10))  # 100 starts: 13 pieces
    finally:
        helpers.shutdown()
    size = execute.ChunkHelpers.PIECE_CHUNKS
    assert sorted(piece.start for piece, _ in done) == list(range(0, 1000, 10 * size))
    assert sorted(start for piece, _ in done for start in piece) == list(range(0, 1000, 10))
    assert len({thread for _, thread in done}) == 3


def test_a_busy_pool_leaves_every_piece_to_the_ops_thread_without_waiting():
    """When every helper thread is taken, the op's thread computes all its pieces and returns at once:
    it never waits for a helper that has not started."""
    helpers = execute.ChunkHelpers(2)
    release = threading.Event()
    blocker = helpers._pool.submit(release.wait, 30)  # the one helper thread, busy until released
    try:
        with helpers:
            done = pieces_run(helpers, range(40), seconds=0.001)
            returned_while_busy = not blocker.done()  # waiting for a queued helper outlasts the 30 s
    finally:
        release.set()
        blocker.result()
        helpers.shutdown()
    assert {thread for _, thread in done} == {threading.current_thread().name}
    assert len(done) == 5 and returned_while_busy  # 40 starts, 5 pieces, no wait for the busy pool


def test_an_op_takes_cores_that_free_up_while_it_runs():
    """The share is re-counted before each piece: an op that started beside another (one core each on
    two) offers a helper once the other op is done, and the helper takes some of its other pieces."""
    helpers = execute.ChunkHelpers(2)
    helpers.__enter__()  # another op, computing
    other_done = threading.Event()

    def finish_other() -> None:
        other_done.set()
        helpers.__exit__()

    done: list[tuple[str, bool]] = []  # (thread, whether the other op had finished)

    def compute(piece: range) -> None:
        done.append((threading.current_thread().name, other_done.is_set()))
        if len(done) == 5:  # the other op finishes while this one is under way
            finish_other()
        time.sleep(0.01)

    try:
        with helpers:
            helpers.run(compute, range(0, 8 * 60))  # 60 pieces, ≥ 0.5 s after the other op finished
    finally:
        helpers.shutdown()
    assert done[:5] == [(threading.current_thread().name, False)] * 5  # one core each: no helper
    by_helpers = [finished for thread, finished in done if thread.startswith("mergebench-help")]
    assert by_helpers and all(by_helpers)  # helped, and only once the other op had finished


def test_a_failing_piece_stops_the_others_and_reaches_the_op():
    """An error in any piece, on whichever thread, is raised by ``run`` once the started helpers are
    done; no piece is claimed after it."""
    helpers = execute.ChunkHelpers(3)
    claimed: list[int] = []

    def compute(piece: range) -> None:
        claimed.append(piece.start)
        time.sleep(0.002)
        if piece.start == 8 * 3:
            raise ValueError("piece 3")

    try:
        with helpers, pytest.raises(ValueError, match="piece 3"):
            helpers.run(compute, range(8 * 100))
    finally:
        helpers.shutdown()
    assert len(claimed) < 20  # 100 pieces; those claimed before the failure was seen


@pytest.mark.parametrize("method_name", ELEMENTWISE)
def test_many_workers_longer_chunks_give_the_same_bytes(monkeypatch, method_name):
    """With many workers the executor cuts CHUNK_SCALE× longer chunks (chunk_entries): every elementwise
    method (randomized and whole-row ones included) writes the same bytes as with the short chunks."""
    job, inputs = elementwise_job(method_name, (48, 333), seed=6)  # rows misaligned with both lengths
    monkeypatch.setattr(execute, "CHUNK", 700)
    few, many = execute.chunk_entries(1), execute.chunk_entries(execute.MANY_WORKERS)
    assert (few, many) == (700, 700 * execute.CHUNK_SCALE)
    short = execute.run_op(job, list(inputs), chunk=few)
    long = execute.run_op(job, list(inputs), chunk=many)
    assert torch.equal(short, long)
    assert bool(long.float().abs().sum() > 0)  # a real output, not two empty ones


def test_helpers_map_returns_every_result_in_order_from_several_threads():
    """``ChunkHelpers.map`` (how a stats step's slices reach idle cores) shares the items among threads
    and still returns ``[f(item) for item in items]``."""
    helpers = execute.ChunkHelpers(4)

    def square(item: int) -> tuple[int, str]:
        time.sleep(0.005)  # long enough that the helper threads all start
        return item * item, threading.current_thread().name

    try:
        with helpers:
            results = helpers.map(square, range(64))
    finally:
        helpers.shutdown()
    assert [value for value, _ in results] == [i * i for i in range(64)]
    assert len({thread for _, thread in results}) > 1


def backwards_on_threads(function, items):
    """A Mapper that starts the last item first, on four threads, and returns the results in order."""
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(function, item) for item in reversed(items)][::-1]
        return [future.result() for future in futures]


def same_stats(a, b) -> bool:
    """Bitwise equality of two stats results (tensors, floats and nested tuples/lists of them)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same_stats(x, y) for x, y in zip(a, b, strict=True))
        )
    return type(a) is type(b) and a == b


# Parameters that make a stats step do its whole-tensor work (their defaults skip part of it) or take
# its other vector layouts.
STATS_CASES = [(name, {}) for name, m in sorted(all_methods().items()) if m.stats is not None] + [
    ("sce", {"select_topk": 0.3}),
    ("breadcrumbs", {"rescale": True}),
    ("della", {"rescale_l1": True}),
    ("model_stock", {"filter_wise": True}),
    ("nuslerp", {"nuslerp_flatten": False}),
    ("nuslerp", {"nuslerp_flatten": False, "nuslerp_row_wise": True}),
]


@pytest.mark.parametrize(("method_name", "overrides"), STATS_CASES)
def test_stats_do_not_depend_on_how_their_slices_are_run(method_name, overrides):
    """A stats step's whole-tensor quantities are per-slice results folded in slice order, so running
    the slices on four threads, last first (as idle cores may), gives bit-identical statistics."""
    job, inputs = elementwise_job(method_name, (1100, 1024), seed=5)  # > 2²⁰ entries: ≥ 5 slices
    # task vectors as large as the weights (angles well apart), rows scaled from 1e-3 to 1e3: float sums
    # of the slices then depend on the order they are added in
    generator = torch.Generator().manual_seed(8)
    scale = torch.logspace(-3, 3, 1100).unsqueeze(1)
    inputs = [((t.float() + torch.randn(t.shape, generator=generator)) * scale).to(t.dtype) for t in inputs]
    method = job.method
    keywords = method.keywords({**job.params, **overrides})
    split = 1 if job.base is not None else 0

    def stats(mapper):
        view = TensorInputs(
            inputs[split:], inputs[0] if split else None, lambda t: t.float(), name="t", seed=3, map=mapper
        )
        return method.stats(view, **keywords)

    assert same_stats(stats(in_order), stats(backwards_on_threads))
