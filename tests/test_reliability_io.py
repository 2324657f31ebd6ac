"""Faults on the I/O side end cleanly: exactly one ``error:`` line, the documented exit code, no
traceback, nothing left in or beside OUT, inputs byte-identical.

Real tiny checkpoints and real files throughout; the only fault injected is the OS's answer to one
call (ENOSPC, as a full disk gives it), at every output-side call of a real merge in turn, plus real
full tmpfs mounts when running as root.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import Result

from mergebench.io import writer
from tests.conftest import assert_clean_failure, run_cli, snapshot, takes_direct_io, write_config

SHARD = "3KB"  # ~12 output shards for the tiny model below
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@dataclass
class Models:
    root: Path
    base: Path
    ft1: Path
    ft2: Path

    def dirs(self) -> list[Path]:
        return [self.base, self.ft1, self.ft2]


def build_models(root: Path) -> Models:
    """A 2-layer Llama base and two finetunes (8KB input shards), with a tokenizer and generation config."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config)
    paths = []
    for index in range(3):
        model = copy.deepcopy(base)
        if index:
            generator = torch.Generator().manual_seed(index)
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(torch.randn(param.shape, generator=generator) * 0.02)
        path = root / ("base" if index == 0 else f"ft{index}")
        model.save_pretrained(path, max_shard_size="8KB")
        paths.append(path)
    (paths[0] / "tokenizer_config.json").write_text('{"model_max_length": 32}\n')
    (paths[0] / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}\n')
    return Models(root, *paths)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    return build_models(tmp_path_factory.mktemp("models"))


def merge_config(path: Path, base: Path, ft1: Path, ft2: Path, **changes) -> Path:
    """A TIES merge to bfloat16 (every tensor computed, converted and written)."""
    data = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [
            {"model": str(ft1), "parameters": {"weight": 1.0, "density": 0.5}},
            {"model": str(ft2), "parameters": {"weight": 0.5, "density": 0.7}},
        ],
        "dtype": "bfloat16",
        **changes,
    }
    return write_config(path, data)


def merge(config: Path, out: Path, *extra: str, shard: str = SHARD) -> Result:
    return run_cli("merge", config, out, "--no-progress", "--max-shard-size", shard, *extra)


def inputs_tree(models: Models, *more: Path) -> dict[str, dict[str, str]]:
    return {str(d): snapshot(d) for d in (*models.dirs(), *more)}


def assert_one_error(result: Result, code: int, *fragments: str) -> str:
    """Exactly one ``error:`` line (with the fragments), the exit code, no traceback, no warning."""
    line = assert_clean_failure(result, *fragments)
    errors = [text for text in result.output.splitlines() if text.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert result.exit_code == code, result.output
    assert "warning:" not in result.output, result.output
    return line


# ---- a full disk at every output-side OS call ------------------------------------------------------


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class DiskFull:
    """Wraps one ``os`` function so that its ``fail_at``-th call on the output side (a path or
    descriptor under ``root``, opened for writing where that applies; a mkdir that would create
    something) fails with ENOSPC; with ``fail_at=None`` it only counts. Everything else goes straight
    to the real call."""

    CALLS = ("write", "fsync", "close", "open", "mkdir", "rename", "replace")

    def __init__(self, monkeypatch: pytest.MonkeyPatch, call: str, root: Path, fail_at: int | None) -> None:
        self.root = str(root)
        self.count = 0
        self.direct_writes = 0  # writes through a descriptor opened with O_DIRECT
        self.fail_at = fail_at
        self.real = getattr(os, call)
        monkeypatch.setattr(os, call, getattr(self, f"_{call}"))

    def _under(self, path: object) -> bool:
        return os.path.abspath(os.fsdecode(os.fspath(path))).startswith(self.root)  # type: ignore[arg-type]

    def _hit(self, relevant: bool) -> bool:
        if not relevant:
            return False
        self.count += 1
        return self.count == self.fail_at

    def _write(self, fd: int, data) -> int:
        self.direct_writes += bool(fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0))
        if self._hit(_fd_path(fd).startswith(self.root)):
            raise ENOSPC
        return self.real(fd, data)

    def _fsync(self, fd: int) -> None:
        if self._hit(_fd_path(fd).startswith(self.root)):
            raise ENOSPC
        return self.real(fd)

    def _close(self, fd: int) -> None:
        writable = False
        path = _fd_path(fd)
        if path.startswith(self.root) and ".lock" not in path:  # closing the lock loses no data
            with contextlib.suppress(OSError):
                writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
        if self._hit(writable):
            self.real(fd)  # close(2) frees the descriptor even when it reports an error
            raise ENOSPC
        return self.real(fd)

    def _open(self, path, flags: int, mode: int = 0o777, *, dir_fd=None) -> int:
        writing = flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR)
        if self._hit(dir_fd is None and bool(writing) and self._under(path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
        return self.real(path, flags, mode, dir_fd=dir_fd)

    def _mkdir(self, path, mode: int = 0o777, *, dir_fd=None) -> None:
        if self._hit(dir_fd is None and self._under(path) and not os.path.lexists(path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
        return self.real(path, mode, dir_fd=dir_fd)

    def _rename(self, src, dst, **kwargs) -> None:
        if self._hit(self._under(src) or self._under(dst)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(src))
        return self.real(src, dst, **kwargs)

    _replace = _rename


@pytest.fixture
def fast_dir(tmp_path) -> Iterator[Path]:
    """The output area: on /dev/shm when there is one (hundreds of merges, each syncing ~40 times)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        path = Path(tempfile.mkdtemp(prefix="mergebench-test-", dir=shm))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path / "outs"


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize(
    "scenario",
    [
        "new output in a new parent",
        "--overwrite of an existing output",
        "direct I/O in 4 KiB blocks",  # the tiny shards otherwise fit in direct I/O's last partial block
        "--no-direct-io",
    ],
)
@pytest.mark.parametrize("call", DiskFull.CALLS)
def test_disk_full_at_every_output_call(models, tmp_path, fast_dir, monkeypatch, call, scenario):
    config = merge_config(tmp_path / "merge.yaml", models.base, models.ft1, models.ft2)
    outs = fast_dir / "outs"
    outs.mkdir(parents=True)
    (outs / "neighbour.txt").write_text("not ours")
    reference = fast_dir / "reference"
    assert merge(config, reference, "--no-direct-io").exit_code == 0
    expected = digest(reference)
    extra: tuple[str, ...] = ()
    shard = SHARD
    if scenario.startswith("direct"):
        monkeypatch.setattr(writer, "DIRECT_BLOCK", 4096)
        shard = "20KB"  # several blocks per shard
        assert merge(config, reference, "--overwrite", shard=shard).exit_code == 0
        expected = digest(reference)
        extra = ("--direct-io",)  # the default only with few cores
    elif scenario == "--no-direct-io":
        extra = ("--no-direct-io",)
    if scenario.startswith("--overwrite"):
        out = outs / "out"
        assert merge(config, out).exit_code == 0
        (out / "keep.txt").write_text("the old output")
        extra = ("--overwrite",)
    else:
        out = outs / "new" / "out"
    before_inputs, before = inputs_tree(models), snapshot(outs)
    with monkeypatch.context() as patch:  # the counting run: every call succeeds
        counter = DiskFull(patch, call, outs, fail_at=None)
        result = merge(config, out, *extra, shard=shard)
        assert result.exit_code == 0, result.output
    assert digest(out) == expected
    if call == "write" and scenario.startswith("direct") and takes_direct_io(outs):
        assert counter.direct_writes > 0
    if call == "write" and scenario == "--no-direct-io":
        assert counter.direct_writes == 0
    shutil.rmtree(out if scenario.startswith("--overwrite") else out.parent)
    if scenario.startswith("--overwrite"):
        shutil.copytree(reference, out)
        (out / "keep.txt").write_text("the old output")
    assert snapshot(outs) == before
    assert counter.count > 0
    problems = []
    for nth in range(1, counter.count + 1):
        with monkeypatch.context() as patch:
            fault = DiskFull(patch, call, outs, fail_at=nth)
            result = merge(config, out, *extra, shard=shard)
        try:
            assert fault.count >= nth, "the fault was never reached"
            line = assert_one_error(result, 5, "No space left on device")
            assert str(outs) in line, line  # names the file (or the output) it failed on
            assert snapshot(outs) == before, "something was left in or beside OUT"
        except AssertionError as exc:
            problems.append(f"{call} #{nth}: {str(exc).splitlines()[0]}\n{result.output}")
            shutil.rmtree(outs)  # reset for the next case
            outs.mkdir()
            (outs / "neighbour.txt").write_text("not ours")
            if scenario.startswith("--overwrite"):
                shutil.copytree(reference, out)
                (out / "keep.txt").write_text("the old output")
    assert not problems, f"{len(problems)} of {counter.count} cases failed:\n" + "\n".join(problems[:5])
    assert inputs_tree(models) == before_inputs


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
@pytest.mark.parametrize("limit", ["size", "nr_inodes"])
@pytest.mark.parametrize("shard", [SHARD, "20KB"], ids=["small shards", "direct I/O in 4 KiB blocks"])
def test_real_full_tmpfs(models, tmp_path, monkeypatch, limit, shard):
    """OUT on a tmpfs too small for it: every size (4 KiB steps) or inode count below what the model
    needs fails cleanly and leaves the file system empty; the first that fits gives the normal output.
    With 4 KiB direct I/O blocks (where tmpfs takes O_DIRECT) the disk fills inside a direct write."""
    if shard != SHARD:
        monkeypatch.setattr(writer, "DIRECT_BLOCK", 4096)
    config = merge_config(tmp_path / "merge.yaml", models.base, models.ft1, models.ft2)
    extra = ("--direct-io",) if shard != SHARD else ()
    assert merge(config, tmp_path / "reference", shard=shard).exit_code == 0
    expected = digest(tmp_path / "reference")
    before_inputs = inputs_tree(models)
    mount = tmp_path / "mnt"
    failures = 0
    for step in range(1, 200):
        _mount_tmpfs(mount, f"size={4 * step}k" if limit == "size" else f"nr_inodes={step},size=64m")
        try:
            result = merge(config, mount / "out", *extra, shard=shard)
            if result.exit_code == 0:
                assert digest(mount / "out") == expected
                break
            failures += 1
            line = assert_one_error(result, 5, "No space left on device")
            assert str(mount) in line
            assert snapshot(mount) == {}, f"{limit} step {step}: left {sorted(snapshot(mount))}"
        finally:
            _umount(mount)
    else:
        raise AssertionError("the merge never fitted")
    assert failures >= 3  # failed at several different points before it fitted
    assert inputs_tree(models) == before_inputs


# ---- bad inputs and targets: a table of cases ------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Models, Path], tuple[Path, Path, tuple[str, ...]]]  # → (config, OUT, extra args)
    exit_code: int
    fragments: tuple[str, ...]


def _base_copy(models: Models, tmp: Path) -> Path:
    return Path(shutil.copytree(models.base, tmp / "in" / "base", symlinks=True))


def _linked_side_file(name: str) -> Callable[[Models, Path], tuple[Path, Path, tuple[str, ...]]]:
    def make(models: Models, tmp: Path):
        base = _base_copy(models, tmp)
        secret = tmp / "in" / "secret.json"
        secret.write_text((base / name).read_text() if (base / name).exists() else "{}")
        (base / name).unlink(missing_ok=True)
        (base / name).symlink_to(secret)
        return merge_config(tmp / "merge.yaml", base, models.ft1, models.ft2), tmp / "outs" / "out", ()

    return make


def _read_shard(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _write_shard(path: Path, header: dict, body: bytes) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def _crafted(edit: Callable[[dict, bytes], tuple[dict, bytes]]):
    """ft1 with its first shard's header or data section edited (offsets checked, nothing else)."""

    def make(models: Models, tmp: Path):
        ft1 = Path(shutil.copytree(models.ft1, tmp / "in" / "ft1"))
        shard = sorted(ft1.glob("model-*.safetensors"))[0]
        header, body = _read_shard(shard)
        _write_shard(shard, *edit(header, body))
        return merge_config(tmp / "merge.yaml", models.base, ft1, models.ft2), tmp / "outs" / "out", ()

    return make


def _by_offset(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def _overlap(header: dict, body: bytes) -> tuple[dict, bytes]:
    first, second = _by_offset(header)[:2]
    start, end = header[second]["data_offsets"]
    shift = header[first]["data_offsets"][1] - 8  # second now starts 8 bytes before first ends
    header[second]["data_offsets"] = [shift, shift + end - start]
    return header, body


def _gap(header: dict, body: bytes) -> tuple[dict, bytes]:
    last = _by_offset(header)[-1]
    start, end = header[last]["data_offsets"]
    header[last]["data_offsets"] = [start + 16, end + 16]
    return header, body[:start] + bytes(16) + body[start:]


def _not_at_zero(header: dict, body: bytes) -> tuple[dict, bytes]:
    for name in header:
        if name != "__metadata__":
            start, end = header[name]["data_offsets"]
            header[name]["data_offsets"] = [start + 8, end + 8]
    return header, bytes(8) + body


def _trailing(header: dict, body: bytes) -> tuple[dict, bytes]:
    return header, body + bytes(24)


def _out_is(kind: str):
    def make(models: Models, tmp: Path):
        out = tmp / "outs" / "out"
        if kind == "file":
            out.write_text("a file")
        elif kind == "link to a file":
            (tmp / "outs" / "target.txt").write_text("a file")
            out.symlink_to(tmp / "outs" / "target.txt")
        elif kind == "locked":
            pass  # the lock is held by the test (see test_bad_input_cases)
        return merge_config(tmp / "merge.yaml", models.base, models.ft1, models.ft2), out, ()

    return make


CASES = [
    Case("tokenizer_config.json links outside", _linked_side_file("tokenizer_config.json"), 3,
         ("tokenizer_config.json", "outside the model directory")),
    Case("tokenizer.json links outside", _linked_side_file("tokenizer.json"), 3, ("tokenizer.json", "outside")),
    Case("generation_config.json links outside", _linked_side_file("generation_config.json"), 3,
         ("generation_config.json", "outside")),
    Case("config.json links outside", _linked_side_file("config.json"), 3, ("config.json", "outside")),
    Case("tensors overlap in the data section", _crafted(_overlap), 3, ("model-00001-of", "overlaps tensor")),
    Case("gap in the data section", _crafted(_gap), 3, ("model-00001-of", "unused bytes after tensor")),
    Case("data does not start at 0", _crafted(_not_at_zero), 3, ("model-00001-of", "at the start of the data")),
    Case("bytes after the last tensor", _crafted(_trailing), 3, ("model-00001-of", "24 bytes after the end of tensor")),
    Case("OUT is a file", _out_is("file"), 5, ("not a directory",)),
    Case("OUT links to a file", _out_is("link to a file"), 5, ("not a directory",)),
    Case("another run holds the lock", _out_is("locked"), 5, ("another mergebench run is writing",)),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_cases(models, tmp_path, case):
    (tmp_path / "outs").mkdir()
    config, out, extra = case.make(models, tmp_path)
    holder = None
    if case.name == "another run holds the lock":
        holder = os.open(out.with_name(f".{out.name}.lock"), os.O_RDWR | os.O_CREAT)
        fcntl.flock(holder, fcntl.LOCK_EX)
    inputs = tmp_path / "in"
    before_inputs, before = inputs_tree(models, inputs), snapshot(tmp_path / "outs")
    try:
        line = assert_one_error(merge(config, out, *extra), case.exit_code, *case.fragments)
    finally:
        if holder is not None:
            os.close(holder)
    assert snapshot(tmp_path / "outs") == before
    assert inputs_tree(models, inputs) == before_inputs
    if case.exit_code == 3 and "links" not in case.name:
        assert "tensor '" in line  # the tensor is named as well as the file


# ---- hub cache: snapshot files are links into ../../blobs ------------------------------------------


def _hub_cache(models: Models, root: Path, secret_link: bool) -> Path:
    """models--org--name/{blobs,snapshots/<rev>} with every file a relative link to its blob."""
    repo = root / "hub" / "models--acme--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for file in models.base.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    if secret_link:
        (root / "secret.json").write_text('{"api_key": "hunter2"}\n')
        (snapshot / "tokenizer_config.json").unlink()
        (snapshot / "tokenizer_config.json").symlink_to(os.path.relpath(root / "secret.json", snapshot))
    return snapshot


def test_hub_cache_links_into_blobs_are_copied(models, tmp_path):
    snapshot = _hub_cache(models, tmp_path, secret_link=False)
    config = merge_config(tmp_path / "merge.yaml", snapshot, models.ft1, models.ft2)
    reference = merge_config(tmp_path / "ref.yaml", models.base, models.ft1, models.ft2)
    assert merge(reference, tmp_path / "reference").exit_code == 0
    result = merge(config, tmp_path / "out")
    assert result.exit_code == 0, result.output
    for name in ("tokenizer_config.json", "tokenizer.json", "generation_config.json"):
        assert not (tmp_path / "out" / name).is_symlink()
        assert (tmp_path / "out" / name).read_bytes() == (models.base / name).read_bytes()
    shards = [p.name for p in (tmp_path / "reference").glob("*.safetensors")]
    assert all(
        (tmp_path / "out" / n).read_bytes() == (tmp_path / "reference" / n).read_bytes() for n in shards
    )


def test_hub_cache_link_leaving_the_repo_cache_is_refused(models, tmp_path):
    hub_snapshot = _hub_cache(models, tmp_path, secret_link=True)
    config = merge_config(tmp_path / "merge.yaml", hub_snapshot, models.ft1, models.ft2)
    (tmp_path / "outs").mkdir()
    before = inputs_tree(models, tmp_path / "hub")
    result = merge(config, tmp_path / "outs" / "out")
    assert_one_error(result, 3, "tokenizer_config.json", "outside the model directory")
    assert snapshot(tmp_path / "outs") == {}
    assert inputs_tree(models, tmp_path / "hub") == before


# ---- publishing: symlinked OUT, umask, concurrent runs, stale partial directories -----------------


def test_out_given_as_a_link_publishes_into_its_target(models, tmp_path):
    config = merge_config(tmp_path / "merge.yaml", models.base, models.ft1, models.ft2)
    assert merge(config, tmp_path / "reference").exit_code == 0
    real = tmp_path / "disk" / "merged"
    real.mkdir(parents=True)
    link = tmp_path / "out"
    link.symlink_to(real)
    result = merge(config, link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert digest(real) == digest(tmp_path / "reference")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "merge.yaml", "out", "reference"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["merged"]
    # non-empty target: refused without --overwrite, replaced with it (the link stays)
    assert_one_error(merge(config, link), 5, "not empty", "--overwrite")
    result = merge(config, link, "--overwrite")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and digest(real) == digest(tmp_path / "reference")
    assert sorted(p.name for p in real.parent.iterdir()) == ["merged"]
    # a link to a directory that does not exist yet: the model is created there
    dangling = tmp_path / "later"
    dangling.symlink_to(tmp_path / "disk" / "later")
    result = merge(config, dangling)
    assert result.exit_code == 0, result.output
    assert digest(tmp_path / "disk" / "later") == digest(tmp_path / "reference")


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_output_modes_follow_the_umask(models, tmp_path, umask):
    config = merge_config(tmp_path / "merge.yaml", models.base, models.ft1, models.ft2)
    previous = os.umask(umask)
    try:
        result = merge(config, tmp_path / "out")
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask
    for file in (tmp_path / "out").iterdir():
        assert file.stat().st_mode & 0o777 == 0o666 & ~umask, file.name


def paused_run(config: Path, out: Path, point: float, shard: str = SHARD) -> subprocess.Popen:
    """``python -m mergebench merge`` in its own process, left paused by the writer's test hook at
    ``point`` (tensors written; x.5: halfway through one) until a line arrives on its stdin."""
    command = [sys.executable, "-m", "mergebench", "merge", str(config), str(out), "--no-progress"]
    process = subprocess.Popen(
        [*command, "--max-shard-size", shard],
        env={**os.environ, "MERGEBENCH_TEST_PAUSE": str(point)},
        cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stderr.readline()  # type: ignore[union-attr]
    if "paused at" not in line:
        process.kill()
        raise AssertionError(f"no pause: {line}{process.communicate()[1]}")
    return process


def test_two_runs_into_one_output(models, tmp_path):
    """While one run writes OUT, a second is refused at once; the first then publishes normally."""
    config = merge_config(tmp_path / "merge.yaml", models.base, models.ft1, models.ft2)
    assert merge(config, tmp_path / "reference").exit_code == 0
    outs = tmp_path / "outs"
    outs.mkdir()
    first = paused_run(config, outs / "out", 5)
    try:
        during = snapshot(outs)
        assert ".out.lock" in during and any(name.startswith(".out.partial-") for name in during)
        line = assert_one_error(merge(config, outs / "out"), 5, "another mergebench run is writing")
        assert ".out.lock" in line
        assert_one_error(merge(config, outs / "out", "--overwrite"), 5, "another mergebench run is writing")
        assert snapshot(outs) == during  # the refused runs touched nothing of the first one's
        _, stderr = first.communicate("\n", timeout=120)  # let it go on
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    assert sorted(p.name for p in outs.iterdir()) == ["out"]  # lock file and partial gone
    assert digest(outs / "out") == digest(tmp_path / "reference")
    assert_one_error(merge(config, outs / "out"), 5, "not empty")


def test_stale_partial_directories_are_removed_with_a_warning(models, tmp_path):
    config = merge_config(tmp_path / "merge.yaml", models.base, models.ft1, models.ft2)
    assert merge(config, tmp_path / "reference").exit_code == 0
    outs = tmp_path / "outs"
    outs.mkdir()
    killed = paused_run(config, outs / "out", 7.5)
    killed.kill()
    killed.wait()
    orphan = outs / ".out.partial-norecord"  # its run died before writing its owner record
    orphan.mkdir()
    (orphan / "model-00001-of-00012.safetensors").write_bytes(b"half")
    alive = outs / ".out.partial-alive"  # a run that is still going (this very process)
    alive.mkdir()
    record = {"owner": {"pid": os.getpid(), "start": None, "host": socket.gethostname()}}
    (alive / ".mergebench-partial.json").write_text(json.dumps(record))
    result = merge(config, outs / "out")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, result.output
    assert any(f"pid {killed.pid}" in w and "interrupted" in w for w in warnings)
    assert any(str(orphan) in w and "no owner record" in w for w in warnings)
    assert sorted(p.name for p in outs.iterdir()) == [".out.partial-alive", "out"]
    assert digest(outs / "out") == digest(tmp_path / "reference")
