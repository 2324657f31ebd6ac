"""``mergebench search``: find a merge recipe by Optuna over a SPACE, each trial a merge + quick-eval on Ray.

The driver owns the study (``OUT/study.db``, SQLite, so ``--resume`` continues it) and asks Optuna for
one config at a time; each trial runs as a Ray task that merges into ``OUT/scratch/trial-N``, evaluates
with ``quickeval`` on its own device, removes its scratch directory and returns the metrics. As many
trials are in flight as the Ray cluster has room for (``--cpus-per-trial``/``--gpus-per-trial``), and
no more: Optuna's ask/tell then sees every finished trial before proposing the next, which is what
makes TPE and CMA-ES better than a grid. A trial that raises is told as FAIL with its message; the
study goes on. At the end (and on Ctrl-C) the outputs are (re)written from the study alone, so a
resumed search reports on all its trials:

* ``leaderboard.csv`` (and a table on stdout): trial, state, objectives, params, seconds, error;
* ``best.yaml``: the best trial's concrete config, a plain merge config (``mergebench merge`` runs it);
  with several objectives, the Pareto-optimal trial with the best mean (``best_score``), and
  ``pareto/trial-N.yaml`` for every Pareto-optimal trial;
* ``report.html``: self-contained (PNG plots as data URIs, no JavaScript): history, parameter
  importances, the Pareto front for two objectives, the leaderboard and the best recipe.

Optuna, Ray, torch and matplotlib are imported inside functions: importing this module (Ray workers
do, to run ``run_trial``) costs little, and the CLI module imports it only when the command runs.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mergebench import errors
from mergebench.errors import ConfigError, EvalError, MergebenchError, OutputError
from mergebench.search_space import SearchSpace, load_space

if TYPE_CHECKING:
    import optuna

STUDY_NAME = "mergebench-search"
STUDY_FILE = "study.db"
SCRATCH_DIR = "scratch"
OBJECT_STORE_BYTES = 256 * 1024**2  # trials pass only configs and metrics through Ray's object store
SAMPLERS = ("tpe", "cmaes", "random")
DEVICES = ("auto", "cpu", "cuda")
ERROR_CHARS = 500
INTERRUPTED = "interrupted: the search stopped before this trial finished"


# ------------------------------------------------------------------------------------------ objectives


@dataclass(frozen=True)
class Objective:
    """One value the study optimises, read from a trial's quick-eval metrics."""

    name: str  # "accuracy:<stem>", "perplexity:<stem>" or "mean-accuracy"
    metric: str  # "accuracy" or "perplexity"
    stems: tuple[str, ...]  # the data files it reads (several for mean-accuracy)

    @property
    def direction(self) -> str:
        return "minimize" if self.metric == "perplexity" else "maximize"

    @property
    def arrow(self) -> str:
        return "↓" if self.direction == "minimize" else "↑"

    def value(self, metrics: dict[str, dict]) -> float:
        """The objective's value; a metric that came back None is an error (checked up front, so only a
        custom data change between runs could cause it)."""
        values = [metrics[stem][self.metric] for stem in self.stems]
        if any(v is None for v in values):
            raise EvalError(f"objective {self.name}: the eval returned no {self.metric}")
        return float(sum(values) / len(values))

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b


def parse_objectives(spec: str | None, data: dict[str, list[dict]]) -> list[Objective]:
    """``--objective`` → objectives. Default: mean accuracy when every file has prompt/answer lines,
    else one objective per file (its accuracy when it has prompt lines, else its perplexity)."""
    has_qa = {stem: any("prompt" in r for r in records) for stem, records in data.items()}
    has_text = {stem: any("text" in r for r in records) for stem, records in data.items()}
    if not spec or not spec.strip():
        if all(has_qa.values()):
            return [Objective("mean-accuracy", "accuracy", tuple(data))]
        return [
            Objective(f"accuracy:{s}", "accuracy", (s,))
            if has_qa[s]
            else Objective(f"perplexity:{s}", "perplexity", (s,))
            for s in data
        ]
    objectives: list[Objective] = []
    for item in (part.strip() for part in spec.split(",")):
        if item == "mean-accuracy":
            stems = tuple(s for s in data if has_qa[s])
            if not stems:
                raise ConfigError("--objective mean-accuracy: no eval file has prompt/answer lines")
            objective = Objective(item, "accuracy", stems)
        else:
            metric, _, stem = item.partition(":")
            if metric not in ("accuracy", "perplexity") or not stem:
                raise ConfigError(
                    f"--objective {item!r}: use accuracy:<stem>, perplexity:<stem> or mean-accuracy, "
                    "comma-separated"
                )
            if stem not in data:
                raise ConfigError(
                    f"--objective {item}: no --eval file has the stem {stem!r} (stems: {', '.join(data)})"
                )
            kind_ok = has_qa[stem] if metric == "accuracy" else has_text[stem]
            if not kind_ok:
                lines = "prompt/answer" if metric == "accuracy" else "text"
                raise ConfigError(f"--objective {item}: the eval file {stem!r} has no {lines} lines")
            objective = Objective(item, metric, (stem,))
        if any(o.name == objective.name for o in objectives):
            raise ConfigError(f"--objective: {item} is given twice")
        objectives.append(objective)
    return objectives


# ------------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class SearchOptions:
    """How a search runs; the CLI flags of ``mergebench search``."""

    trials: int = 20  # total trials of the study (a resumed study runs the missing ones)
    address: str | None = None  # Ray cluster address; None = start a local Ray instance
    num_cpus: int | None = None  # CPUs of the local Ray instance (None = the machine's)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    objective: str | None = None
    sampler: str = "tpe"
    seed: int = 0
    resume: bool = False
    device: str = "auto"  # auto: cuda when trials get GPUs, else cpu
    progress: bool = True
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))


@dataclass
class TrialRow:
    """One leaderboard row, read back from the study."""

    number: int
    state: str
    values: list[float] | None
    params: dict[str, Any]
    seconds: float | None
    error: str
    config: dict | None
    metrics: dict | None
    score: float | None = None  # single objective: the value; several: the best_score mean
    pareto: bool = False


@dataclass
class SearchResult:
    """What a search left in its output directory."""

    out_dir: Path
    objectives: list[Objective]
    rows: list[TrialRow]  # leaderboard order: best first, failed last
    best: TrialRow | None
    pareto: list[TrialRow]
    table: str
    ran: int  # trials run by this call (a resumed study had the others)

    @property
    def best_yaml(self) -> Path:
        return self.out_dir / "best.yaml"


# ------------------------------------------------------------------------------------------ the trial


def run_trial(config: dict, scratch: str, data: dict[str, list[dict]], device: str) -> dict:
    """One trial, in a Ray worker: merge ``config`` under ``scratch``, quick-eval it, remove ``scratch``.

    Returns ``{"metrics", "seconds", "merge_seconds"}`` or, when anything raised, ``{"error",
    "error_class", "seconds"}``: a message travels more reliably than a pickled exception, and the
    driver tells Optuna FAIL either way. The scratch directory goes in every case (disk is the scarce
    resource when models are large).
    """
    started = time.perf_counter()
    try:
        from mergebench.pipeline import merge
        from mergebench.quickeval import evaluate_loaded, load_model

        merged = merge(config, Path(scratch) / "model", device=device, progress=False, direct_io=False)
        model, tokenizer, torch_device = load_model(merged.path, device)
        try:
            metrics = evaluate_loaded(model, tokenizer, data, torch_device)
        finally:
            del model
            if torch_device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
        return {"metrics": metrics, "seconds": time.perf_counter() - started, "merge_seconds": merged.seconds}
    except Exception as exc:  # noqa: BLE001 - every failure of a trial is reported, none stops the study
        return {
            "error": one_line(exc),
            "error_class": type(exc).__name__,
            "seconds": time.perf_counter() - started,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def one_line(exc: BaseException) -> str:
    """An error as one short line: a MergebenchError's own message, else ``Type: message``."""
    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if not isinstance(exc, MergebenchError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:ERROR_CHARS]


# ------------------------------------------------------------------------------------------ the search


def search(
    space_path: str | os.PathLike,
    eval_files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: SearchOptions | None = None,
) -> SearchResult:
    """Run (or resume) a search; write leaderboard.csv, best.yaml, pareto/, report.html into ``out_dir``.

    Every user error (space, eval files, objectives, flags, output directory) is raised before Ray
    starts, except a trial's resources that the cluster lacks (checked before the study is created, so
    OUT stays as it was). A search where no trial completed raises the first trial's error class (so
    its exit code) after writing the leaderboard.

    Ray: an already initialised Ray (``ray.is_initialized()``) is used as it is and left running, so a
    caller can size it (``ray.init(num_cpus=2)``) and reuse its warm workers over several searches;
    otherwise ``address`` is joined, or a local instance started, and shut down at the end. On a
    cluster, the models, OUT (trials merge into OUT/scratch) and relative model paths must mean the
    same on every node; the eval data travel with the tasks.
    """
    options = options or SearchOptions()
    out = Path(out_dir)
    space = load_space(str(space_path))
    device = _check_options(options)
    files = [Path(f) for f in eval_files]
    if not files:
        raise EvalError("search: give at least one --eval data file")
    from mergebench.quickeval import check_data, load_records

    check_data(files, device if options.address is None else "cpu")
    data = {f.stem: load_records(f) for f in files}
    objectives = parse_objectives(options.objective, data)
    if options.sampler == "cmaes" and len(objectives) > 1:
        raise ConfigError("--sampler cmaes optimises one objective; use tpe or random for several")
    _check_out(out, options.resume)

    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    owns_ray = not ray.is_initialized()
    if owns_ray:
        _init_ray(options)
    try:
        slots = _slots(options)  # before the study exists: a flag error leaves OUT as it was
        study = _open_study(out, space, objectives, files, options)
        stale = _fail_stale_trials(study)
        if stale:
            options.log(f"marked {stale} unfinished trial(s) of the earlier run as FAIL")
        to_run = max(0, options.trials - len(study.trials))
        if to_run == 0:
            options.log(
                f"the study already has {len(study.trials)} trial(s) (--trials {options.trials}); reporting"
            )
        ran = 0
        try:
            if to_run:
                ran = _run_trials(study, space, objectives, data, out, device, to_run, slots, options)
        finally:
            if study.trials:
                result = write_outputs(study, space, objectives, out, space_path, ran)
    finally:
        if owns_ray:
            ray.shutdown()
    if not any(row.state == "COMPLETE" for row in result.rows):
        raise _all_failed(study)
    return result


def _check_options(options: SearchOptions) -> str:
    """Flag problems → ConfigError; returns the trials' device (auto → cuda only when trials get GPUs,
    so a trial never uses a GPU that Ray did not give it)."""
    if options.trials < 1:
        raise ConfigError(f"--trials: must be at least 1, got {options.trials}")
    if options.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler: unknown sampler {options.sampler!r} (use {', '.join(SAMPLERS)})")
    if options.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError("--sampler cmaes needs the 'cmaes' package (pip install cmaes)") from None
    if options.device not in DEVICES:
        raise ConfigError(f"--device: unknown device {options.device!r} (use {', '.join(DEVICES)})")
    if options.cpus_per_trial < 0 or options.gpus_per_trial < 0:
        raise ConfigError("--cpus-per-trial/--gpus-per-trial: must not be negative")
    if options.cpus_per_trial == 0 and options.gpus_per_trial == 0:
        raise ConfigError("--cpus-per-trial: a trial needs some CPU or GPU (both are 0)")
    if options.device == "cuda" and options.gpus_per_trial == 0:
        raise ConfigError("--device cuda: give --gpus-per-trial (a trial uses only the GPUs Ray assigns it)")
    if options.device == "auto":
        return "cuda" if options.gpus_per_trial > 0 else "cpu"
    return options.device


def _check_out(out: Path, resume: bool) -> None:
    """A new search needs an empty or missing OUT; --resume continues the study in it (or starts one)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory")
    if resume or not out.exists():
        return
    if any(out.iterdir()):
        what = "holds a search study" if (out / STUDY_FILE).exists() else "is not empty"
        raise OutputError(f"{out}: {what}; add --resume to continue it, or choose another --out")


def _open_study(
    out: Path, space: SearchSpace, objectives: list[Objective], files: list[Path], options: SearchOptions
) -> optuna.Study:
    """Create or load the study in OUT/study.db; a resumed study must have the same space and objectives
    (Optuna's directions are fixed, and mixing spaces would mislead the sampler)."""
    import optuna

    out.mkdir(parents=True, exist_ok=True)
    db = out / STUDY_FILE
    existed = db.exists()
    storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
    names = [o.name for o in objectives]
    if existed:
        try:
            study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
        except KeyError:
            raise OutputError(f"{db}: holds no mergebench search study") from None
        stored = study.user_attrs
        if stored.get("objectives") != names:
            raise ConfigError(
                f"--objective: {out} searched {', '.join(stored.get('objectives', []))}, not {', '.join(names)}; "
                "resume with the same objectives or use another --out"
            )
        if stored.get("space") != space.template:
            raise ConfigError(f"{out}: its study was made for a different SPACE; use another --out")
    else:
        study = optuna.create_study(
            storage=storage, study_name=STUDY_NAME, directions=[o.direction for o in objectives]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # set_metric_names is "experimental" in Optuna 5
            study.set_metric_names(names)
        study.set_user_attr("objectives", names)
        study.set_user_attr("space", space.template)
        study.set_user_attr("eval_files", [str(f) for f in files])
    # Seed the sampler with the number of trials already run: a resumed study must not replay the
    # random draws of its first run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = _make_sampler(options.sampler, options.seed + len(study.trials))
    return study


def _make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # Categorical ranges (method, model choices) are drawn by the seeded independent sampler.
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            warn_independent_sampling=False,
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
        )
    return optuna.samplers.TPESampler(seed=seed)


def _fail_stale_trials(study: optuna.Study) -> int:
    """Trials left RUNNING by a killed search will never report: record them as FAIL."""
    import optuna

    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for frozen in stale:
        # Optuna has no public handle on a stored unfinished trial but Trial(study, trial_id).
        optuna.trial.Trial(study, frozen._trial_id).set_user_attr("error", INTERRUPTED)
        study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
    return len(stale)


# ------------------------------------------------------------------------------------------ Ray loop


@dataclass
class _InFlight:
    trial: optuna.Trial
    scratch: Path
    started: float


def _run_trials(
    study: optuna.Study,
    space: SearchSpace,
    objectives: list[Objective],
    data: dict[str, list[dict]],
    out: Path,
    device: str,
    count: int,
    slots: int,
    options: SearchOptions,
) -> int:
    """Ask/tell ``count`` trials on Ray, ``slots`` in flight (what the cluster can run at once); returns
    how many were told."""
    import ray

    scratch_root = out / SCRATCH_DIR
    shutil.rmtree(scratch_root, ignore_errors=True)  # a killed run's leftovers
    in_flight: dict[Any, _InFlight] = {}
    told = 0
    progress = _Progress(study, objectives, count, options)
    try:
        task = ray.remote(
            num_cpus=options.cpus_per_trial,
            num_gpus=options.gpus_per_trial,
            max_retries=0,  # a trial that killed its worker (out of memory) fails; it is not re-run
            max_calls=_max_calls(options),
        )(run_trial)
        data_ref = ray.put(data)
        asked = 0
        while asked < count or in_flight:
            while asked < count and len(in_flight) < slots:
                asked += 1
                trial = study.ask()
                values, config = space.sample(trial)
                trial.set_user_attr("params", values)
                trial.set_user_attr("config", config)
                problem = _config_problem(config)
                if problem:  # a sampled value out of the method's range: no need to start a task
                    _tell_fail(study, trial, problem, 0.0)
                    told += 1
                    progress.update(trial.number)
                    continue
                scratch = scratch_root / f"trial-{trial.number}"
                ref = task.remote(config, str(scratch), data_ref, device)
                in_flight[ref] = _InFlight(trial, scratch, time.perf_counter())
            if not in_flight:
                continue
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                running = in_flight.pop(ref)
                _tell_result(study, running, _get(ray, ref), objectives)
                told += 1
                progress.update(running.trial.number)
    except BaseException:
        # Ctrl-C (or a driver bug): the trials in flight will never report; record them as failed.
        for ref, running in in_flight.items():
            try:
                ray.cancel(ref, force=True)
                _tell_fail(study, running.trial, INTERRUPTED, time.perf_counter() - running.started)
            except Exception:  # noqa: BLE001 - best effort; a resume marks what is left RUNNING as FAIL
                pass
            shutil.rmtree(running.scratch, ignore_errors=True)
        raise
    finally:
        progress.close()
        if scratch_root.is_dir() and not any(scratch_root.iterdir()):
            scratch_root.rmdir()
    return told


def _init_ray(options: SearchOptions) -> None:
    """Start or join Ray, keeping this process's SIGTERM handling: Ray installs a crash handler for
    SIGTERM that aborts the process, which would skip the cleanup (trials told FAIL, outputs written,
    Ray shut down) that the CLI's SIGTERM-as-Ctrl-C gives."""
    import logging
    import signal
    import threading

    import ray

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        _start_ray(options, ray, logging.ERROR)
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _start_ray(options: SearchOptions, ray: Any, level: int) -> None:
    if options.address:
        ray.init(address=options.address, log_to_driver=False, logging_level=level)
    else:
        ray.init(
            address="local",
            num_cpus=options.num_cpus,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
            log_to_driver=False,
            logging_level=level,
        )


def _slots(options: SearchOptions) -> int:
    """How many trials the cluster can run at once; ConfigError when not even one fits."""
    import ray

    resources = ray.cluster_resources()
    limits = []
    for flag, need, have in (
        ("--cpus-per-trial", options.cpus_per_trial, resources.get("CPU", 0.0)),
        ("--gpus-per-trial", options.gpus_per_trial, resources.get("GPU", 0.0)),
    ):
        if need > 0:
            if have < need:
                raise ConfigError(f"{flag} {need:g}: the Ray cluster has {have:g}")
            limits.append(int(have // need + 1e-9))
    return max(1, min(limits))


def _max_calls(options: SearchOptions) -> int:
    """Ray starts a fresh worker for each GPU task by default (max_calls=1), because a reused process
    keeps the CUDA device it first saw. When no node has more than one GPU, the device cannot change,
    and reusing workers saves a torch + transformers import and a CUDA start per trial."""
    import ray

    if options.gpus_per_trial == 0:
        return 0  # CPU tasks: Ray's default, workers are reused
    per_node = [node.get("Resources", {}).get("GPU", 0.0) for node in ray.nodes() if node.get("Alive", True)]
    return 0 if all(gpus <= 1 for gpus in per_node) else 1


def _get(ray_module: Any, ref: Any) -> dict:
    """A task's result; a task that could not run at all (worker crash, cancelled) becomes an error."""
    try:
        return ray_module.get(ref)
    except Exception as exc:  # noqa: BLE001 - Ray's errors for a dead worker or task vary by version
        return {"error": one_line(exc), "error_class": type(exc).__name__, "seconds": None}


def _config_problem(config: dict) -> str | None:
    from mergebench.config import parse_config

    try:
        parse_config(config, source="sampled config")
    except ConfigError as exc:
        return one_line(exc)
    return None


def _tell_fail(
    study: optuna.Study, trial: optuna.Trial, error: str, seconds: float | None, cls: str = ""
) -> None:
    import optuna

    trial.set_user_attr("error", error)
    trial.set_user_attr("error_class", cls or "ConfigError")
    trial.set_user_attr("seconds", seconds)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _tell_result(study: optuna.Study, running: _InFlight, result: dict, objectives: list[Objective]) -> None:
    seconds = result.get("seconds")
    if seconds is None:
        seconds = time.perf_counter() - running.started
    shutil.rmtree(running.scratch, ignore_errors=True)  # normally gone already; not after a worker crash
    if "error" in result:
        _tell_fail(study, running.trial, result["error"], seconds, result.get("error_class", ""))
        return
    metrics = result["metrics"]
    running.trial.set_user_attr("metrics", metrics)
    try:
        values = [o.value(metrics) for o in objectives]
    except EvalError as exc:
        _tell_fail(study, running.trial, str(exc), seconds, "EvalError")
        return
    bad = [f"{o.name} = {v}" for o, v in zip(objectives, values, strict=True) if not math.isfinite(v)]
    if bad:
        _tell_fail(study, running.trial, f"non-finite objective: {', '.join(bad)}", seconds, "EvalError")
        return
    running.trial.set_user_attr("seconds", seconds)
    running.trial.set_user_attr("merge_seconds", result.get("merge_seconds"))
    study.tell(running.trial, values)


def _all_failed(study: optuna.Study) -> MergebenchError:
    """No trial completed: the first trial's error, as its own class (exit code) when it is ours."""
    first = min(study.get_trials(deepcopy=False), key=lambda t: t.number)
    cls = getattr(errors, str(first.user_attrs.get("error_class", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, MergebenchError)):
        cls = MergebenchError
    message = first.user_attrs.get("error", "unknown error")
    return cls(f"no trial completed ({len(study.trials)} failed); trial {first.number}: {message}")


class _Progress:
    """A tqdm bar (trials, best so far, ETA) on a terminal; one line per finished trial otherwise, so a
    log file shows the search too."""

    def __init__(self, study: optuna.Study, objectives: list[Objective], total: int, options: SearchOptions):
        self.study = study
        self.objectives = objectives
        self.log = options.log
        self.bar = None
        if options.progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="trial", desc="search", dynamic_ncols=True)

    def update(self, number: int) -> None:
        import optuna

        trial = self.study.get_trials(deepcopy=False)[number]
        complete = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(self.objectives) == 1:
            best = _best_single(complete, self.objectives[0])
            summary = f"best {best:.4g}" if best is not None else "best -"
        else:
            summary = f"pareto {len(self.study.best_trials) if complete else 0}"
        if self.bar is not None:
            self.bar.set_postfix_str(summary, refresh=False)
            self.bar.update(1)
            return
        if trial.state == optuna.trial.TrialState.COMPLETE:
            what = ", ".join(f"{o.name}={v:.4g}" for o, v in zip(self.objectives, trial.values, strict=True))
        else:
            what = f"FAIL: {trial.user_attrs.get('error', '')}"
        seconds = trial.user_attrs.get("seconds")
        took = f" ({seconds:.1f} s)" if seconds else ""
        self.log(f"trial {number}: {what}{took}; {summary}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _best_single(trials: Sequence[optuna.trial.FrozenTrial], objective: Objective) -> float | None:
    best = None
    for t in trials:
        if best is None or objective.better(t.values[0], best):
            best = t.values[0]
    return best


# ------------------------------------------------------------------------------------------ outputs


def collect_rows(study: optuna.Study, objectives: list[Objective]) -> tuple[list[TrialRow], list[TrialRow]]:
    """Every trial as a row, ranked: best score first (Pareto-optimal ones ahead of the others), failed
    last; and the Pareto-optimal rows (the best trial alone for one objective)."""
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False):
        complete = t.state == optuna.trial.TrialState.COMPLETE
        rows.append(
            TrialRow(
                number=t.number,
                state=t.state.name,
                values=list(t.values) if complete and t.values else None,
                params=t.user_attrs.get("params") or dict(t.params),
                seconds=t.user_attrs.get("seconds"),
                error=t.user_attrs.get("error", "") if not complete else "",
                config=t.user_attrs.get("config"),
                metrics=t.user_attrs.get("metrics"),
            )
        )
    done = [r for r in rows if r.values is not None]
    scores = best_score([r.values for r in done], objectives)  # type: ignore[misc]
    for row, score in zip(done, scores, strict=True):
        row.score = score
    pareto_numbers = {t.number for t in study.best_trials} if done else set()
    for row in done:
        row.pareto = row.number in pareto_numbers
    done.sort(key=lambda r: (not r.pareto, -(r.score or 0.0), r.number))
    failed = sorted((r for r in rows if r.values is None), key=lambda r: r.number)
    return done + failed, [r for r in done if r.pareto]


def best_score(values: Sequence[Sequence[float]], objectives: list[Objective]) -> list[float]:
    """How good each trial is on one scale, higher better; picks best.yaml among the Pareto trials.

    One objective: its value (negated when minimised). Several accuracies: their plain mean. Otherwise
    (mixed scales or directions) the mean of each objective min-max normalised over the completed
    trials, 1 = the best seen (a dominated trial never scores above the one dominating it).
    """
    if not values:
        return []
    if len(objectives) == 1:
        sign = -1.0 if objectives[0].direction == "minimize" else 1.0
        return [sign * v[0] for v in values]
    if all(o.metric == "accuracy" for o in objectives):
        return [sum(v) / len(v) for v in values]
    columns = list(zip(*values, strict=True))
    scores = [0.0] * len(values)
    for objective, column in zip(objectives, columns, strict=True):
        low, high = min(column), max(column)
        for i, v in enumerate(column):
            if high == low:
                scores[i] += 1.0
            elif objective.direction == "minimize":
                scores[i] += (high - v) / (high - low)
            else:
                scores[i] += (v - low) / (high - low)
    return [s / len(objectives) for s in scores]


def write_outputs(
    study: optuna.Study,
    space: SearchSpace,
    objectives: list[Objective],
    out: Path,
    space_path: str | os.PathLike,
    ran: int,
) -> SearchResult:
    """(Re)write every output from the study: a resumed search reports on all of its trials."""
    rows, pareto = collect_rows(study, objectives)
    best = pareto[0] if pareto else None
    param_names = [r.name for r in space.ranges]
    _write_csv(out / "leaderboard.csv", rows, objectives, param_names)
    for stale in (out / "pareto").glob("trial-*.yaml") if (out / "pareto").is_dir() else ():
        stale.unlink()
    if best is not None:
        what = "best" if len(objectives) == 1 else "the Pareto-optimal trial with the best mean"
        _write_recipe(out / "best.yaml", best, objectives, f"{what} of {len(rows)} trials over {space_path}")
    if len(objectives) > 1:
        (out / "pareto").mkdir(exist_ok=True)
        for row in pareto:
            title = f"Pareto-optimal, of {len(rows)} trials over {space_path}"
            _write_recipe(out / "pareto" / f"trial-{row.number}.yaml", row, objectives, title)
    table = format_leaderboard(rows, objectives, param_names)
    (out / "report.html").write_text(
        render_report(study, rows, pareto, best, objectives, param_names, space_path), encoding="utf-8"
    )
    return SearchResult(out, objectives, rows, best, pareto, table, ran)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _write_csv(path: Path, rows: list[TrialRow], objectives: list[Objective], params: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", *[o.name for o in objectives], *params, "seconds", "error"])
        for row in rows:
            values = row.values or [None] * len(objectives)
            writer.writerow(
                [
                    row.number,
                    row.state,
                    *[_csv_value(v) for v in values],
                    *[_csv_value(row.params.get(p)) for p in params],
                    "" if row.seconds is None else f"{row.seconds:.3f}",
                    row.error,
                ]
            )


def _write_recipe(path: Path, row: TrialRow, objectives: list[Objective], title: str) -> None:
    """A trial's concrete config as a runnable merge config, its scores in a comment header."""
    scores = ", ".join(f"{o.name} = {v:.6g}" for o, v in zip(objectives, row.values or [], strict=False))
    header = f"# mergebench search: trial {row.number}, {title}\n# {scores}\n"
    path.write_text(header + yaml.safe_dump(row.config, sort_keys=False), encoding="utf-8")


def format_leaderboard(
    rows: list[TrialRow], objectives: list[Objective], params: list[str], limit: int = 20
) -> str:
    """The terminal table: the ``limit`` best rows, then any failed ones (their errors cut short)."""
    shown = [r for r in rows if r.values is not None][:limit] + [r for r in rows if r.values is None][:limit]
    header = ["", "trial", "state", *[f"{o.name} {o.arrow}" for o in objectives], *params, "seconds", "error"]
    lines = [header]
    for row in shown:
        values = row.values or [None] * len(objectives)
        mark = "*" if row.pareto else ""
        error = row.error if len(row.error) <= 60 else row.error[:57] + "..."
        lines.append(
            [
                mark,
                str(row.number),
                row.state,
                *[_fmt(v) for v in values],
                *[_fmt(row.params.get(p)) for p in params],
                "" if row.seconds is None else f"{row.seconds:.1f}",
                error,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = []
    for k, line in enumerate(lines):
        text.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if k == 0:
            text.append("  ".join("-" * w for w in widths).rstrip())
    hidden = len(rows) - len(shown)
    if hidden:
        text.append(f"... {hidden} more in leaderboard.csv")
    return "\n".join(text)


# ------------------------------------------------------------------------------------------ report


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_history(rows: list[TrialRow], objectives: list[Objective]) -> str:
    """Each objective's value per trial, with the best so far; failed trials as red ticks."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 2.6 * len(objectives)))
    axes = fig.subplots(len(objectives), 1, squeeze=False)[:, 0]
    ordered = sorted(rows, key=lambda r: r.number)
    failed = [r.number for r in ordered if r.values is None]
    for i, (ax, objective) in enumerate(zip(axes, objectives, strict=True)):
        xs = [r.number for r in ordered if r.values is not None]
        ys = [r.values[i] for r in ordered if r.values is not None]  # type: ignore[index]
        ax.plot(xs, ys, "o", color="tab:blue", label="trial")
        best: list[float] = []
        for y in ys:
            best.append(y if not best or objective.better(y, best[-1]) else best[-1])
        if xs:
            ax.step(xs, best, where="post", color="tab:orange", label="best so far")
        for number in failed:
            ax.axvline(number, color="tab:red", alpha=0.25, linewidth=1)
        ax.set_ylabel(f"{objective.name} {objective.arrow}")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("trial (red lines: failed trials)" if failed else "trial")
    return _png(fig)


IMPORTANCE_MIN_TRIALS = 10


def param_importances(
    study: optuna.Study, objectives: list[Objective], index: int, params: list[str]
) -> tuple[dict[str, float], str]:
    """Importances of the parameters for objective ``index`` → (importances, how they were computed).

    Optuna's ``get_param_importances`` (PED-ANOVA in Optuna 5) compares the best 10% of the trials with
    all of them: below ``IMPORTANCE_MIN_TRIALS`` completed trials that is one trial, and its answer is
    noise (Optuna warns that the importances "will be equal"). Then, or if Optuna raises, the fallback is
    |Spearman rank correlation| between each parameter and the objective (choices by their index),
    normalised to sum to 1, which needs only two completed trials.
    """
    import warnings

    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, "needs at least 2 completed trials"
    if len({t.values[index] for t in complete}) == 1:
        return {}, "the objective did not vary"
    if len(complete) >= IMPORTANCE_MIN_TRIALS:
        sign = -1.0 if objectives[index].direction == "maximize" else 1.0  # PED-ANOVA looks for low values
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = optuna.importance.get_param_importances(
                    study, target=lambda t: sign * t.values[index]
                )
            if result and all(math.isfinite(v) for v in result.values()) and sum(result.values()) > 0:
                return dict(result), f"optuna.importance.get_param_importances, {len(complete)} trials"
        except Exception:  # noqa: BLE001 - any failure of the estimator means: use the fallback
            pass
    importances = _rank_correlations(complete, index, params)
    how = f"fallback: |Spearman rank correlation| over {len(complete)} trials"
    return importances, how if importances else f"{how}: no parameter varied with the objective"


def _rank_correlations(
    trials: Sequence[optuna.trial.FrozenTrial], index: int, params: list[str]
) -> dict[str, float]:
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    def correlation(xs: list[float], ys: list[float]) -> float:
        rx, ry = ranks(xs), ranks(ys)
        mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
        cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
        sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
        sy = math.sqrt(sum((b - my) ** 2 for b in ry))
        return abs(cov / (sx * sy)) if sx > 0 and sy > 0 else 0.0

    result = {}
    for name in params:
        pairs = [(t.params[name], t.values[index]) for t in trials if name in t.params]
        if len(pairs) < 2:
            continue
        raw = [p for p, _ in pairs]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
            labels = sorted({str(v) for v in raw})
            raw = [labels.index(str(v)) for v in raw]
        result[name] = correlation([float(v) for v in raw], [y for _, y in pairs])
    total = sum(result.values())
    return {k: v / total for k, v in sorted(result.items(), key=lambda kv: -kv[1])} if total > 0 else {}


def plot_importances(
    study: optuna.Study, objectives: list[Objective], params: list[str]
) -> tuple[str | None, list[str]]:
    """A bar chart per objective; None (and notes) when no importances could be computed."""
    from matplotlib.figure import Figure

    results = [param_importances(study, objectives, i, params) for i in range(len(objectives))]
    notes = [f"{o.name}: {how}" for o, (_, how) in zip(objectives, results, strict=True)]
    if not any(imp for imp, _ in results):
        return None, notes
    fig = Figure(figsize=(7, 0.5 + 0.4 * max(1, len(params)) * len(objectives) + 0.6 * len(objectives)))
    axes = fig.subplots(len(objectives), 1, squeeze=False)[:, 0]
    for ax, objective, (importances, _) in zip(axes, objectives, results, strict=True):
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_title(objective.name, fontsize="medium")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3, axis="x")
    axes[-1].set_xlabel("importance (sums to 1)")
    fig.tight_layout()
    return _png(fig), notes


def plot_pareto(rows: list[TrialRow], objectives: list[Objective], best: TrialRow | None) -> str | None:
    """The two objectives of every completed trial, the Pareto front joined, best.yaml's trial starred."""
    if len(objectives) != 2:
        return None
    from matplotlib.figure import Figure

    done = [r for r in rows if r.values is not None]
    if not done:
        return None
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    others = [r for r in done if not r.pareto]
    front = sorted((r for r in done if r.pareto), key=lambda r: r.values[0])  # type: ignore[index]
    ax.scatter([r.values[0] for r in others], [r.values[1] for r in others], color="0.6", label="trial")  # type: ignore[index]
    ax.plot(
        [r.values[0] for r in front],
        [r.values[1] for r in front],
        "o-",
        color="tab:blue",
        label="Pareto front",
    )  # type: ignore[index]
    for r in front:
        ax.annotate(
            str(r.number), (r.values[0], r.values[1]), textcoords="offset points", xytext=(4, 4), fontsize=8
        )  # type: ignore[index]
    if best is not None and best.values:
        ax.plot([best.values[0]], [best.values[1]], "*", color="tab:orange", markersize=16, label="best.yaml")
    ax.set_xlabel(f"{objectives[0].name} {objectives[0].arrow}")
    ax.set_ylabel(f"{objectives[1].name} {objectives[1].arrow}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _png(fig)


def render_report(
    study: optuna.Study,
    rows: list[TrialRow],
    pareto: list[TrialRow],
    best: TrialRow | None,
    objectives: list[Objective],
    params: list[str],
    space_path: str | os.PathLike,
) -> str:
    """report.html: one file, images inline, no scripts, so it can be mailed or attached to a run."""
    esc = html.escape
    complete = sum(1 for r in rows if r.values is not None)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>mergebench search</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;"
        "text-align:right}td.l,th.l{text-align:left}tr.best{background:#fff3d6}pre{background:#f6f6f6;"
        "padding:1em;overflow:auto}img{max-width:100%}</style></head><body>",
        f"<h1>mergebench search: {esc(str(space_path))}</h1>",
        f"<p>{len(rows)} trials: {complete} completed, {len(rows) - complete} failed. Objectives: "
        + ", ".join(f"{esc(o.name)} ({o.direction})" for o in objectives)
        + f". Sampler: {esc(type(study.sampler).__name__)}.</p>",
    ]
    if best is not None:
        scores = ", ".join(
            f"{esc(o.name)} = {v:.6g}" for o, v in zip(objectives, best.values or [], strict=False)
        )
        parts.append(f"<h2>Best: trial {best.number}</h2><p>{scores}</p>")
        parts.append(f"<pre>{esc(yaml.safe_dump(best.config, sort_keys=False))}</pre>")
        if len(objectives) > 1:
            parts.append(
                f"<p>{len(pareto)} Pareto-optimal trials (pareto/trial-N.yaml); best.yaml is the one with the "
                "best mean of the objectives (min-max normalised unless all are accuracies).</p>"
            )
    parts.append("<h2>Optimisation history</h2>")
    parts.append(f"<img alt='history' src='{plot_history(rows, objectives)}'>")
    pareto_png = plot_pareto(rows, objectives, best)
    if pareto_png:
        parts.append("<h2>Pareto front</h2>")
        parts.append(f"<img alt='pareto front' src='{pareto_png}'>")
    parts.append("<h2>Parameter importances</h2>")
    importance_png, notes = plot_importances(study, objectives, params)
    if importance_png:
        parts.append(f"<img alt='parameter importances' src='{importance_png}'>")
    parts.append("<p>" + "<br>".join(esc(n) for n in notes) + "</p>")
    parts.append("<h2>Leaderboard</h2><table><tr><th>trial</th><th class='l'>state</th>")
    parts.extend(f"<th>{esc(o.name)} {o.arrow}</th>" for o in objectives)
    parts.extend(f"<th class='l'>{esc(p)}</th>" for p in params)
    parts.append("<th>seconds</th><th class='l'>error</th></tr>")
    for row in rows:
        values = row.values or [None] * len(objectives)
        css = " class='best'" if row.pareto else ""
        cells = [f"<td>{row.number}</td>", f"<td class='l'>{row.state}</td>"]
        cells.extend(f"<td>{_fmt(v)}</td>" for v in values)
        cells.extend(f"<td class='l'>{esc(_fmt(row.params.get(p)))}</td>" for p in params)
        cells.append(f"<td>{'' if row.seconds is None else f'{row.seconds:.1f}'}</td>")
        cells.append(f"<td class='l'>{esc(row.error)}</td>")
        parts.append(f"<tr{css}>{''.join(cells)}</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)
