#!/usr/bin/env python
"""Where a merge's time goes: when each tensor was computed, on which thread, and when it was written.

    # record (runs the mergebench CLI in this process; everything after `--` is its arguments)
    python tools/profile_timeline.py record TIMELINE.json -- merge CONFIG.yaml OUT --overwrite
    # report: start-up before the first tensor, busy time, average concurrency, the longest tensors,
    # and concurrency / writer activity per half second
    python tools/profile_timeline.py report TIMELINE.json [...]

The clock starts once torch and mergebench are imported, so the report's first op time is planning and
reading, and the process' wall time (from `time`) minus the report's end is interpreter start-up and
imports. The H200 timelines behind README's profile are in bench/results/profiles/.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time
from pathlib import Path


def record(path: Path, cli_args: list[str]) -> None:
    import mergebench.execute as execute
    from mergebench.io.writer import ShardedWriter

    origin = time.perf_counter()
    events: list[tuple[str, str, float, float]] = []
    run_op, write = execute.run_op, ShardedWriter.write

    def timed_run_op(op, tensors, *args, **kwargs):
        start = time.perf_counter()
        try:
            return run_op(op, tensors, *args, **kwargs)
        finally:
            events.append(
                (
                    threading.current_thread().name,
                    op.output.name,
                    start - origin,
                    time.perf_counter() - origin,
                )
            )

    def timed_write(self, name, tensor, *args):
        start = time.perf_counter()
        try:
            return write(self, name, tensor, *args)
        finally:
            events.append(("writer", name, start - origin, time.perf_counter() - origin))

    execute.run_op = timed_run_op
    ShardedWriter.write = timed_write
    from mergebench.cli import main

    try:
        main(args=cli_args, prog_name="mergebench", standalone_mode=False)
    finally:
        path.write_text(json.dumps({"end": time.perf_counter() - origin, "events": events}))


def busy_per_bin(events: list, width: float) -> collections.Counter:
    bins: collections.Counter = collections.Counter()
    for _, _, start, stop in events:
        t = start
        while t < stop:
            index = int(t / width)
            upto = min(stop, (index + 1) * width)
            bins[index] += (upto - t) / width
            t = upto
    return bins


def report(path: Path) -> None:
    data = json.loads(path.read_text())
    ops = [e for e in data["events"] if e[0] != "writer"]
    writes = [e for e in data["events"] if e[0] == "writer"]
    if not ops:
        print(f"{path}: no tensors were computed")
        return
    first, last = min(e[2] for e in ops), max(e[3] for e in data["events"])
    busy = sum(e[3] - e[2] for e in ops)
    print(
        f"{path}: first tensor at {first:.2f} s, last write ends {last:.2f} s, CLI returns {data['end']:.2f} s"
    )
    print(
        f"  compute busy {busy:.2f} s over {last - first:.2f} s (average {busy / (last - first):.1f} at once); "
        f"writer busy {sum(e[3] - e[2] for e in writes):.2f} s"
    )
    for _, name, start, stop in sorted(ops, key=lambda e: e[2] - e[3])[:5]:
        print(f"  longest: {name} {stop - start:.2f} s from {start:.2f} s")
    width = 0.5
    computing, writing = busy_per_bin(ops, width), busy_per_bin(writes, width)
    print("  time s | tensors being computed | writer busy")
    for index in range(int(first / width), int(last / width) + 1):
        print(f"  {index * width:6.1f} | {computing[index]:5.1f} | {writing[index]:4.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("timeline", type=Path)
    rec.add_argument("cli", nargs=argparse.REMAINDER)
    rep = sub.add_parser("report")
    rep.add_argument("timelines", type=Path, nargs="+")
    args = parser.parse_args()
    if args.command == "record":
        record(args.timeline, args.cli[1:] if args.cli[:1] == ["--"] else args.cli)
    else:
        for path in args.timelines:
            report(path)


if __name__ == "__main__":
    sys.exit(main())
