"""Publishing a model directory: the one sequence every command that writes a model goes through.

check the target (before any model is opened) → temporary directory beside it → sharded writer →
execute the plan → config.json, generation config, tokenizer files, model card → atomic rename.
A failure or interruption at any step leaves nothing at the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mergebench.errors import ConfigError
from mergebench.execute import execute_plan
from mergebench.io.model_files import copy_side_files, write_config, write_model_card
from mergebench.io.writer import OutputDirectory, ShardedWriter, check_output_target, parse_size
from mergebench.planner import MergePlan


@dataclass(frozen=True)
class ModelCard:
    """What the output's README.md records, so the model can be reproduced."""

    title: str
    inputs: Sequence[str]
    config_text: str
    details: str = ""


@dataclass(frozen=True)
class Execution:
    """How the arithmetic runs; never changes what is written."""

    device: str = "cpu"
    progress: bool = True
    readahead: int = 2
    workers: int | None = None


class OutputTarget:
    """Where a model will be published, checked up front: the shard size parses, and the directory is
    empty (or ``overwrite``) and overlaps none of the local inputs."""

    def __init__(
        self, path: str | Path, *, overwrite: bool, max_shard_size: str | int, inputs: Sequence[Path]
    ) -> None:
        try:
            self.shard_size = parse_size(max_shard_size)
        except ValueError as exc:
            raise ConfigError(f"--max-shard-size: {exc}") from None
        self.path = Path(path)
        self.overwrite = overwrite
        self.inputs = list(inputs)
        check_output_target(self.path, overwrite=overwrite, inputs=self.inputs)


def publish_model(target: OutputTarget, plan: MergePlan, card: ModelCard, execution: Execution) -> Path:
    """Write the plan's output as a complete Hugging Face model directory at ``target``, atomically."""
    inputs = [*target.inputs, *plan.input_paths]
    with OutputDirectory(target.path, overwrite=target.overwrite, inputs=inputs) as temp:
        writer = ShardedWriter(temp, plan.output_specs, target.shard_size)
        try:
            execute_plan(
                plan.ops,
                writer,
                device=execution.device,
                progress=execution.progress,
                readahead=execution.readahead,
                workers=execution.workers,
            )
            writer.close()
        finally:
            writer.abort()
        write_config(temp, plan.reference.config, plan.output_dtype, plan.config_updates)
        copy_side_files(temp, plan.reference.path, plan.tokenizer_source.path)
        write_model_card(
            temp, title=card.title, inputs=card.inputs, config_text=card.config_text, details=card.details
        )
    return target.path
