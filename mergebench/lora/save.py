"""Write a PEFT adapter directory (config + safetensors), atomically, like the model writer does."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from mergebench.io.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from mergebench.io.model_files import copy_side_files
from mergebench.io.writer import OutputDirectory, save_tensors
from mergebench.version import __version__

# Fields that describe which modules are adapted: replaced by exact lists when writing a new adapter.
_TARGETING = ("layers_to_transform", "layers_pattern", "exclude_modules", "target_parameters")


def rank_config(ranks: Mapping[str, int]) -> dict:
    """r / lora_alpha / patterns so that every module's scale is exactly 1 (α = r, no rsLoRA).

    The most common rank becomes ``r``; other modules get exact (escaped, full-path) pattern keys.
    """
    counts: dict[int, int] = {}
    for rank in ranks.values():
        counts[rank] = counts.get(rank, 0) + 1
    r = max(counts, key=lambda rank: (counts[rank], rank)) if counts else 1
    pattern = {re.escape(path): rank for path, rank in ranks.items() if rank != r}
    return {
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "use_rslora": False,
        "use_dora": False,
    }


def adapter_config(template: Mapping | None, updates: Mapping) -> dict:
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "lora_dropout": 0.0,
        "lora_bias": False,
        "modules_to_save": None,
    }
    config.update(template or {})
    for key in _TARGETING:
        config[key] = None
    config.update(updates)
    return config


def write_adapter(
    out: Path,
    tensors: Mapping[str, torch.Tensor],
    config: Mapping,
    *,
    overwrite: bool,
    inputs: Sequence[Path],
    readme: str,
    tokenizer_dir: Path | None = None,
) -> Path:
    """Publish ``out`` holding ``adapter_config.json``, ``adapter_model.safetensors``, a README whose
    front matter names the base model (as PEFT's own cards do) and, from ``tokenizer_dir``, the
    tokenizer files an input adapter carried."""
    with OutputDirectory(out, overwrite=overwrite, inputs=inputs) as temp:
        save_tensors(temp / ADAPTER_WEIGHTS, tensors)
        (temp / ADAPTER_CONFIG).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
        if tokenizer_dir is not None:
            copy_side_files(temp, tokenizer_dir, tokenizer_dir)
        base = config.get("base_model_name_or_path")
        front = ["---", *([f"base_model: {json.dumps(base)}"] if base else []), "library_name: peft"]
        front += ["tags:", "- lora", "- mergebench", "---", ""]
        (temp / "README.md").write_text(
            "\n".join(front) + f"Made with mergebench {__version__}.\n\n" + readme.rstrip() + "\n"
        )
    return Path(out)
