"""Reading a stored tensor in ranges (``read_tensor``): the bytes safetensors itself loads, however the
ranges are run, and a file that shrinks under a read is one clear error naming the file and tensor."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergebench.errors import CheckpointError
from mergebench.io.checkpoint import open_weights
from mergebench.io.safetensors_header import READ_PART
from mergebench.mapper import in_order


def on_threads(function, items):
    """Ranges run on four threads, last submitted first."""
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(function, item) for item in reversed(items)][::-1]
        return [future.result() for future in futures]


@pytest.fixture
def stored(tmp_path):
    """A checkpoint whose large tensor spans several read ranges (and ends inside one)."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "large": torch.randn(3 * READ_PART // 2 + 1234, generator=generator).to(torch.bfloat16),
        "small": torch.randn(7, 5, generator=generator),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


@pytest.mark.parametrize("mapper", [in_order, on_threads], ids=["in_order", "threads"])
def test_ranged_reads_give_the_stored_bytes(stored, mapper):
    checkpoint = open_weights("m", stored)
    assert checkpoint.tensors["large"].nbytes > 2 * READ_PART  # three ranges, the last one partial
    expected = load_file(str(stored / "model.safetensors"))
    for name in ("large", "small"):
        buffer = torch.empty(checkpoint.tensors[name].nbytes, dtype=torch.uint8)
        got = checkpoint.read(name, buffer, mapper)
        assert got.dtype == expected[name].dtype and torch.equal(got, expected[name])
        assert got.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()  # read in place


def test_a_file_shrinking_under_a_ranged_read_is_one_error_naming_it(stored):
    checkpoint = open_weights("m", stored)
    info = checkpoint.tensors["large"]
    os.truncate(info.file, info.offset + READ_PART + 100)  # inside the second range
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated while reading tensor 'large'"):
        checkpoint.read("large", None, on_threads)
