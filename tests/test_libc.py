"""The C library calls behind the command line's memory reuse and early writeback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from mergebench.io.writer import WRITEBACK_STEP, OutputFile
from mergebench.libc import start_writeback

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
