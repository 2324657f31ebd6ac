"""The Python API (``mergebench.merge``, ``mergebench.plan``) and ``mergebench methods``."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

import mergebench
from mergebench.errors import CheckpointError, ConfigError
from mergebench.methods import all_methods
from mergebench.planner import Copy, Merge
from tests.conftest import run_cli, write_config


def ties_config(family) -> dict:
    return {
        "merge_method": "ties",
        "base_model": str(family.base),
        "models": [
            {"model": str(family.ft1), "parameters": {"weight": 1.0, "density": 0.5}},
            {"model": str(family.ft2), "parameters": {"weight": 0.5, "density": 0.7}},
        ],
    }


def digests(directory) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.safetensors"))
    }


def test_merge_from_a_dict_a_path_and_the_cli_give_the_same_bytes(llama_family, tmp_path):
    config = ties_config(llama_family)
    result = mergebench.merge(config, tmp_path / "api")
    assert result.path == tmp_path / "api" and (result.path / "config.json").is_file()
    assert (
        result.output_tensors == len(mergebench.plan(config).ops)
        and result.merged == result.output_tensors  # all float
    )
    assert result.bytes_written == sum(p.stat().st_size for p in result.path.glob("*.safetensors")) - sum(
        8 + int.from_bytes(p.read_bytes()[:8], "little") for p in result.path.glob("*.safetensors")
    )
    path = write_config(tmp_path / "cfg.yaml", config)
    from_path = mergebench.merge(path, tmp_path / "from-path")
    assert run_cli("merge", path, tmp_path / "cli", "--no-progress").exit_code == 0
    assert digests(result.path) == digests(from_path.path) == digests(tmp_path / "cli")
    assert str(result).startswith(str(result.path))


KERNELS_PROBE = """
import json, sys, threading
import mergebench
mergebench.merge(json.loads(sys.argv[1]), sys.argv[2])
print(json.dumps({"numba": "numba" in sys.modules, "threads": [t.name for t in threading.enumerate()]}))
"""


def test_only_runs_that_call_kernels_import_numba(llama_family, tmp_path):
    """Loading the methods imports no compiled kernels (numba costs 0.1–0.45 s to import): a linear
    merge never imports numba; a TIES merge on the CPU does, loading it early on a thread of its own."""
    linear = {
        "merge_method": "linear",
        "models": [
            {"model": str(llama_family.ft1), "parameters": {"weight": 0.5}},
            {"model": str(llama_family.ft2), "parameters": {"weight": 0.5}},
        ],
    }
    seen = {}
    for name, config in (("linear", linear), ("ties", ties_config(llama_family))):
        done = subprocess.run(
            [sys.executable, "-c", KERNELS_PROBE, json.dumps(config), str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        seen[name] = json.loads(done.stdout.strip().splitlines()[-1])
    assert not seen["linear"]["numba"] and "mergebench-kernels" not in seen["linear"]["threads"]
    assert seen["ties"]["numba"]


def test_plan_reads_headers_only_and_says_what_each_tensor_is(llama_family, monkeypatch):
    def no_reads(info, buffer=None):
        raise AssertionError(f"tensor data read while planning: {info.name}")

    monkeypatch.setattr("mergebench.io.checkpoint.read_tensor", no_reads)
    plan = mergebench.plan(ties_config(llama_family))
    by_name = {op.output.name: op for op in plan.ops}
    merged = by_name["model.layers.1.mlp.up_proj.weight"]
    assert isinstance(merged, Merge) and merged.method.name == "ties"
    assert merged.params["density"] == (0.5, 0.7) and merged.base.name == "model.layers.1.mlp.up_proj.weight"
    assert all(isinstance(op, (Copy, Merge)) for op in plan.ops)
    assert plan.output_bytes > 0 and plan.input_bytes == 3 * plan.output_bytes


def test_api_errors_are_the_cli_errors(llama_family, tmp_path):
    with pytest.raises(ConfigError, match="unknown option 'devise'"):
        mergebench.merge(ties_config(llama_family), tmp_path / "o", devise="cpu")
    with pytest.raises(ConfigError, match="lamda"):
        mergebench.plan({**ties_config(llama_family), "parameters": {"lamda": 1}})
    with pytest.raises(CheckpointError, match="not found"):
        mergebench.plan({**ties_config(llama_family), "base_model": str(tmp_path / "missing")})
    assert not (tmp_path / "o").exists()


def test_methods_command_lists_every_method_with_its_parameters():
    result = run_cli("methods")
    assert result.exit_code == 0, result.output
    for name, method in all_methods().items():
        line = next(line for line in result.output.splitlines() if line.startswith(f"{name}: "))
        assert method.summary in line
    assert "weight (per model, required)" in result.output and "t (required)" in result.output
