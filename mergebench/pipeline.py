"""The merge job end to end: config → sources → mapping → plan → execute → published model directory."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from mergebench.config import MergeConfig, load_config, parse_config
from mergebench.errors import ConfigError
from mergebench.planner import Merge, MergePlan, config_local_paths, plan_merge
from mergebench.publish import Execution, ModelCard, OutputTarget, publish_model

__all__ = ["MergeOptions", "MergePlan", "MergeResult", "merge", "plan", "plan_merge", "run_merge"]


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
    resume: bool = False  # keep the verified shards of a killed run into the same output
    threads: int | None = None  # ops computed at once (default: every available core; 3 streams on a GPU)
    direct_io: bool | None = None  # shards bypass the page cache (None: with few cores; publish.direct_io)


def run_merge(config: MergeConfig, config_text: str, out: str | Path, options: MergeOptions) -> Path:
    """Validate, plan, merge and atomically publish the output directory; returns its path."""
    return _merge(config, config_text, out, options)[0]


def _merge(
    config: MergeConfig, config_text: str, out: str | Path, options: MergeOptions
) -> tuple[Path, MergePlan]:
    if options.seed is not None:
        config = config.model_copy(update={"seed": options.seed})
    # Output location problems are cheap to find: report them before opening any model.
    target = OutputTarget(
        out,
        overwrite=options.overwrite,
        max_shard_size=options.max_shard_size,
        inputs=config_local_paths(config),
        resume=options.resume,
    )
    plan = plan_merge(config, allow_pickle=options.allow_pickle)
    card = ModelCard(f"{config.merge_method} merge", list(plan.sources), config_text)
    execution = Execution(
        device=options.device,
        progress=options.progress,
        readahead=options.readahead,
        workers=options.threads,
        direct_io=options.direct_io,
    )
    return publish_model(target, plan, card, execution), plan


# ---------------------------------------------------------------------------------------------------
# Python API: ``mergebench.merge(...)`` and ``mergebench.plan(...)``

ConfigLike = str | os.PathLike | Mapping | MergeConfig


@dataclass(frozen=True)
class MergeResult:
    """What ``mergebench.merge`` made."""

    path: Path
    output_tensors: int
    merged: int  # tensors computed by the method (the rest were copied)
    bytes_written: int
    bytes_read: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.output_tensors} tensors ({self.merged} merged), "
            f"{self.bytes_written / 1e9:.2f} GB written in {self.seconds:.1f} s"
        )


def as_config(config: ConfigLike) -> tuple[MergeConfig, str]:
    """A config given as a YAML file path, a mapping or a MergeConfig → (validated config, YAML text)."""
    if isinstance(config, MergeConfig):
        return config, yaml.safe_dump(config.model_dump(exclude_defaults=True), sort_keys=False)
    if isinstance(config, Mapping):
        data = dict(config)
        return parse_config(data), yaml.safe_dump(data, sort_keys=False)
    return load_config(config)


def merge(config: ConfigLike, out_dir: str | os.PathLike, **options: object) -> MergeResult:
    """Merge ``config`` (YAML path, mapping or MergeConfig) into ``out_dir``.

    ``options`` are MergeOptions' fields (``max_shard_size``, ``device``, ``overwrite``, ``allow_pickle``,
    ``progress`` (default off here), ``seed``, ``readahead``, ``resume``, ``threads``, ``direct_io``
    (off when the output is loaded right after)). Raises MergebenchError subclasses on user errors.
    """
    known = {f.name for f in fields(MergeOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"merge(): unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})")
    merge_options = MergeOptions(**{"progress": False, **options})  # type: ignore[arg-type]
    merge_config, text = as_config(config)
    started = time.perf_counter()
    path, plan = _merge(merge_config, text, Path(out_dir), merge_options)
    return MergeResult(
        path=path,
        output_tensors=len(plan.ops),
        merged=sum(isinstance(op, Merge) for op in plan.ops),
        bytes_written=plan.output_bytes,
        bytes_read=plan.input_bytes,
        seconds=time.perf_counter() - started,
    )


def plan(config: ConfigLike, *, allow_pickle: bool = False) -> MergePlan:
    """The validated plan of ``config`` — every output tensor, what it is made of, what would be read and
    written — from headers alone, without reading or writing any tensor."""
    return plan_merge(as_config(config)[0], allow_pickle=allow_pickle)
