"""Shared fixtures: real tiny checkpoints written with transformers, and a CLI runner."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

TINY_LLAMA = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def tiny_llama_config(**overrides):
    import transformers

    return transformers.LlamaConfig(**{**TINY_LLAMA, **overrides})


def save_model(model, path: Path, shard_size: str = "12KB") -> Path:
    """Save like a real hub checkpoint: sharded safetensors + index + config."""
    model.save_pretrained(path, max_shard_size=shard_size)
    return path


def write_config(path: Path, data: dict) -> Path:
    """Write a merge config as YAML (key order kept, as a user would write it)."""
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def finetune_of(base, seed: int, scale: float = 0.02):
    """A model that shares ``base`` and moved a little from it, as a finetune does."""
    import copy

    model = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model


@dataclass
class Family:
    base: Path
    ft1: Path
    ft2: Path
    ft3: Path


@pytest.fixture(scope="session")
def llama_family(tmp_path_factory) -> Family:
    """A sharded tiny Llama base and three finetunes of it (float32)."""
    import transformers

    root = tmp_path_factory.mktemp("llama_family")
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(tiny_llama_config())
    paths = [save_model(base, root / "base")]
    for i in range(1, 4):
        paths.append(save_model(finetune_of(base, seed=i), root / f"ft{i}"))
    return Family(*paths)


def run_cli(*args: str) -> Result:
    from mergebench.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def assert_clean_failure(result: Result, *fragments: str) -> str:
    """A user error: non-zero exit, no traceback, a one-line ``error:`` message with the fragments."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}\n{result.output}"
    text = result.output
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert errors, text
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


def takes_direct_io(directory: Path) -> bool:
    """Whether files in ``directory`` can be opened with O_DIRECT: the file system decides (tmpfs
    before Linux 6.6 and some FUSE ones refuse it); never where the OS has no such flag."""
    flag = getattr(os, "O_DIRECT", 0)
    probe = directory / ".direct-probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | flag, 0o600))
        return bool(flag)
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


def snapshot(path: Path) -> dict[str, str]:
    """Everything at ``path``, hidden entries included: relative path → sha256, 'dir' or 'link → …'."""
    if path.is_symlink():
        return {".": f"link → {os.readlink(path)}"}
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    found: dict[str, str] = {}
    if not path.is_dir():
        return found
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            item = Path(root) / name
            key = str(item.relative_to(path))
            if item.is_symlink():
                found[key] = f"link → {os.readlink(item)}"
            elif item.is_dir():
                found[key] = "dir"
            else:
                found[key] = hashlib.sha256(item.read_bytes()).hexdigest()
    return found
