"""The C library and kernel calls behind the command line's memory reuse and output writing (early
writeback, direct I/O)."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import textwrap

import pytest

from mergebench.io import writer
from mergebench.io.writer import WRITEBACK_STEP, OutputFile
from mergebench.libc import start_writeback
from tests.conftest import takes_direct_io

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc / Linux calls")

# Allocates and frees 64 touched 1 MB blocks twice, then prints the page faults of the second round.
CHURN = textwrap.dedent(
    """
    import resource, sys, torch
    if sys.argv[1] == "retain":
        from mergebench.libc import retain_freed_memory
        assert retain_freed_memory()
    def churn():
        blocks = [torch.ones(1 << 18) for _ in range(64)]
        del blocks
    churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


@linux_only
def test_retained_memory_is_reused_without_faulting_it_in_again():
    def second_round_faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    pages = 64 * (1 << 20) // os.sysconf("SC_PAGE_SIZE")
    # glibc's defaults give the freed blocks back, so every page faults in again: what the call fixes.
    assert second_round_faults("default") > pages // 2
    assert second_round_faults("retain") < pages // 4


@linux_only
def test_start_writeback_reaches_the_kernel_and_output_files_keep_every_byte(tmp_path):
    path = tmp_path / "shard.bin"
    data = os.urandom(1 << 20)
    with OutputFile(path) as handle:
        for _ in range(WRITEBACK_STEP // len(data) * 2 + 3):  # crosses the writeback step twice
            handle.write(data)
    assert path.read_bytes() == data * (WRITEBACK_STEP // len(data) * 2 + 3)

    with open(path, "rb+") as handle:
        assert start_writeback(handle.fileno(), 0, 1 << 20)
    read_end, write_end = os.pipe()
    try:
        assert not start_writeback(read_end, 0, 1)  # ESPIPE: the kernel was asked, and refused
    finally:
        os.close(read_end)
        os.close(write_end)


O_DIRECT = getattr(os, "O_DIRECT", 0)


def opened_direct(path) -> bool:
    """Whether the kernel holds ``path`` open with O_DIRECT (read from /proc, not from our object)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                return bool(fcntl.fcntl(int(fd), fcntl.F_GETFL) & O_DIRECT)
        except OSError:
            continue
    raise AssertionError(f"{path} is not open")


BLOCK = 1 << 16  # small blocks, so a few hundred KB cross several of them


@linux_only
@pytest.mark.parametrize(
    "pieces",
    [[], [100], [BLOCK], [BLOCK - 1, 1, BLOCK], [3 * BLOCK + 12345], [7, BLOCK + 13, 2 * BLOCK, 4000, 5]],
    ids=["empty", "short", "one block", "split block", "blocks and tail", "ragged"],
)
def test_direct_output_files_keep_every_byte(tmp_path, monkeypatch, pieces):
    monkeypatch.setattr(writer, "DIRECT_BLOCK", BLOCK)
    path = tmp_path / "shard.bin"
    data = [os.urandom(n) for n in pieces]
    with OutputFile(path, direct=True) as handle:
        for piece in data:
            handle.write(piece)
        assert opened_direct(path) == takes_direct_io(tmp_path)
        assert handle.size == sum(pieces)
    assert path.read_bytes() == b"".join(data)


@linux_only
def test_direct_io_refused_at_open_writes_through_the_page_cache(tmp_path, monkeypatch):
    """A file system without O_DIRECT answers EINVAL at open: the file is written buffered."""
    real_open = os.open

    def no_direct(path, flags, *args, **kwargs):
        if flags & O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_direct)
    data = os.urandom(3 * (1 << 20) + 5)
    path = tmp_path / "shard.bin"
    with OutputFile(path, direct=True) as handle:
        handle.write(data)
        assert not handle.direct and not opened_direct(path)
    assert path.read_bytes() == data


@linux_only
def test_direct_write_refused_midway_goes_on_through_the_page_cache(tmp_path, monkeypatch):
    """A device wanting another alignment refuses a direct write (EINVAL): that block and every later
    byte are written buffered, and nothing is lost or repeated."""
    if not takes_direct_io(tmp_path):
        pytest.skip("this file system takes no O_DIRECT")
    monkeypatch.setattr(writer, "DIRECT_BLOCK", BLOCK)
    real_write, direct_writes = os.write, []

    def refuse_second_direct_write(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            direct_writes.append(len(data))
            if len(direct_writes) == 2:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", refuse_second_direct_write)
    data = os.urandom(5 * BLOCK + 77)
    path = tmp_path / "shard.bin"
    with OutputFile(path, direct=True) as handle:
        handle.write(data[:100])
        handle.write(data[100:])
        assert not handle.direct and not opened_direct(path)
    assert direct_writes == [BLOCK, BLOCK]
    assert path.read_bytes() == data


@linux_only
def test_shards_bypass_the_page_cache_by_default_with_few_cores():
    from mergebench.publish import direct_io

    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})  # this process may now use one core
        assert direct_io(None)
    finally:
        os.sched_setaffinity(0, cores)
    assert direct_io(True) and not direct_io(False)  # an explicit choice wins
