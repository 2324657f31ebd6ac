"""Non-finite numbers: the policy for NaN/Inf inside weights and in parameters, for every method."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergebench.errors import CheckpointError, ConfigError
from mergebench.methods import all_methods
from tests.conftest import assert_clean_failure, run_cli, write_config


def poison(model_dir, value: float) -> str:
    """Put ``value`` into one entry of one tensor of a copy-on-write model dir; returns the tensor name."""
    shard = sorted(model_dir.glob("*.safetensors"))[0]
    tensors = load_file(shard)
    name = next(n for n, t in tensors.items() if t.dim() == 2)
    tensors[name] = tensors[name].clone()
    tensors[name][1, 2] = value
    save_file(tensors, shard, metadata={"format": "pt"})
    return name


@pytest.fixture
def poisoned(llama_family, tmp_path):
    import shutil

    target = tmp_path / "poisoned"
    shutil.copytree(llama_family.ft1, target)
    return target


def config_for(method: str, family, poisoned) -> dict:
    base, ft2 = str(family.base), str(family.ft2)
    models = [
        {"model": str(poisoned), "parameters": {"weight": 0.5}},
        {"model": ft2, "parameters": {"weight": 0.5}},
    ]
    if method == "slerp":
        return {
            "merge_method": "slerp",
            "base_model": base,
            "models": [{"model": str(poisoned)}],
            "parameters": {"t": 0.5},
        }
    config = {"merge_method": method, "models": models}
    if method != "linear":
        config["base_model"] = base
    return config


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("method", ["ties", "slerp"])
def test_methods_with_whole_tensor_statistics_refuse_non_finite_weights(
    method, value, llama_family, poisoned, tmp_path
):
    name = poison(poisoned, value)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "cfg.yaml", config_for(method, llama_family, poisoned))
    line = assert_clean_failure(
        run_cli("merge", cfg, out, "--no-progress"), name, str(poisoned), "NaN or Inf"
    )
    assert f"{method} needs finite weights" in line
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "dare_linear"])
def test_elementwise_methods_keep_a_nan_in_its_own_entry(method, llama_family, poisoned, tmp_path):
    name = poison(poisoned, float("nan"))
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "cfg.yaml", config_for(method, llama_family, poisoned))
    result = run_cli("merge", cfg, out, "--no-progress")
    assert result.exit_code == 0, result.output
    merged = {}
    for shard in out.glob("*.safetensors"):
        merged.update(load_file(shard))
    bad = ~torch.isfinite(merged[name])
    assert bad.sum() == 1 and bad[1, 2]
    assert all(torch.isfinite(t).all() for n, t in merged.items() if n != name)


class Stored:
    """An input whose stored tensor the test hands to run_op directly."""

    def __init__(self, name: str) -> None:
        from types import SimpleNamespace

        self.refs = (SimpleNamespace(name=name, checkpoint=SimpleNamespace(spec=f"model-{name}")),)

    def build(self, tensors):
        return tensors[0]


GUARDED = sorted(name for name, m in all_methods().items() if m.stats is not None or not m.elementwise)


@pytest.mark.parametrize("method_name", GUARDED)
def test_every_whole_tensor_method_refuses_a_nan_input(method_name):
    from mergebench.execute import run_op
    from mergebench.io.writer import TensorSpec
    from mergebench.planner import Merge

    method = all_methods()[method_name]
    count = method.model_count or 2
    params = {
        p.name: (tuple([0.5] * count) if p.per_model else 0.5)
        if p.default is None
        else (tuple([p.default] * count) if p.per_model else p.default)
        for p in method.params
    }
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(8, 16, generator=generator) for _ in range(count + 1)]
    tensors[-1][3, 4] = float("nan")
    uses_base = method.base != "unused"
    op = Merge(
        TensorSpec("model.layers.0.mlp.up_proj.weight", (8, 16), torch.float32),
        method,
        Stored("base") if uses_base else None,
        tuple(Stored(f"m{i}") for i in range(count)),
        params,
    )
    with pytest.raises(CheckpointError, match="model-m.*NaN or Inf"):
        run_op(op, tensors if uses_base else tensors[1:])


@pytest.mark.parametrize("value", [1e39, -1e39, float("nan"), float("inf")])
def test_parameters_must_be_finite_in_float32(value, llama_family, tmp_path):
    config = config_for("task_arithmetic", llama_family, llama_family.ft1)
    config["models"][0]["parameters"]["weight"] = value
    assert_clean_failure(
        run_cli("merge", write_config(tmp_path / "cfg.yaml", config), tmp_path / "o"),
        "models[0].parameters.weight",
        "finite number within float32",
    )


@pytest.mark.parametrize("weights", ["nan", "inf", "1e39", "-inf"])
def test_lora_weights_must_be_finite(weights, llama_family, tmp_path):
    from mergebench.lora.merge import parse_weights

    with pytest.raises(ConfigError, match="finite"):
        parse_weights(weights, 1)
