"""``merge --resume``: a run killed with SIGKILL between shards or in the middle of one is finished by
the next run, keeping exactly the shards the killed run completed, and the result is byte-identical
to an uninterrupted run. Anything that does not verify starts fresh with a warning.

The runs to kill are real processes running the CLI, stopped at an exact point by the writer's test
hook (``MERGEBENCH_TEST_PAUSE``); to keep dozens of them cheap they are forked from one process that
imported mergebench (and torch) once, instead of each paying ~1.5 s of start-up.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_reliability_io import (
    Models,
    assert_one_error,
    build_models,
    digest,
    merge,
    merge_config,
    paused_run,
)

SHARD = "1KB"  # bfloat16 tiny Llama: 21 tensors in 14 shards
REPO = Path(__file__).resolve().parents[1]

# Reads one JSON job per line, forks a child that runs the CLI with the pause hook set (stdout and
# stderr to the job's log, stdin a pipe nobody writes, so the pause lasts until the kill) and answers
# with the child's pid. Children are reaped by the kernel (SIGCHLD ignored).
FORK_SERVER = r"""
import json, os, signal, sys
from mergebench.cli import main
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
while line := sys.stdin.readline():
    job = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        hold, _ = os.pipe()
        os.dup2(hold, 0)
        sys.stdin = os.fdopen(0, closefd=False)
        os.environ["MERGEBENCH_TEST_PAUSE"] = str(job["point"])
        code = 1
        try:
            main(job["argv"], prog_name="mergebench")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os._exit(code)
    print(pid, flush=True)
"""


class KillableRuns:
    """Starts ``mergebench merge`` processes that pause at a given point, to be SIGKILLed there."""

    def __init__(self) -> None:
        self.server = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def start_paused(self, config: Path, out: Path, point: float) -> int:
        log = out.parent / f"{out.name}.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = ["merge", str(config), str(out), "--no-progress", "--max-shard-size", SHARD]
        assert self.server.stdin and self.server.stdout
        self.server.stdin.write(json.dumps({"argv": argv, "point": point, "log": str(log)}) + "\n")
        self.server.stdin.flush()
        pid = int(self.server.stdout.readline())
        deadline = time.monotonic() + 120
        while "paused at" not in (text := log.read_text() if log.exists() else ""):
            if time.monotonic() > deadline or not _alive(pid):
                raise AssertionError(f"run for point {point} did not pause:\n{text}")
            time.sleep(0.01)
        log.unlink()
        return pid

    def close(self) -> None:
        assert self.server.stdin
        self.server.stdin.close()
        self.server.wait(timeout=60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    while _alive(pid):  # reaped by the fork server's kernel-side SIGCHLD handling
        time.sleep(0.005)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    return build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory) -> tuple[Path, dict[str, str], list[int]]:
    """(config, digest of an uninterrupted run, the index of the last tensor of each shard)."""
    root = tmp_path_factory.mktemp("reference")
    config = merge_config(root / "merge.yaml", models.base, models.ft1, models.ft2)
    result = merge(config, root / "out", shard=SHARD)
    assert result.exit_code == 0, result.output
    weight_map = json.loads((root / "out" / "model.safetensors.index.json").read_text())["weight_map"]
    files = list(weight_map.values())  # tensors in write order
    ends = [i for i, name in enumerate(files) if i + 1 == len(files) or files[i + 1] != name]
    assert len(ends) >= 10
    return config, digest(root / "out"), ends


@pytest.fixture(scope="module")
def runs():
    killable = KillableRuns()
    yield killable
    killable.close()


def kept_shards(point: float, shard_ends: list[int]) -> int:
    """Shards complete when the writer stopped at ``point`` (tensors written; x.5 = inside tensor x)."""
    return sum(1 for end in shard_ends if end < int(point))


def resume(config: Path, out: Path) -> tuple[str, list[str]]:
    result = merge(config, out, "--resume", shard=SHARD)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "error:" not in result.output
    return result.output, [line for line in result.output.splitlines() if line.startswith("warning: ")]


def test_sigkill_at_many_points_then_resume_is_byte_identical(reference, runs, tmp_path):
    config, expected, ends = reference
    tensors = ends[-1] + 1
    between = [end + 1 for end in ends]  # right after a shard was closed and recorded
    inside = [i for i in range(tensors + 1) if i not in between]  # some tensors of a shard written
    halves = [i + 0.5 for i in range(tensors)]  # half of one tensor's bytes written
    rng = random.Random(20240611)
    points = sorted({0, tensors, *rng.sample(between, 10), *rng.sample(inside, 6), *rng.sample(halves, 10)})
    assert len(points) >= 20
    problems = []
    for point in points:
        out = tmp_path / f"p{point}" / "out"
        sigkill(runs.start_paused(config, out, point))
        output, warnings = resume(config, out)
        kept = re.search(r"resuming from .*: (\d+) of (\d+) shards kept", output)
        if warnings or not kept or int(kept.group(1)) != kept_shards(point, ends):
            problems.append(f"point {point}: expected {kept_shards(point, ends)} kept\n{output}")
        elif digest(out) != expected:
            problems.append(f"point {point}: output differs from the uninterrupted run")
        elif sorted(p.name for p in out.parent.iterdir()) != ["out"]:
            problems.append(f"point {point}: left {sorted(p.name for p in out.parent.iterdir())}")
    assert not problems, f"{len(problems)} of {len(points)} kill points failed:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "damage,reason",
    [
        ("flip a byte", "does not match its recorded checksum"),
        ("truncate", "does not have its recorded size"),
        ("delete", "is missing"),
        ("corrupt the record", "its record is damaged"),
    ],
)
def test_a_kept_shard_that_does_not_verify_means_starting_fresh(reference, runs, tmp_path, damage, reason):
    config, expected, _ = reference
    out = tmp_path / "out"
    sigkill(runs.start_paused(config, out, 9))
    (partial,) = tmp_path.glob(".out.partial-*")
    shard = sorted(partial.glob("model-*.safetensors"))[1]
    if damage == "flip a byte":
        data = bytearray(shard.read_bytes())
        data[-1] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-2])
    elif damage == "delete":
        shard.unlink()
    else:
        (partial / ".mergebench-partial.json").write_text("{not json")
    output, warnings = resume(config, out)
    assert len(warnings) == 1 and reason in warnings[0], output
    assert "resuming from" not in output
    assert digest(out) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_changed_config_is_not_resumed(models, reference, runs, tmp_path):
    config, _, _ = reference
    out = tmp_path / "out"
    sigkill(runs.start_paused(config, out, 9))
    changed = merge_config(
        tmp_path / "changed.yaml", models.base, models.ft1, models.ft2, parameters={"lambda": 0.9}
    )
    fresh = merge(changed, tmp_path / "fresh", shard=SHARD)
    assert fresh.exit_code == 0, fresh.output
    output, warnings = resume(changed, out)
    assert len(warnings) == 1 and "another config, plan or inputs" in warnings[0], output
    assert digest(out) == digest(tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["changed.yaml", "fresh", "out"]


def test_resume_with_nothing_to_resume_runs_normally(reference, tmp_path):
    config, expected, _ = reference
    output, warnings = resume(config, tmp_path / "out")
    assert len(warnings) == 1 and "no interrupted run" in warnings[0], output
    assert digest(tmp_path / "out") == expected


def test_resume_never_takes_over_a_live_run(reference, tmp_path):
    config, expected, _ = reference
    out = tmp_path / "out"
    running = paused_run(config, out, 9, SHARD)
    try:
        result = merge(config, out, "--resume", shard=SHARD)
        assert_one_error(result, 5, "another mergebench run is writing")
        _, stderr = running.communicate("\n", timeout=120)
    finally:
        running.kill()
    assert running.returncode == 0, stderr
    assert digest(out) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_crc32_of_a_shard_is_combined_from_its_tensors_crcs():
    """Workers checksum their own tensors; the writer only combines: the result must be zlib's CRC-32
    of the concatenated bytes (what ``--resume`` recomputes from the file), for any lengths."""
    import zlib

    from mergebench.io.writer import Crc32

    rng = random.Random(7)
    for _ in range(100):
        parts = [rng.randbytes(rng.choice([0, 1, 3, rng.randint(0, 5000)])) for _ in range(rng.randint(1, 6))]
        running = Crc32()
        for index, part in enumerate(parts):
            if index % 2:
                running.update(part)  # the header and split tensors are hashed by the writer itself
            else:
                running.append(zlib.crc32(part), len(part))
        assert running.value == zlib.crc32(b"".join(parts))
