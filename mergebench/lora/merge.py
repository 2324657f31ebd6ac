"""``lora merge``: fold adapters into their base and write a normal model directory, streamed.

The base is never loaded whole: a plan with one job per base tensor runs through the core's
``execute_plan`` (read-ahead threads, progress bar, writer thread) with a job runner that applies the
adapters' updates to the tensors they touch (see ``bind.py`` for the math).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mergebench.errors import ConfigError
from mergebench.execute import execute_plan
from mergebench.io.checkpoint import open_checkpoint
from mergebench.io.model_files import copy_side_files, write_config, write_model_card
from mergebench.io.writer import (
    OutputDirectory,
    ShardedWriter,
    TensorSpec,
    check_output_target,
    parse_size,
)
from mergebench.lora.adapter import open_adapter
from mergebench.lora.bind import apply_recipe, bind_adapters
from mergebench.plan import MergeJob, MergePlan, TensorRef


def parse_weights(text: str | None, count: int) -> list[float]:
    """``"1.0,0.5"`` → [1.0, 0.5]; one weight per adapter (default 1 each)."""
    if text is None or text == "":
        return [1.0] * count
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights: {text!r} is not a comma-separated list of numbers") from None
    if len(weights) != count:
        raise ConfigError(f"--weights: {len(weights)} weights given for {count} adapters")
    return weights


def run_lora_merge(
    base_spec: str,
    adapter_specs: Sequence[str],
    out: str | Path,
    *,
    weights: Sequence[float] | None = None,
    max_shard_size: str | int = "5GB",
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    readahead: int = 2,
) -> Path:
    """Write ``base`` with every adapter folded in (W' = W + Σ w_i ΔW_i) to ``out``, atomically."""
    try:
        shard_size = parse_size(max_shard_size)
    except ValueError as exc:
        raise ConfigError(f"--max-shard-size: {exc}") from None
    out = Path(out)
    weights = list(weights) if weights is not None else [1.0] * len(adapter_specs)
    local = [Path(spec) for spec in (base_spec, *adapter_specs) if Path(spec).exists()]
    check_output_target(out, overwrite=overwrite, inputs=local)
    base = open_checkpoint(base_spec, allow_pickle=allow_pickle)
    adapters = [open_adapter(spec, allow_pickle=allow_pickle) for spec in adapter_specs]
    recipes = bind_adapters(base, adapters, weights)  # every mismatch is found here, before any output

    jobs = []
    for name, info in base.tensors.items():
        out_dtype = dtype if (dtype is not None and info.dtype.is_floating_point) else info.dtype
        refs = [TensorRef(base, name)]
        recipe = recipes.get(name)
        if recipe is not None:
            refs += [TensorRef(adapters[index].weights, key) for index, key in recipe.inputs]
        jobs.append(MergeJob(TensorSpec(name, info.shape, out_dtype), tuple(refs)))
    checkpoints = {base_spec: base, **{a.spec: a.weights for a in adapters}}
    plan = MergePlan(jobs, reference=base, tokenizer_source=base, checkpoints=checkpoints, output_dtype=dtype)

    def runner(job: MergeJob, tensors: list[torch.Tensor], device: str, buffers=None) -> torch.Tensor:
        recipe = recipes.get(job.output.name)
        tensor = tensors[0] if recipe is None else apply_recipe(recipe, tensors[0], tensors[1:])
        return tensor.to(job.output.dtype)

    inputs = [base.path, *(adapter.path for adapter in adapters)]
    with OutputDirectory(out, overwrite=overwrite, inputs=inputs) as temp:
        writer = ShardedWriter(temp, plan.output_specs, shard_size)
        try:
            execute_plan(plan, writer, progress=progress, readahead=readahead, job_runner=runner)
            writer.close()
        finally:
            writer.abort()
        write_config(temp, base, dtype)
        copy_side_files(temp, base, base)
        write_model_card(
            temp,
            title="LoRA merge",
            inputs=[base_spec, *adapter_specs],
            config_text=_card_config(base_spec, adapter_specs, weights, dtype),
            details=_card_details(adapters, weights, len(recipes)),
        )
    return out


def _card_config(base_spec, adapter_specs, weights, dtype) -> str:
    lines = [f"base_model: {base_spec}", "adapters:"]
    for spec, weight in zip(adapter_specs, weights, strict=True):
        lines += [f"  - adapter: {spec}", f"    weight: {weight}"]
    if dtype is not None:
        lines.append(f"dtype: {str(dtype).removeprefix('torch.')}")
    return "\n".join(lines)


def _card_details(adapters, weights, changed: int) -> str:
    rows = [
        "## LoRA adapters folded in",
        "",
        "W' = W + Σ w_i · s_i · B_i A_i (s = α/r, or α/√r with rsLoRA)",
        "",
    ]
    rows += ["| adapter | weight | modules | ranks | DoRA |", "|---|---|---|---|---|"]
    for adapter, weight in zip(adapters, weights, strict=True):
        ranks = sorted({m.rank for m in adapter.modules.values()})
        rows.append(
            f"| `{adapter.spec}` | {weight} | {len(adapter.modules)} | "
            f"{', '.join(map(str, ranks)) or '-'} | {'yes' if adapter.uses_dora else 'no'} |"
        )
    rows += ["", f"{changed} base tensors changed."]
    return "\n".join(rows)
