"""Multi-stage recipes (mergekit-multi's format): several merges in one YAML file, later ones using
earlier ones as models.

The file is a stream of YAML documents, each a merge config plus a ``name``. A model string equal to an
earlier stage's name means that stage's output. Every stage but the last is written to the
intermediate directory (``<dir>/<name>``); the last is written to OUT. A stage is rebuilt only when its
fingerprint changed: its recipe (with earlier stages replaced by their fingerprints), the mergebench
version, and the headers and sizes of the model files it reads. So editing one stage rebuilds that
stage and the stages after it that use it, and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from mergebench.config import parse_config
from mergebench.errors import ConfigError, MergebenchError, OutputError
from mergebench.pipeline import MergeOptions, run_merge
from mergebench.sources import open_source
from mergebench.version import __version__

STAGE_RECORD = "mergebench-stage.json"
MODEL_KEYS = ("model", "base_model", "tokenizer_source", "before", "after", "non_layer_source")


@dataclass(frozen=True)
class Stage:
    name: str
    data: dict  # the config, with earlier stages' names still in it
    text: str  # the document as YAML, for the model card


def is_recipe(documents: list[object]) -> bool:
    """Several YAML documents, or one with a ``name``: a multi-stage recipe rather than one config."""
    return len(documents) > 1 or (
        len(documents) == 1 and isinstance(documents[0], dict) and "name" in documents[0]
    )


def read_stages(documents: list[object], source: str) -> list[Stage]:
    """Every stage of a recipe, checked: named (all but the last may not omit it), names unique, and
    each stage's config valid on its own (earlier stages' names stand in for models)."""
    stages: list[Stage] = []
    for index, document in enumerate(documents):
        if not isinstance(document, dict):
            raise ConfigError(f"{source}: document {index + 1}: expected a merge config mapping")
        data = dict(document)
        name = data.pop("name", None)
        last = index == len(documents) - 1
        if name is None and not last:
            raise ConfigError(f"{source}: document {index + 1}: every stage but the last needs a 'name'")
        name = str(name) if name is not None else "final"
        if any(stage.name == name for stage in stages):
            raise ConfigError(f"{source}: stage {name!r} is defined twice")
        parse_config(data, source=f"{source}: stage {name!r}")
        stages.append(Stage(name, data, yaml.safe_dump(document, sort_keys=False)))
    return stages


def _model_strings(value: object, key: str | None = None) -> Iterator[str]:
    """Every model string of a config (values of model-naming keys, at any depth)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _model_strings(v, k)
    elif isinstance(value, list):
        for item in value:
            yield from _model_strings(item, key)
    elif isinstance(value, str) and key in MODEL_KEYS:
        yield value


def _substitute(value: object, names: dict[str, str], key: str | None = None) -> object:
    if isinstance(value, dict):
        return {k: _substitute(v, names, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(item, names, key) for item in value]
    if isinstance(value, str) and key in MODEL_KEYS and value in names:
        return names[value]
    return value


def _inputs_fingerprint(spec: str, allow_pickle: bool) -> list:
    """What a model input looks like from its headers: tensor layout and file sizes."""
    source = open_source(spec, allow_pickle=allow_pickle)
    checkpoints = [source.checkpoint, *(adapter.weights for adapter in source.adapters)]
    layout = []
    for checkpoint in checkpoints:
        for info in checkpoint.tensors.values():
            layout.append(
                [info.name, str(info.dtype), list(info.shape), info.file.name, info.offset, info.nbytes]
            )
        layout.append(sorted((f.name, f.stat().st_size) for f in checkpoint.files()))
    return layout


@dataclass(frozen=True)
class StageRun:
    name: str
    path: Path
    rebuilt: bool


def run_recipe(
    stages: list[Stage],
    out: Path,
    intermediate_dir: Path,
    options: MergeOptions,
    *,
    only: str | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> list[StageRun]:
    """Build the recipe's stages in order (or only ``only`` and the stages it needs), reusing every
    stage whose fingerprint is unchanged. Errors name the stage."""
    by_name = {stage.name: stage for stage in stages}
    if only is not None and only not in by_name:
        raise ConfigError(f"--stage: no stage named {only!r} (stages: {', '.join(by_name)})")
    needed = _needed(stages, only) if only is not None else set(by_name)
    fingerprints: dict[str, str] = {}
    paths: dict[str, str] = {}
    runs = []
    made_intermediate_dir = not intermediate_dir.exists()
    for position, stage in enumerate(stages):
        if stage.name not in needed:
            continue
        final = position == len(stages) - 1
        target = out if final else intermediate_dir / stage.name
        try:
            run = _run_stage(
                stage, target, fingerprints, paths, options, reusable=not final, stage_names=set(by_name)
            )
        except MergebenchError as exc:
            if made_intermediate_dir and intermediate_dir.is_dir() and not any(intermediate_dir.iterdir()):
                intermediate_dir.rmdir()  # nothing was built: leave nothing beside OUT
            message = "\n".join(f"stage {stage.name!r}: {line}" for line in str(exc).splitlines())
            raise type(exc)(message) from None
        runs.append(run)
        log(f"stage {stage.name!r}: {'merged into' if run.rebuilt else 'unchanged, reusing'} {run.path}")
    return runs


def _needed(stages: list[Stage], only: str) -> set[str]:
    names = {stage.name for stage in stages}
    needed, todo = set(), [only]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        stage = next(s for s in stages if s.name == name)
        todo += [m for m in _model_strings(stage.data) if m in names]
    return needed


def _run_stage(
    stage: Stage,
    target: Path,
    fingerprints: dict[str, str],
    paths: dict[str, str],
    options: MergeOptions,
    *,
    reusable: bool,
    stage_names: set[str],
) -> StageRun:
    later = [m for m in _model_strings(stage.data) if m in stage_names and m not in paths]
    if later:
        raise ConfigError(f"uses stage {later[0]!r}, which is not built before it (stages run in file order)")
    config = parse_config(_substitute(stage.data, paths), source="config")
    inputs = {
        spec: fingerprints.get(name) or _inputs_fingerprint(spec, options.allow_pickle)
        for name, spec in ((m, paths.get(m, m)) for m in _model_strings(stage.data))
    }
    recipe = _substitute(stage.data, fingerprints)
    digest = hashlib.sha256(
        json.dumps([__version__, recipe, inputs, options.seed], sort_keys=True, default=str).encode()
    ).hexdigest()
    fingerprints[stage.name] = digest
    paths[stage.name] = str(target)
    record = target / STAGE_RECORD
    if reusable and record.is_file():
        try:
            unchanged = json.loads(record.read_text()).get("fingerprint") == digest
        except (OSError, ValueError):
            unchanged = False
        if unchanged:
            return StageRun(stage.name, target, rebuilt=False)
    # An intermediate is read right back by the next stage: written through the page cache.
    stage_options = replace(options, overwrite=True, direct_io=False) if reusable else options
    run_merge(config, stage.text, target, stage_options)
    if reusable:
        try:
            record.write_text(json.dumps({"stage": stage.name, "fingerprint": digest}, indent=2) + "\n")
        except OSError as exc:  # a stage without its record would be rebuilt anyway: leave nothing half-done
            shutil.rmtree(target, ignore_errors=True)
            raise OutputError(f"{record}: cannot write the stage record ({exc.strerror})") from None
    return StageRun(stage.name, target, rebuilt=True)
