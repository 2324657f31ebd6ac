#!/usr/bin/env python
"""Thread CPU time spent in chosen functions during one merge: where a method's CPU-seconds go.

    python tools/profile_functions.py CONFIG.yaml mergebench.methods.fused:magnitude_ranks \\
        mergebench.methods.fused:magpruned mergebench.execute:_finite

Each target (``module:function`` or ``module:Class.method``) is wrapped to add the calling thread's CPU
time (``time.thread_time``) to its total, so time on helper threads counts too and a function called
inside another counts in both; a caller that imported the function by name (``from m import f``) keeps
the unwrapped one, so name it where the callers look it up. The merge runs through ``mergebench.merge``
in this process (torch and mergebench imported before the clock starts), with glibc's thresholds raised
as the command line does; the output goes to a temporary directory. Prints the wall and process CPU time
of the merge, then each target's CPU seconds and calls, largest first.
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import tempfile
import threading
import time
from pathlib import Path


def wrap(target: str, totals: collections.Counter, calls: collections.Counter, lock: threading.Lock) -> None:
    """Replace ``target`` by a wrapper that adds each call's thread CPU time to ``totals[target]``."""
    module_name, path = target.split(":")
    owner = importlib.import_module(module_name)
    *parents, attribute = path.split(".")
    for name in parents:
        owner = getattr(owner, name)
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        start = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                totals[target] += time.thread_time() - start
                calls[target] += 1

    setattr(owner, attribute, timed)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", type=Path)
    parser.add_argument("targets", nargs="+", help="module:function or module:Class.method")
    args = parser.parse_args()
    totals: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    lock = threading.Lock()
    for target in args.targets:
        wrap(target, totals, calls, lock)
    import mergebench
    from mergebench.libc import retain_freed_memory

    retain_freed_memory()
    with tempfile.TemporaryDirectory() as out:
        wall, cpu = time.perf_counter(), time.process_time()
        mergebench.merge(args.config, Path(out) / "merged", progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"merge: {wall:.2f} s wall, {cpu:.2f} s CPU")
    for target, seconds in totals.most_common():
        print(f"{seconds:7.2f} s CPU  {calls[target]:6d} calls  {target}")


if __name__ == "__main__":
    main()
