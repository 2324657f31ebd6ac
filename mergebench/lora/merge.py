"""``lora merge``: fold adapters into their base and write a normal model directory, streamed.

The base is never loaded whole: the plan is one ``Copy`` per base tensor whose input is the tensor with
the adapters folded in where they touch it (``sources.open_folded``; math in ``fold``), published
through the same path as every merge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from mergebench.dtypes import dtype_name
from mergebench.errors import ConfigError
from mergebench.io.writer import TensorSpec
from mergebench.methods.registry import FLOAT32_MAX
from mergebench.planner import Copy, MergePlan
from mergebench.publish import Execution, ModelCard, OutputTarget, publish_model
from mergebench.sources import open_folded


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
    if not all(math.isfinite(weight) and abs(weight) <= FLOAT32_MAX for weight in weights):
        raise ConfigError(f"--weights: {text!r}: every weight must be a finite number within float32's range")
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
    device: str = "cpu",
) -> Path:
    """Write ``base`` with every adapter folded in (W' = W + Σ w_i ΔW_i) to ``out``, atomically; the
    products B·A are computed on ``device``."""
    weights = list(weights) if weights is not None else [1.0] * len(adapter_specs)
    local = [Path(spec) for spec in (base_spec, *adapter_specs) if Path(spec).exists()]
    target = OutputTarget(out, overwrite=overwrite, max_shard_size=max_shard_size, inputs=local)
    # every adapter is checked against the base here, before any output
    source = open_folded(base_spec, adapter_specs, weights, allow_pickle=allow_pickle)
    ops = []
    for name, info in source.tensors.items():
        out_dtype = dtype if (dtype is not None and info.dtype.is_floating_point) else info.dtype
        ops.append(Copy(TensorSpec(name, info.shape, out_dtype), source.input(name)))
    plan = MergePlan(
        ops, reference=source, tokenizer_source=source, sources={base_spec: source}, output_dtype=dtype
    )
    card = ModelCard(
        "LoRA merge",
        [base_spec, *adapter_specs],
        _card_config(base_spec, adapter_specs, weights, dtype),
        _card_details(source.adapters, weights, len(source.folds)),
    )
    return publish_model(target, plan, card, Execution(device=device, progress=progress, readahead=readahead))


def _card_config(base_spec, adapter_specs, weights, dtype) -> str:
    lines = [f"base_model: {base_spec}", "adapters:"]
    for spec, weight in zip(adapter_specs, weights, strict=True):
        lines += [f"  - adapter: {spec}", f"    weight: {weight}"]
    if dtype is not None:
        lines.append(f"dtype: {dtype_name(dtype)}")
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
