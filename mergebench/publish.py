"""Publishing a model directory: the one sequence every command that writes a model goes through.

check the target (before any model is opened) → side files checked → lock and temporary directory
beside the target → sharded writer → execute the plan → config.json, generation config, tokenizer
files, model card → atomic rename. A failure or interruption at any step leaves nothing at the
target; a killed run's finished shards can be kept by ``resume`` when config and plan are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mergebench.errors import ConfigError
from mergebench.execute import available_cores, execute_plan
from mergebench.io.model_files import (
    copy_side_files,
    side_files,
    write_config,
    write_model_card,
    write_tokenizer_files,
)
from mergebench.io.writer import (
    OutputDirectory,
    ShardedWriter,
    assign_shards,
    check_output_target,
    parse_size,
    shard_files,
)
from mergebench.planner import Merge, MergePlan, RowMerge, op_refs
from mergebench.vocab import check_output


@dataclass(frozen=True)
class ModelCard:
    """What the output's README.md records, so the model can be reproduced."""

    title: str
    inputs: Sequence[str]
    config_text: str
    details: str = ""


@dataclass(frozen=True)
class Execution:
    """How the arithmetic runs and the shards are written; never changes what is written."""

    device: str = "cpu"
    progress: bool = True
    readahead: int = 2
    workers: int | None = None
    direct_io: bool | None = None  # shards bypass the page cache (``OutputFile``); None: ``direct_io``


# Where nothing says otherwise, shards bypass the page cache on machines with at most this many cores:
# there the kernel's copying and page-cache upkeep compete with the arithmetic (2-core VM: a linear
# merge of the 0.85B models 5.0 → 2.6 s); on 16 cores they run alongside it, and that machine's disk
# took direct writes no faster (linear merges within noise to ~1 s slower). Between 4 and 16: unmeasured.
DIRECT_IO_MAX_CORES = 4


def direct_io(choice: bool | None) -> bool:
    """Whether shards are written with O_DIRECT: the caller's choice, else by the core count."""
    return available_cores() <= DIRECT_IO_MAX_CORES if choice is None else choice


class OutputTarget:
    """Where a model will be published, checked up front: the shard size parses, and the directory is
    empty (or ``overwrite``) and overlaps none of the local inputs. ``resume`` keeps the verified
    shards of a killed run into the same directory (same config and plan)."""

    def __init__(
        self,
        path: str | Path,
        *,
        overwrite: bool,
        max_shard_size: str | int,
        inputs: Sequence[Path],
        resume: bool = False,
    ) -> None:
        try:
            self.shard_size = parse_size(max_shard_size)
        except ValueError as exc:
            raise ConfigError(f"--max-shard-size: {exc}") from None
        self.path = Path(path)
        self.overwrite = overwrite
        self.inputs = list(inputs)
        self.resume = resume
        check_output_target(self.path, overwrite=overwrite, inputs=self.inputs)


def run_identity(plan: MergePlan, config_text: str, shard_size: int, device: str = "cpu") -> dict:
    """What must be unchanged for an interrupted run's shards to be reused: the config text, and the
    plan — every output spec and op (method, parameters, seed, the stored bytes it reads), the shard
    assignment, the size and mtime of every input file, and the device (GPU arithmetic may round
    differently)."""
    specs = plan.output_specs
    files = shard_files(assign_shards(specs, shard_size))
    ops, inputs = [], set()
    for op in plan.ops:
        refs = [[str(r.info.file), r.info.offset, r.info.nbytes, r.name] for r in op_refs(op)]
        inputs.update(r.info.file for r in op_refs(op))
        entry: dict[str, object] = {"out": [op.output.name, list(op.output.shape), str(op.output.dtype)]}
        entry["refs"] = refs
        entry["folds"] = [repr(getattr(item, "recipe", None)) for item in op.inputs]
        if isinstance(op, Merge):
            entry["merge"] = [op.method.name, repr(op.params), str(op.compute_dtype), op.seed]
        if isinstance(op, RowMerge):  # tokenizer merging: which row of which input makes each output row
            entry["rows"] = op.rows.digest
        ops.append(entry)
    stats = []
    for file in sorted(inputs):
        try:
            stat = file.stat()
            stats.append([str(file), stat.st_size, stat.st_mtime_ns])
        except OSError:
            stats.append([str(file), None, None])
    fingerprint = json.dumps({"ops": ops, "files": files, "inputs": stats, "device": device}, sort_keys=True)
    return {
        "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "plan_sha256": hashlib.sha256(fingerprint.encode()).hexdigest(),
        "files": files,
    }


def publish_model(target: OutputTarget, plan: MergePlan, card: ModelCard, execution: Execution) -> Path:
    """Write the plan's output as a complete Hugging Face model directory at ``target``, atomically."""
    inputs = [*target.inputs, *plan.input_paths]
    tokenizer_dir = _copied_tokenizer(plan)
    side_files(plan.reference.path, tokenizer_dir)  # refuse unsafe links before any work
    output = OutputDirectory(
        target.path,
        overwrite=target.overwrite,
        inputs=inputs,
        resume=target.resume,
        identity=run_identity(plan, card.config_text, target.shard_size, execution.device),
    )
    with output as temp:
        writer = ShardedWriter(
            temp,
            plan.output_specs,
            target.shard_size,
            done_shards=len(output.done_shards),
            on_shard_done=output.record_shard,
            direct=direct_io(execution.direct_io),
        )
        try:
            execute_plan(
                plan.ops,
                writer,
                device=execution.device,
                progress=execution.progress,
                readahead=execution.readahead,
                workers=execution.workers,
                skip=range(writer.first_position),
            )
            writer.close()
        finally:
            writer.abort()
        write_config(temp, plan.reference.config, plan.output_dtype, plan.config_updates)
        copy_side_files(temp, plan.reference.path, tokenizer_dir)
        write_model_card(
            temp, title=card.title, inputs=card.inputs, config_text=card.config_text, details=card.details
        )
        # --- tokenizer merging (mergebench/vocab.py): its files, and the output's self-check before
        # the rename, so a model whose tokenizer and embeddings disagree is never published.
        if plan.tokenizer is not None:
            if plan.tokenizer.files is not None:
                write_tokenizer_files(temp, plan.tokenizer.files)
            check_output(temp, plan.tokenizer, plan.output_specs)
    return target.path


def _copied_tokenizer(plan: MergePlan) -> Path | None:
    """The directory whose tokenizer files are copied; None when the plan writes a tokenizer it built."""
    if plan.tokenizer is not None and plan.tokenizer.files is not None:
        return None
    return plan.tokenizer_source.path
