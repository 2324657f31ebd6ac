"""The merge job end to end: config → checkpoints → plan → execute → published model directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergebench.config import MergeConfig
from mergebench.errors import ConfigError
from mergebench.execute import execute_plan
from mergebench.io.checkpoint import Checkpoint
from mergebench.io.model_files import copy_side_files, write_config, write_model_card
from mergebench.io.writer import OutputDirectory, ShardedWriter, check_output_target, parse_size
from mergebench.lora.adapted import open_model, split_spec
from mergebench.plan import MergePlan, plan_models_merge


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


def open_checkpoints(config: MergeConfig, *, allow_pickle: bool = False) -> dict[str, Checkpoint]:
    """Open every model the config names (headers only); ``base+adapter`` applies a LoRA adapter on the fly."""
    return {spec: open_model(spec, allow_pickle=allow_pickle) for spec in config.model_specs()}


def local_input_paths(config: MergeConfig) -> list[Path]:
    """Every existing local directory the config reads from (both parts of ``base+adapter``)."""
    parts = [part for spec in config.model_specs() for part in (split_spec(spec) or (spec,))]
    return [Path(part) for part in parts if Path(part).exists()]


def plan_merge(config: MergeConfig, *, allow_pickle: bool = False) -> MergePlan:
    """Everything that needs only headers; raises on the first kind of problem found, listing all of it."""
    checkpoints = open_checkpoints(config, allow_pickle=allow_pickle)
    if config.slices is not None:
        from mergebench.slices import plan_slices_merge

        return plan_slices_merge(config, checkpoints)
    return plan_models_merge(config, checkpoints)


def run_merge(config: MergeConfig, config_text: str, out: str | Path, options: MergeOptions) -> Path:
    """Validate, plan, merge and atomically publish the output directory; returns its path."""
    if options.seed is not None:
        config = config.model_copy(update={"seed": options.seed})
    try:
        shard_size = parse_size(options.max_shard_size)
    except ValueError as exc:
        raise ConfigError(f"--max-shard-size: {exc}") from None
    out = Path(out)
    # Output location problems are cheap to find: report them before opening any model.
    local_inputs = local_input_paths(config)
    check_output_target(out, overwrite=options.overwrite, inputs=local_inputs)
    plan = plan_merge(config, allow_pickle=options.allow_pickle)
    inputs = [*local_inputs, *(checkpoint.path for checkpoint in plan.checkpoints.values())]
    with OutputDirectory(out, overwrite=options.overwrite, inputs=inputs) as temp:
        writer = ShardedWriter(temp, plan.output_specs, shard_size)
        try:
            execute_plan(
                plan, writer, device=options.device, progress=options.progress, readahead=options.readahead
            )
            writer.close()
        finally:
            writer.abort()
        write_config(temp, plan.reference, plan.output_dtype, plan.config_updates)
        copy_side_files(temp, plan.reference, plan.tokenizer_source)
        write_model_card(
            temp,
            title=f"{config.merge_method} merge",
            inputs=list(plan.checkpoints),
            config_text=config_text,
        )
    return out
