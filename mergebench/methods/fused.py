"""CPU kernels that do a method's per-entry steps in one pass over a chunk (numba, compiled once and
cached on disk).

Why: torch and numpy run one operation per pass over memory. TIES' merge of a 256K-entry chunk is ~25
of them (difference, magnitude, compare, mask product, weight, sum, signs, agreement, divisor, …), each
a tensor-sized write; on a 2-core machine those passes, not reading the inputs, bounded the methods
with sign election and magnitude trims. A compiled loop keeps each entry in registers from its first
step to its last.

Contract: a kernel gives the same bits as the torch expressions it stands for (the reference, and
the path on a GPU and for float64 compute): the same float32 operations in the same order, no
reassociation, a fused multiply-add (``fma``) exactly where torch's ``add(x, alpha=w)`` does one, the
same treatment of ±0, NaN and ±inf (``tests/test_fused.py`` compares bit patterns). The exception:
``gram`` and ``masked_square_sum`` stand for BLAS products (``x @ x.T``, a dot product), whose
summation order is unspecified too; their float64 sums run in vector lanes (``sum_kernel``). Inputs
are float32 or stored bfloat16 (read as its float32 value: ``widen``); outputs float32. Callers use a
kernel only where ``selection.kernel_views`` gives arrays.

Imported lazily (``import numba`` and its first kernel cost ~0.5 s): only a run that merges on the
CPU with these methods pays it (``execute`` starts loading them early, on a thread of its own).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

ZERO, ONE = np.float32(0.0), np.float32(1.0)
M32 = np.uint64((1 << 32) - 1)

OPTIONS = dict(nogil=True, boundscheck=False, error_model="numpy")  # x/0: ±inf or NaN, as torch


def kernel(function, options: dict = OPTIONS):
    """A compiled kernel, its machine code cached on disk (beside this file, else in the user's cache
    directory, or where NUMBA_CACHE_DIR says) so only the first run compiles it (~0.2 s a kernel);
    where no directory is writable (a read-only install, no home), compiled in each process instead."""
    try:
        return njit(cache=True, **options)(function)
    except RuntimeError:  # numba: "cannot cache function …: no locator available"
        return njit(**options)(function)


SUMS = dict(OPTIONS, fastmath={"reassoc"})  # float sums may be reassociated: summed in vector lanes


def sum_kernel(function):
    """A kernel whose float sums run in vector lanes (LLVM vectorises a reduction only where it may
    reorder it): for what stands for a BLAS product, not for torch's elementwise operations."""
    return kernel(function, SUMS)


@intrinsic
def fma(typingctx, a, b, c):
    """a·b + c rounded once (LLVM's ``llvm.fma``): what torch's ``add(x, alpha=w)`` computes on the
    CPU (its vector and its scalar loops both), so a kernel matches it bit for bit."""
    signature = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, sig, args):
        f32 = ir.FloatType()
        function = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32] * 3))
        return builder.call(function, args)

    return signature, codegen


@intrinsic
def _bfloat16_value(typingctx, x):
    """The float32 of a bfloat16's 16 bits (uint16): its bits in the top half, exactly as torch widens."""
    signature = types.float32(types.uint16)

    def codegen(context, builder, sig, args):
        bits = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(bits, ir.FloatType())

    return signature, codegen


def widen(value):
    """An input entry as float32: a float32 as it is, a stored bfloat16 (its bits, uint16) widened —
    kernels read bf16 checkpoints' chunks directly instead of a widened float32 copy of each."""
    return value


@overload(widen, inline="always")
def _widen(value):
    if isinstance(value, types.Float):
        return lambda value: value
    if value == types.uint16:
        return lambda value: _bfloat16_value(value)
    return None


@intrinsic
def float_bits(typingctx, x):
    """A float32's bit pattern as an int32 (LLVM ``bitcast``): torch's ``.view(torch.int32)``."""
    signature = types.int32(types.float32)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return signature, codegen


@kernel
def _disjoint_merge(weighted, weights, normalize, lambda_, base, add_base, out):
    # len(weighted) is part of the tuple's type: the loops over models unroll, the entry loop vectorises
    count = len(weighted)
    for j in range(out.shape[0]):
        total = weighted[0][j]
        for i in range(1, count):
            total = total + weighted[i][j]
        merged = ZERO
        divisor = ZERO
        for i in range(count):
            delta = weighted[i][j]
            # torch: clamp(sign(δ)·sign(Σ), min=0) — 1 where both are non-zero with one sign (NaN: 0)
            agrees = ONE if ((delta > ZERO) & (total > ZERO)) | ((delta < ZERO) & (total < ZERO)) else ZERO
            merged = merged + delta * agrees
            divisor = divisor + agrees * weights[i]
        if normalize:
            merged = merged / (ONE if divisor == ZERO else divisor)
        out[j] = merged * lambda_ + widen(base[j]) if add_base else merged


def disjoint_merge(
    weighted: tuple[np.ndarray, ...],
    weights: Sequence[float],
    normalize: bool,
    base: np.ndarray | None = None,
    lambda_: float = 1.0,
) -> torch.Tensor:
    """``sparsify.disjoint_merge`` over float32 views (then, with ``base`` — float32 or stored
    bf16 — θ_base + λ·merged as ``basic.plus_base`` computes it): one pass."""
    out = np.empty(weighted[0].shape, dtype=np.float32)
    with_base = base is not None
    _disjoint_merge(
        weighted,
        np.asarray(weights, dtype=np.float32),
        normalize,
        np.float32(lambda_),
        base if with_base else out,
        with_base,
        out,
    )
    return torch.from_numpy(out)


@njit(inline="always")
def _trimmed(value, reference, j, keep, keep_cutoff, drop, drop_cutoff, scale, weight):
    """Entry j of w·s·τ·mask (``kept``): τ = value − reference, inside the keep cut, not inside drop."""
    delta = widen(value) - reference
    magnitude = abs(delta)
    inside = (magnitude > keep) | ((magnitude == keep) & (j <= keep_cutoff))
    above = (magnitude > drop) | ((magnitude == drop) & (j <= drop_cutoff))
    return delta * (ONE if inside and not above else ZERO) * scale * weight


@kernel
def _kept(model, base, keep, keep_cutoff, drop, drop_cutoff, scale, weight, out):
    for j in range(out.shape[0]):
        out[j] = _trimmed(model[j], widen(base[j]), j, keep, keep_cutoff, drop, drop_cutoff, scale, weight)


def kept(
    model: np.ndarray,
    base: np.ndarray,
    keep: tuple[float, int],
    drop: tuple[float, int],
    offset: int,
    weight: float,
    scale: float = 1.0,
) -> np.ndarray:
    """w·s·τ·mask of a chunk at flat ``offset``, τ = θ − θ_base: the mask keeps entries inside the
    top-k cut ``keep`` but not inside ``drop`` (each a (threshold, tie cutoff) of
    ``selection.streamed_top_k_cuts``, tested as ``sparsify.trim_mask`` does); the products in the torch
    path's order. One pass. DELLA's whole τ (density 1) and the reference of ``trimmed_merge``'s
    per-model step (TIES' trim: ``drop`` ``selection.KEEP_NONE``; breadcrumbs' band)."""
    out = np.empty(model.shape, dtype=np.float32)
    _kept(
        model,
        base,
        np.float32(keep[0]),
        _local(keep[1], offset, out.size),
        np.float32(drop[0]),
        _local(drop[1], offset, out.size),
        np.float32(scale),
        np.float32(weight),
        out,
    )
    return out


@kernel
def _trimmed_merge(
    models, base, keep, keep_cutoff, drop, drop_cutoff, scale, weight, normalize, divisor, lambda_, out
):
    # Per-model cuts, scales and weights come as tuples (values: they stay in registers, where arrays
    # that ``out`` might alias are reloaded each entry). ``divisor`` None: TIES' election
    # (``_disjoint_merge``'s steps on the trimmed entries, recomputed rather than stored), else the plain
    # sum ÷ divisor (``combination``'s). ``_trimmed`` is spelled out at each use: through a helper that
    # itself inlined ``_trimmed``, a first (uncached) compile came out scalar, 8× slower.
    count = len(models)
    for j in range(out.shape[0]):
        reference = widen(base[j])
        total = ZERO
        for i in range(count):  # the first term as it is (ZERO + −0 would be +0), then added
            term = _trimmed(
                models[i][j],
                reference,
                j,
                keep[i],
                keep_cutoff[i],
                drop[i],
                drop_cutoff[i],
                scale[i],
                weight[i],
            )
            total = term if i == 0 else total + term
        if divisor is None:
            merged = ZERO
            agreeing = ZERO
            for i in range(count):
                delta = _trimmed(
                    models[i][j],
                    reference,
                    j,
                    keep[i],
                    keep_cutoff[i],
                    drop[i],
                    drop_cutoff[i],
                    scale[i],
                    weight[i],
                )
                agrees = (
                    ONE if ((delta > ZERO) & (total > ZERO)) | ((delta < ZERO) & (total < ZERO)) else ZERO
                )
                merged = merged + delta * agrees
                agreeing = agreeing + agrees * weight[i]
            if normalize:
                merged = merged / (ONE if agreeing == ZERO else agreeing)
        else:
            merged = total / divisor if normalize else total
        out[j] = merged * lambda_ + reference


def trimmed_merge(
    models: tuple[np.ndarray, ...],
    base: np.ndarray,
    cuts: Sequence[tuple[tuple[float, int], tuple[float, int], float]],
    offset: int,
    weights: Sequence[float],
    *,
    elect_signs: bool,
    normalize: bool,
    lambda_: float,
) -> torch.Tensor:
    """θ_base + λ·combine_i(``kept``(θ_i, θ_base, keep_i, drop_i, w_i, s_i)) of a chunk at flat
    ``offset``, ``cuts`` giving each model's (keep, drop, scale): combined by ``disjoint_merge``
    (``elect_signs``) or summed (÷ Σ w_i with ``normalize``, as ``combination``). TIES' and
    breadcrumbs' whole merge in one pass: the trimmed task vectors never leave registers."""
    out = np.empty(base.shape, dtype=np.float32)
    size = out.size
    _trimmed_merge(
        models,
        base,
        tuple(np.float32(keep[0]) for keep, _, _ in cuts),
        tuple(np.int64(_local(keep[1], offset, size)) for keep, _, _ in cuts),
        tuple(np.float32(drop[0]) for _, drop, _ in cuts),
        tuple(np.int64(_local(drop[1], offset, size)) for _, drop, _ in cuts),
        tuple(np.float32(scale) for _, _, scale in cuts),
        tuple(np.float32(w) for w in weights),
        normalize,
        None if elect_signs else np.float32(sum(weights)),
        np.float32(lambda_),
        out,
    )
    return torch.from_numpy(out)


def _local(cutoff: int, offset: int, size: int) -> int:
    """A tie cutoff relative to a chunk at ``offset``, clipped to [-1, size] (fits int64 either way)."""
    return min(max(cutoff - offset, -1), size)


@njit(inline="always")
def _triple32(counter, k1, rounds, last_shift):
    """``sparsify``'s keyed triple32 of a counter (uint64 arithmetic masked to 32 bits)."""
    h = counter & M32
    for index in range(len(rounds)):
        shift, multiplier = rounds[index]
        h ^= h >> np.uint64(shift)
        h = (h * np.uint64(multiplier)) & M32
        if index == 0:
            h ^= k1
    return h ^ (h >> np.uint64(last_shift))


@kernel
def _dropped(model, base, first, k1, rounds, last_shift, bound, density, divide, weight, out):
    for j in range(out.shape[0]):
        h = _triple32(first + np.uint64(j), k1, rounds, last_shift)  # the counter wraps mod 2³²
        kept = (widen(model[j]) - widen(base[j])) * (ONE if h < bound else ZERO)
        out[j] = (kept / density if divide else kept) * weight


def dropped(
    model: np.ndarray,
    base: np.ndarray,
    pieces,
    rounds: tuple[tuple[int, int], ...],
    last_shift: int,
    bound: int,
    density: float,
    divide: bool,
    weight: float,
) -> np.ndarray:
    """DARE's w·τ·keep (÷ density with ``divide``) of a chunk: the keep-mask's counter hash
    (``sparsify.keep_mask``: triple32 with ``rounds``, kept where h < ``bound``) computed beside the
    difference instead of into a mask first; ``pieces`` are ``sparsify._pieces`` of the chunk; the
    operations in ``sparsify.dare_drop``'s order, then the weight. One pass."""
    out = np.empty(model.shape, dtype=np.float32)
    for start, n, first, k1 in pieces:
        stop = start + n
        _dropped(
            model[start:stop],
            base[start:stop],
            np.uint64(first),
            np.uint64(k1),
            rounds,
            last_shift,
            np.uint64(bound),
            np.float32(density),
            divide,
            np.float32(weight),
            out[start:stop],
        )
    return out


@intrinsic
def trailing_zeros(typingctx, x):
    """The index of x's lowest set bit (LLVM's ``llvm.cttz``; x ≠ 0)."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        function = builder.module.declare_intrinsic(
            "llvm.cttz", [i64], ir.FunctionType(i64, [i64, ir.IntType(1)])
        )
        return builder.call(function, [args[0], ir.Constant(ir.IntType(1), 1)])

    return signature, codegen


COLLECT_ROOM = 2  # positions ``_collect`` may write past the last one found: its arrays have n + 2
TOP_BIT = np.uint64(1 << 63)


@njit(inline="always")
def _collect(bits, start, positions, found):
    """Append the positions of ``bits``' set bits (a word of 64 entries from ``start``).

    A band is sparse (a TIES bracket holds ~2% of the entries: most words have 0–2 bits set), and a
    loop over the bits mispredicted its exit about once a word. So the first two positions are
    written whether those bits exist or not (hence COLLECT_ROOM) and counted after; only a third bit
    onwards loops. A 2% band over a bf16 task vector larger than the caches: 0.40 instead of 0.58 ns an
    entry here (an empty band: 0.25 either way; ``tools/bench_ranks.py``)."""
    rest = bits & (bits - np.uint64(1))
    positions[found] = start + np.int64(trailing_zeros(bits | TOP_BIT))
    positions[found + 1] = start + np.int64(trailing_zeros(rest | TOP_BIT))
    found += np.int64(bits != 0) + np.int64(rest != 0)
    rest &= rest - np.uint64(1)
    while rest:
        positions[found] = start + np.int64(trailing_zeros(rest))
        found += 1
        rest &= rest - np.uint64(1)
    return found


@njit(inline="always")
def _band_value(model, base, j):
    """Entry j of the values a band is cut from: ``model``'s, or |model − base| where base is given
    (None is a type of its own: each case compiles without the other's branch, and vectorises)."""
    if base is None:
        return widen(model[j])
    return abs(widen(model[j]) - widen(base[j]))


@kernel
def _band(model, base, lo, hi, first, positions):
    # Word by word (64 entries): the compares vectorise into a bitmask and only its set bits are
    # visited (``_collect``) — a band of ~2% sets 0–2 bits in most words (flatnonzero of a bool mask
    # took 3× as long).
    n = model.shape[0]
    full = n - n % 64
    above = 0
    found = 0
    for start in range(0, full, 64):  # whole words: a fixed trip count, unrolled and vectorised
        bits = np.uint64(0)
        for k in range(64):
            value = _band_value(model, base, start + k)
            bits |= np.uint64((value >= lo) & (value <= hi)) << np.uint64(k)
            above += value > hi  # NaN counts in neither
        found = _collect(bits, first + start, positions, found)
    bits = np.uint64(0)
    for j in range(full, n):
        value = _band_value(model, base, j)
        bits |= np.uint64((value >= lo) & (value <= hi)) << np.uint64(j - full)
        above += value > hi
    return above, _collect(bits, first + full, positions, found)


@njit(inline="always")
def _word2(model, base, start, count, lo0, hi0, lo1, hi1, first, positions0, positions1, counts):
    # ``count`` ≤ 64 entries from ``start`` against two ranges: their bits collected into the
    # positions, ``counts`` (above0, found0, above1, found1) advanced
    bits0 = bits1 = np.uint64(0)
    above0, found0, above1, found1 = counts
    for k in range(count):
        value = _band_value(model, base, start + k)
        bits0 |= np.uint64((value >= lo0) & (value <= hi0)) << np.uint64(k)
        bits1 |= np.uint64((value >= lo1) & (value <= hi1)) << np.uint64(k)
        above0 += value > hi0
        above1 += value > hi1
    found0 = _collect(bits0, first + start, positions0, found0)
    found1 = _collect(bits1, first + start, positions1, found1)
    return above0, found0, above1, found1


@kernel
def _band_pair(model, base, lo0, hi0, lo1, hi1, first, positions0, positions1):
    # ``_band`` of two ranges of the same values, each value computed once (breadcrumbs' two cuts of
    # a model; Arcee Fusion's quartiles: a pair, then one). Whole words in the loop (a constant count:
    # unrolled, vectorised), the tail after it — one loop over both did not vectorise (3× slower).
    # In cache: 0.34 ns an entry, where three ranges in one pass took 0.51 for these two.
    n = model.shape[0]
    full = n - n % 64
    counts = (0, 0, 0, 0)
    for start in range(0, full, 64):
        counts = _word2(model, base, start, 64, lo0, hi0, lo1, hi1, first, positions0, positions1, counts)
    if full < n:
        counts = _word2(
            model, base, full, n - full, lo0, hi0, lo1, hi1, first, positions0, positions1, counts
        )
    return counts


def band(
    values: np.ndarray,
    ranges: Sequence[tuple[float, float]],
    base: np.ndarray | None = None,
    first: int = 0,
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """``selection.count_and_band`` of ``values`` — with ``base``, of |values − base|, never
    materialised — for each (lo, hi) of ``ranges``: (#entries > hi, the entries in [lo, hi], their
    flat positions counted from ``first``). Two ranges share one pass."""
    counts: list[tuple[int, np.ndarray]] = []
    for group in range(0, len(ranges), 2):
        # positions: untouched beyond the band (and COLLECT_ROOM), so never faulted in
        chosen = [(np.float32(lo), np.float32(hi)) for lo, hi in ranges[group : group + 2]]
        positions = [np.empty(values.shape[0] + COLLECT_ROOM, dtype=np.int64) for _ in chosen]
        if len(chosen) == 1:
            above, found = _band(values, base, *chosen[0], np.int64(first), positions[0])
            counts.append((above, positions[0][:found].copy()))
            continue
        above0, found0, above1, found1 = _band_pair(
            values, base, *chosen[0], *chosen[1], np.int64(first), *positions
        )
        counts += [(above0, positions[0][:found0].copy()), (above1, positions[1][:found1].copy())]
    results = []
    for above, where in counts:
        found_values = np.empty(where.size, dtype=np.float32)
        _band_values(values, base, where, np.int64(first), found_values)
        results.append((int(above), torch.from_numpy(found_values), torch.from_numpy(where)))
    return results


@kernel
def _band_values(model, base, positions, first, out):
    for i in range(positions.shape[0]):
        out[i] = _band_value(model, base, positions[i] - first)


@kernel
def _magnitudes(model, base, out):
    for j in range(out.shape[0]):
        out[j] = abs(widen(model[j]) - widen(base[j]))


def warm_up() -> None:
    """Load numba's machinery and one kernel (from the disk cache where it is there): what the first
    kernel call of a process costs, so ``execute`` can pay it in the background."""
    _magnitudes(np.zeros(1, dtype=np.float32), np.zeros(1, dtype=np.float32), np.empty(1, dtype=np.float32))


def magnitudes(model: np.ndarray, base: np.ndarray, out: np.ndarray) -> None:
    """|θ − θ_base| into ``out``, as ``torch.sub(…).abs_()`` computes it: one pass, no temporary."""
    _magnitudes(model, base, out)


RADIX_BITS, RADIX_DIGITS = 11, 3  # sorted_floats: a 32-bit key in three 11-bit digits
RADIX_MASK = np.uint32((1 << RADIX_BITS) - 1)
SIGN, ALL_BITS = np.uint32(1 << 31), np.uint32((1 << 32) - 1)


@kernel
def _radix_sort(values, keys, spare, counts):
    counts[:] = 0
    for i in range(values.shape[0]):  # each float's bits as an unsigned key of the same order
        value = values[i]
        if value != value:
            return False
        bits = np.uint32(float_bits(value))
        key = bits ^ (ALL_BITS if bits & SIGN else SIGN)
        keys[i] = key
        for digit in range(RADIX_DIGITS):
            counts[digit, (key >> np.uint32(digit * RADIX_BITS)) & RADIX_MASK] += 1
    source, target = keys, spare
    for digit in range(RADIX_DIGITS):  # least significant digit first; each pass is stable
        shift = np.uint32(digit * RADIX_BITS)
        if counts[digit, (source[0] >> shift) & RADIX_MASK] == source.shape[0]:
            continue  # every key has this digit's value: the pass would keep the order
        running = 0
        for bucket in range(1 << RADIX_BITS):
            count = counts[digit, bucket]
            counts[digit, bucket] = running
            running += count
        for i in range(source.shape[0]):
            key = source[i]
            bucket = (key >> shift) & RADIX_MASK
            target[counts[digit, bucket]] = key
            counts[digit, bucket] += 1
        source, target = target, source
    for i in range(source.shape[0]):
        key = source[i]
        keys[i] = key ^ (SIGN if key & SIGN else ALL_BITS)
    return True


def sorted_floats(values: np.ndarray) -> np.ndarray | None:
    """A float32 array in ascending order (−0 before +0), or None if it holds a NaN.

    Why not ``np.sort``: the top-k brackets sort a 64K sample and a band around each threshold; on
    this project's AMD Zen 4 VM numpy's AVX-512 sort took 1.37 ms for 64K values (compress-stores are
    microcoded there), this LSD radix sort 0.23 (``tools/bench_ranks.py``)."""
    keys = np.empty(values.size, dtype=np.uint32)
    if not values.size or _radix_sort(
        values,
        keys,
        np.empty(values.size, dtype=np.uint32),
        np.empty((RADIX_DIGITS, 1 << RADIX_BITS), dtype=np.int64),
    ):
        return keys.view(np.float32)
    return None


ABOVE_INF = 0x7F800001  # della.magnitude_order's clamp: every NaN's magnitude bits, one value above +inf
UNIFORM_STEP = 2.0**-24  # sparsify.uniforms: U = ⌊h / 2⁸⌋·2⁻²⁴

# ``magnitude_ranks`` counts each row's keys (|δ|'s bits) by their bits above BUCKET_SHIFT: rows of
# bf16 checkpoints' differences are mostly exact there (the difference of two bf16 values whose
# exponents differ by at most one has at most 9 significant bits), so counting orders them, ties by
# column.
BUCKET_SHIFT = 15
BUCKET_LOW = (1 << BUCKET_SHIFT) - 1
COLUMN_BITS = 32  # a clash's (key, column) in one int64: the key (< 2³¹) above, the column below
COLUMN_MASK = (1 << COLUMN_BITS) - 1
CLASHES = 128  # entries re-sorted per row at most (insertion sort); more: the row is left to a sort
BUCKETS_LEAST = 4096  # buckets a row may use: 4m, and at least this many (short rows)


# Row kernels index a row's own slices: with offsets from the whole array the compiler did not
# vectorise (7× slower).


@kernel
def _magnitude_ranks(model, base, delta, ranks, m, counts, clashes, unranked):
    capacity = counts.shape[0] // 3
    left = 0
    for row_start in range(0, delta.shape[0], m):
        row = slice(row_start, row_start + m)
        model_row, base_row, delta_row, keys = model[row], base[row], delta[row], ranks[row]
        for column in range(m):  # the keys, in the ranks' memory until each is replaced by its rank
            difference = widen(model_row[column]) - widen(base_row[column])
            delta_row[column] = difference
            keys[column] = min(float_bits(abs(difference)), ABOVE_INF)
        high, low, inexact = 0, ABOVE_INF, 0
        for column in range(m):
            key = keys[column]
            high = max(high, key)
            low = min(low, key if key != 0 else ABOVE_INF)
            inexact += (key & BUCKET_LOW) != 0
        if high == 0:  # all zero: column order
            for column in range(m):
                keys[column] = column
            continue
        offset = (low >> BUCKET_SHIFT) - 1  # bucket 0: the zeros; then one per value of the high bits
        size = (high >> BUCKET_SHIFT) - offset + 1
        if size > capacity or inexact > m // 4:
            unranked[left] = row_start // m
            left += 1
            continue
        exact, inexact_in, after = counts[:size], counts[capacity : capacity + size], counts[2 * capacity :]
        exact[:] = 0
        inexact_in[:] = 0
        for column in range(m):
            key = keys[column]
            bucket = (key >> BUCKET_SHIFT) - offset if key != 0 else 0
            exact[bucket] += 1
            if key & BUCKET_LOW:
                inexact_in[bucket] += 1
        running = 0
        for bucket in range(size):  # a bucket's exact keys first (column order), then its inexact ones
            count = exact[bucket]
            exact[bucket] = running
            after[bucket] = running + count - inexact_in[bucket]
            running += count
        clashing = 0
        for column in range(m):
            key = keys[column]
            bucket = (key >> BUCKET_SHIFT) - offset if key != 0 else 0
            if key & BUCKET_LOW:
                keys[column] = after[bucket]
                after[bucket] += 1
                if inexact_in[bucket] > 1:  # shares its bucket with another inexact key: sorted below
                    if clashing < clashes.shape[0]:
                        clashes[clashing] = (np.int64(key) << COLUMN_BITS) | column
                    clashing += 1
            else:
                keys[column] = exact[bucket]
                exact[bucket] += 1
        if clashing > clashes.shape[0]:
            unranked[left] = row_start // m
            left += 1
            continue
        for i in range(1, clashing):  # insertion sort of the (key, column) pairs
            item, j = clashes[i], i - 1
            while j >= 0 and clashes[j] > item:
                clashes[j + 1] = clashes[j]
                j -= 1
            clashes[j + 1] = item
        previous, rank = -1, 0
        for i in range(clashing):  # each bucket's inexact ranks, reassigned in (key, column) order
            bucket = np.int32(clashes[i] >> (COLUMN_BITS + BUCKET_SHIFT)) - offset
            if bucket != previous:
                rank, previous = after[bucket] - inexact_in[bucket], bucket
            keys[clashes[i] & COLUMN_MASK] = rank
            rank += 1
    return left


def magnitude_ranks(model: np.ndarray, base: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(δ, ranks, unranked) of a block of whole rows of m entries, δ = θ − θ_base (float32):
    each entry's rank within its row by ``della.magnitude_order`` (ascending |δ|, NaN last, equal
    magnitudes by column), int32 — except in the rows listed in ``unranked``, left to that sort.

    Why not numpy's row sort of (|δ| bits, column) keys, as before: on this project's 2-core AMD Zen 4
    VM it took 15.7 ns an entry (its AVX-512 partition's compress-stores are microcoded there),
    on the 16-core Xeon of the device machine 4.8; counting, δ and keys included, takes 3.5 and 5.3
    (``tools/bench_ranks.py``).
    A row is counted by its keys' bits above ``BUCKET_SHIFT`` (one bucket per value between the
    row's smallest non-zero and largest key; zeros first), exact keys in column order within their
    bucket, then its inexact keys (low bits set), re-sorted where two share a bucket. Rows whose
    buckets would outnumber max(4m, 4096), or whose inexact keys are many (a float32 checkpoint's
    differences), are left to the sort."""
    delta = np.empty(model.shape, dtype=np.float32)
    ranks = np.empty(model.shape, dtype=np.int32)
    counts = np.empty(3 * max(4 * m, BUCKETS_LEAST), dtype=np.int32)
    clashes = np.empty(CLASHES, dtype=np.int64)
    unranked = np.empty(model.shape[0] // m, dtype=np.int64)
    left = _magnitude_ranks(model, base, delta, ranks, m, counts, clashes, unranked)
    return delta, ranks, unranked[:left]


@kernel
def _magpruned(delta, ranks, step, lowest, first, k1, rounds, last_shift, divide, scale, weight, out):
    for j in range(delta.shape[0]):  # in entry order: vectorised
        p = np.float64(ranks[j]) * step + lowest  # della.keep_ramp's two roundings
        h = _triple32(first + np.uint64(j), k1, rounds, last_shift)
        keep = np.float64(h >> np.uint64(8)) * UNIFORM_STEP < p  # float64, as numpy compares
        if divide:  # (δ / p)·keep + 0.0 in float64, then rounded: a dropped −0 becomes +0
            kept = np.float32(np.float64(delta[j]) / p * (1.0 if keep else 0.0) + 0.0)
        else:
            kept = delta[j] * (ONE if keep else ZERO)
        out[j] = kept * scale * weight


def magpruned(
    delta: np.ndarray,
    ranks: np.ndarray,
    step: float,
    lowest: float,
    first: int,
    k1: int,
    rounds: tuple[tuple[int, int], ...],
    last_shift: int,
    divide: bool,
    scale: float,
    weight: float,
) -> np.ndarray:
    """w·s·MAGPRUNE(δ) of a block of whole rows given each entry's rank in its row
    (``magnitude_ranks``): keep probability lowest + rank·step as ``della.keep_ramp`` rounds it,
    DARE's keyed hash from counter ``first``; ``divide``: survivors ÷ p in float64. One pass, in
    entry order."""
    out = np.empty(delta.shape, dtype=np.float32)
    _magpruned(
        delta,
        ranks,
        step,
        lowest,
        np.uint64(first),
        np.uint64(k1),
        rounds,
        last_shift,
        divide,
        np.float32(scale),
        np.float32(weight),
        out,
    )
    return out


@kernel
def _variance2(model0, model1, base, out):
    nonzero = 0
    for j in range(out.shape[0]):
        spread = np.float64(widen(model0[j]) - widen(base[j])) - np.float64(widen(model1[j]) - widen(base[j]))
        out[j] = np.float32(spread * spread * 0.25)
        nonzero += out[j] != ZERO
    return nonzero


def variance2(model0: np.ndarray, model1: np.ndarray, base: np.ndarray, out: np.ndarray) -> int:
    """``sce.variance`` of two task vectors, ((τ₀ − τ₁)/2)² in float64 rounded once, into ``out``;
    returns how many are non-zero. One pass."""
    return int(_variance2(model0, model1, base, out))


@kernel
def _cut_mask(values, threshold, cutoff, first, out):
    for j in range(values.shape[0]):
        value = values[j]
        out[j] = (value > threshold) | ((value == threshold) & (first + j <= cutoff))


def cut_mask(values: np.ndarray, threshold: float, cutoff: int, first: int, out: np.ndarray) -> None:
    """``sparsify.trim_mask`` of non-negative float32 values at flat index ``first`` into the bool
    ``out``: value > threshold, or equal to it up to flat index ``cutoff``. One pass, no temporary."""
    _cut_mask(values, np.float32(threshold), np.int64(cutoff), np.int64(first), out)


@sum_kernel
def _masked_square_sum(model, base, selected):
    total = 0.0
    for j in range(model.shape[0]):
        kept = np.float64((widen(model[j]) - widen(base[j])) * (ONE if selected[j] else ZERO))
        total += kept * kept
    return total


def masked_square_sum(model: np.ndarray, base: np.ndarray, selected: np.ndarray) -> float:
    """Σ ((θ − θ_base)·selected)² in float64 (``sce_stats``' energies; it stood for a dot product of
    the widened vector with itself: summed in vector lanes), one pass and no float64 copy."""
    return float(_masked_square_sum(model, base, selected))


@kernel
def _sce_merge(models, base, selected, weights, floor, out):
    # ``selected`` None (every entry: a type of its own, so that case compiles without the mask) or
    # the chunk's mask — a dummy array here once read past its end and crashed a 16-core run
    count = len(models)
    for j in range(out.shape[0]):
        keep = ONE if selected is None else (ONE if selected[j] else ZERO)
        total = (widen(models[0][j]) - widen(base[j])) * keep
        for i in range(1, count):
            total = total + (widen(models[i][j]) - widen(base[j])) * keep
        elected = -ONE if total < ZERO else ONE  # sign(Σ)+½ then sign: +1 for Σ ≥ 0, ±0 and NaN
        merged = ZERO
        divisor = ZERO
        for i in range(count):
            delta = (widen(models[i][j]) - widen(base[j])) * keep
            agrees = (ONE if delta * elected > ZERO else ZERO) * weights[i]
            merged = merged + delta * agrees
            divisor = divisor + agrees
        out[j] = merged / max(divisor, floor) + widen(base[j])


def sce_merge(
    models: tuple[np.ndarray, ...],
    base: np.ndarray,
    selected: np.ndarray | None,
    weights: Sequence[float],
    floor: float,
) -> torch.Tensor:
    """``sce.sce`` of a chunk (``selected``: its part of the variance mask, None: every entry):
    θ_base + Σ w_i[agree]τ̂_i / max(Σ w_i[agree], floor), in torch's operation order. One pass."""
    out = np.empty(base.shape, dtype=np.float32)
    _sce_merge(
        models,
        base,
        selected,
        np.asarray(weights, dtype=np.float32),
        np.float32(floor),
        out,
    )
    return torch.from_numpy(out)


@kernel
def _ram_merge(models, base, epsilon, boosts, out):
    count = len(models)
    for j in range(out.shape[0]):
        changes = ZERO  # n: how many models change the entry beyond ε (a float, as torch counts)
        for i in range(count):
            changes = changes + (ONE if abs(widen(models[i][j]) - widen(base[j])) > epsilon else ZERO)
        alone = ONE if changes == ONE else ZERO
        several = ONE if changes > ONE else ZERO
        shared = max(changes, ONE)
        merged = ZERO
        for i in range(count):
            tau = widen(models[i][j]) - widen(base[j])
            kept = tau * (ONE if abs(tau) > epsilon else ZERO)
            merged = merged + (kept * alone * boosts[i] + kept * several / shared)
        out[j] = merged + widen(base[j])


def ram_merge(
    models: tuple[np.ndarray, ...], base: np.ndarray, epsilon: float, boosts: Sequence[float]
) -> torch.Tensor:
    """``ram.ram_merge`` of chunk views (float32 or stored bf16): θ_base + Σ_i τ_i·[|τ_i| > ε]·
    (λ_i·[n = 1] + [n > 1]/n), torch's operations in its order. One pass."""
    out = np.empty(base.shape, dtype=np.float32)
    _ram_merge(models, base, np.float32(epsilon), np.asarray(boosts, dtype=np.float32), out)
    return torch.from_numpy(out)


@kernel
def _overlap_counts(models, base, epsilon, counts):
    # one walk per model with its two counts in locals (vectorised); n recomputed on each walk
    count = len(models)
    for i in range(count):
        model = models[i]
        shared = 0
        alone = 0
        for j in range(base.shape[0]):
            changes = 0
            for k in range(count):
                changes += abs(widen(models[k][j]) - widen(base[j])) > epsilon
            mine = abs(widen(model[j]) - widen(base[j])) > epsilon
            shared += mine & (changes > 1)
            alone += mine & (changes == 1)
        counts[i] = shared
        counts[count + i] = alone


def overlap_counts(models: tuple[np.ndarray, ...], base: np.ndarray, epsilon: float) -> list[int]:
    """``ram.overlap_counts`` of slice views (float32 or stored bf16), flattened: per model the
    entries it changes beyond ε that another model changes too, then per model those only it
    changes. One pass."""
    counts = np.zeros(2 * len(models), dtype=np.int64)
    _overlap_counts(models, base, np.float32(epsilon), counts)
    return [int(c) for c in counts]


@njit(inline="always", **SUMS)
def _point(values, base, j):
    if base is None:  # a type of its own: each case compiles without the other's branch
        return np.float64(widen(values[j]))
    return np.float64(widen(values[j]) - widen(base[j]))


@sum_kernel
def _gram(points, base, out):
    # one pass for 2 or 3 points (``gram``'s only cases: indices are constants, so the points' array
    # types may differ), every product's sum in its own register lanes
    if len(points) == 2:
        p0, p1 = points
        s00 = s01 = s11 = 0.0
        for j in range(p0.shape[0]):
            a, b = _point(p0, base, j), _point(p1, base, j)
            s00 += a * a
            s01 += a * b
            s11 += b * b
        out[0, 0], out[0, 1], out[1, 1] = s00, s01, s11
    else:
        p0, p1, p2 = points
        s00 = s01 = s02 = s11 = s12 = s22 = 0.0
        for j in range(p0.shape[0]):
            a, b, c = _point(p0, base, j), _point(p1, base, j), _point(p2, base, j)
            s00 += a * a
            s01 += a * b
            s02 += a * c
            s11 += b * b
            s12 += b * c
            s22 += c * c
        out[0, 0], out[0, 1], out[0, 2], out[1, 1], out[1, 2], out[2, 2] = s00, s01, s02, s11, s12, s22


def gram(points: tuple[np.ndarray, ...], base: np.ndarray | None) -> torch.Tensor:
    """G_ik = Σ_j x_i[j]·x_k[j] in float64 for 2 or 3 points, x_i the float64 of
    point i — of θ_i − θ_base in float32 with ``base``, as ``geometry.read_stacked`` forms it: one pass
    over the stored slices instead of widening them into a buffer and a BLAS product of it (3.0 vs 20
    ms for three 11.5M-entry bf16 tensors on one core). Sums in another order than BLAS': the last
    bits of G may differ."""
    out = np.zeros((len(points), len(points)))
    _gram(points, base, out)
    return torch.from_numpy(out + np.triu(out, 1).T)


@kernel
def _widened(model, base, out):
    for j in range(out.shape[0]):
        if base is None:  # a type of its own: each case compiles without the other's branch
            out[j] = np.float64(widen(model[j]))
        else:
            out[j] = np.float64(widen(model[j]) - widen(base[j]))


def widened_difference(model: np.ndarray, base: np.ndarray | None, out: np.ndarray) -> None:
    """float64(θ − θ_base) — float64(θ) without ``base`` — into ``out`` (a row of
    ``geometry.read_stacked``'s buffer): the float32 difference, then widened, as ``out.copy_(model −
    base)`` computes it, in one pass and without a temporary."""
    _widened(model, base, out)


@kernel
def _combination(models, base, coefficients, subtract, fused_adds, divide, divisor, lambda_, add_base, out):
    count = len(models)
    for j in range(out.shape[0]):
        reference = widen(base[j])
        first = widen(models[0][j])
        merged = (first - reference if subtract else first) * coefficients[0]
        for i in range(1, count):
            term = widen(models[i][j])
            if subtract:
                term = term - reference
            if fused_adds:  # merged.add_(term, alpha=c): torch's fused multiply-add
                merged = fma(term, coefficients[i], merged)
            else:  # merged += term * c
                merged = merged + term * coefficients[i]
        if divide:
            merged = merged / divisor
        out[j] = merged * lambda_ + reference if add_base else merged


def combination(
    models: tuple[np.ndarray, ...],
    base: np.ndarray | None,
    coefficients: Sequence[float] | None,
    *,
    subtract: bool,
    fused_adds: bool,
    divisor: float | None = None,
    lambda_: float = 1.0,
) -> torch.Tensor:
    """θ_base + λ·(Σ c_i·x_i ÷ ``divisor``), x_i = θ_i − θ_base with ``subtract`` else θ_i (or the
    x_i already weighted: ``coefficients`` None, each c_i 1): the first product, then each next term
    added as ``merged.add_(x_i, alpha=c_i)`` (``fused_adds``: one rounding, torch's fused multiply-add)
    or ``merged += x_i * c_i``; the division where given, then ``basic.plus_base`` where ``base`` is
    given (a product by 1 or by λ = 1 changes no bit). The closed forms of SLERP, nuslerp, multislerp and
    karcher, ``basic.weighted_sum`` (DARE) and the plain sums of breadcrumbs and DELLA, in their
    operation order. One pass."""
    out = np.empty(models[0].shape, dtype=np.float32)
    with_base = base is not None
    _combination(
        models,
        base if with_base else models[0],
        np.asarray(coefficients if coefficients is not None else [1.0] * len(models), dtype=np.float32),
        subtract and with_base,
        fused_adds,
        divisor is not None,
        np.float32(divisor if divisor is not None else 1.0),
        np.float32(lambda_),
        with_base,
        out,
    )
    return torch.from_numpy(out)


@kernel
def _stock(models, base, count, t, one_minus_t, out):
    for j in range(out.shape[0]):
        average = widen(models[0][j])
        for i in range(1, len(models)):
            average = average + widen(models[i][j])
        out[j] = average / count * t + widen(base[j]) * one_minus_t


def stock(models: tuple[np.ndarray, ...], base: np.ndarray, t: float) -> torch.Tensor:
    """``model_stock``'s t·mean(θ_i) + (1 − t)·θ_base for one t (float32 as torch rounds t, 1 − t and
    the model count). One pass."""
    out = np.empty(base.shape, dtype=np.float32)
    _stock(models, base, np.float32(len(models)), np.float32(t), np.float32(1 - t), out)
    return torch.from_numpy(out)


@kernel
def _softmax_ratio(p, q, eps):
    for j in range(p.shape[0]):
        shifted = p[j] + eps
        p[j] = shifted
        q[j] = shifted / (q[j] + eps)


def softmax_ratio(p: np.ndarray, q: np.ndarray, eps: float) -> None:
    """In place, from two softmaxes: p ← p + eps, q ← (p + eps)/(q + eps) (``arcee_fusion.importance``'s
    float32 operations before its log, one pass instead of three)."""
    _softmax_ratio(p, q, np.float32(eps))


@kernel
def _scaled_magnitudes(model, base, scales, length, out):
    for row in range(scales.shape[0]):
        span = slice(row * length, (row + 1) * length)
        model_row, base_row, out_row, scale = model[span], base[span], out[span], scales[row]
        for j in range(length):
            out_row[j] = abs(widen(model_row[j]) - widen(base_row[j])) * scale


def scaled_magnitudes(model: np.ndarray, base: np.ndarray, scales: np.ndarray, out: np.ndarray) -> None:
    """|θ − θ_base|·scales[row] for rows of ``out.size // scales.size`` entries, into ``out``
    (``arcee_fusion.importance``'s last step, written where the score is kept). One pass."""
    _scaled_magnitudes(model, base, scales, out.shape[0] // max(scales.shape[0], 1), out)


@kernel
def _masked_update(model, base, keep, out):
    for j in range(out.shape[0]):
        reference = widen(base[j])
        out[j] = (widen(model[j]) - reference) * (ONE if keep[j] else ZERO) + reference


def masked_update(model: np.ndarray, base: np.ndarray, keep: np.ndarray) -> torch.Tensor:
    """θ_base + (θ − θ_base)·keep (``arcee_fusion``'s merge: the mask product, then the base added).
    One pass."""
    out = np.empty(model.shape, dtype=np.float32)
    _masked_update(model, base, keep, out)
    return torch.from_numpy(out)
