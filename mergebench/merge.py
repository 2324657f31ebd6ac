"""The merge job end to end: config → sources → mapping → plan → execute → published model directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergebench.config import MergeConfig
from mergebench.plan import MergePlan, config_local_paths, plan_merge
from mergebench.publish import Execution, ModelCard, OutputTarget, publish_model

__all__ = ["MergeOptions", "MergePlan", "plan_merge", "run_merge"]


@dataclass(frozen=True)
class MergeOptions:
    """Run-time choices that do not change what is merged (except ``seed``, which overrides the config's)."""

    max_shard_size: str | int = "5GB"
    device: str = "cpu"
    overwrite: bool = False
    allow_pickle: bool = False
    progress: bool = True
    seed: int | None = None
    readahead: int = 2


def run_merge(config: MergeConfig, config_text: str, out: str | Path, options: MergeOptions) -> Path:
    """Validate, plan, merge and atomically publish the output directory; returns its path."""
    if options.seed is not None:
        config = config.model_copy(update={"seed": options.seed})
    # Output location problems are cheap to find: report them before opening any model.
    target = OutputTarget(
        out,
        overwrite=options.overwrite,
        max_shard_size=options.max_shard_size,
        inputs=config_local_paths(config),
    )
    plan = plan_merge(config, allow_pickle=options.allow_pickle)
    card = ModelCard(f"{config.merge_method} merge", list(plan.sources), config_text)
    execution = Execution(device=options.device, progress=options.progress, readahead=options.readahead)
    return publish_model(target, plan, card, execution)
