"""Two C library calls Python does not expose, each a no-op where the library lacks it.

- ``retain_freed_memory``: keep freed memory in the process for reuse. A merge allocates and frees
  megabyte-sized float32 scratch for every chunk of every tensor; glibc's defaults hand such blocks
  back to the kernel (``munmap``, or trimming the heap's top) as soon as they are freed, so the next
  chunk faults the same pages in again, zero-filled. On a 2-core VM a 0.85B merge took ~0.9 million
  page faults and more system time than arithmetic. Raised thresholds let the blocks be reused; peak
  RSS is unchanged, since they are the blocks a chunk needs anyway. Only the command line calls it:
  it changes the whole process, which a library must not do behind its caller's back.
- ``start_writeback``: hand a just-written file range to the disk without waiting (Linux's
  sync_file_range). Below the kernel's dirty thresholds nothing reaches the disk until the final
  fsync, which then waits for a whole shard (0.4 s for 1.7 GB on a 2-core VM) after the arithmetic
  is done; handed over as it is written, the disk works while the merge computes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable

# mallopt(3) parameters (glibc's malloc.h) and the values set.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap (and so are reused); larger ones, such as whole-tensor
# buffers (which the executor's BufferPool recycles itself), still get a mapping of their own.
MMAP_THRESHOLD = 32 << 20
# Free memory at the heap's top kept for reuse before the heap is trimmed.
TRIM_THRESHOLD = 256 << 20

_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of the range's dirty pages, don't wait


@functools.cache
def _function(name: str, argtypes: tuple, restype: type) -> Callable[..., int] | None:
    """``name`` from the C library on Linux, typed; None elsewhere or where the library lacks it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = restype
    return function


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring); whether both were set."""
    mallopt = _function("mallopt", (ctypes.c_int, ctypes.c_int), ctypes.c_int)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Start writing ``length`` bytes of ``fd`` from ``offset`` to disk, without waiting; whether the
    kernel took the request. Callers ignore a refusal: the fsync that follows reports any error."""
    sync_file_range = _function(
        "sync_file_range", (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint), ctypes.c_int
    )
    return sync_file_range is not None and sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE) == 0
