"""``mergebench search``: the click command over ``mergebench.search`` (imported when the command runs, so
that ``mergebench --help`` and every other subcommand stay free of Optuna, Ray and torch)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mergebench.cli_command import Command

INTERRUPTED_EXIT_CODE = 130  # as the group's own Ctrl-C exit (cli.py), which this module cannot import


@click.command(name="search", cls=Command)
@click.argument("space", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--eval",
    "eval_files",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help='JSONL eval file (repeatable): {"prompt","answer"} lines → accuracy, {"text"} → perplexity.',
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    required=True,
    help="Trials in the study (a resumed study runs the missing ones).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory: study.db, leaderboard.csv, best.yaml, pareto/, report.html (default: ./SPACE-search, after SPACE's file name).",
)
@click.option("--address", default=None, help="Ray cluster address (default: start a local Ray instance).")
@click.option(
    "--gpus-per-trial",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="GPUs Ray reserves per trial (fractions share a GPU).",
)
@click.option(
    "--cpus-per-trial",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="CPUs Ray reserves per trial.",
)
@click.option(
    "--objective",
    default=None,
    help="Comma list of accuracy:<stem>, perplexity:<stem>, mean-accuracy (default: mean-accuracy when "
    "every file has prompt/answer lines, else one objective per file → Pareto front).",
)
@click.option("--sampler", type=click.Choice(["tpe", "cmaes", "random"]), default="tpe", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampler seed.")
@click.option("--resume", is_flag=True, help="Continue the study in OUT (new trials until it has --trials).")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where trials merge and evaluate; auto = cuda when --gpus-per-trial > 0, else cpu.",
)
def search_command(
    space,
    eval_files,
    trials,
    out_dir,
    address,
    gpus_per_trial,
    cpus_per_trial,
    objective,
    sampler,
    seed,
    resume,
    device,
):
    """Search SPACE (a merge config whose values may be ranges: {min, max[, log, step]} or {choices})
    for the recipe that scores best on the --eval files; each trial merges and evaluates on Ray."""
    from mergebench.search import SearchOptions, search

    out = out_dir if out_dir is not None else Path(f"{space.stem}-search")
    options = SearchOptions(
        trials=trials,
        address=address,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        objective=objective,
        sampler=sampler,
        seed=seed,
        resume=resume,
        device=device,
        log=lambda line: click.echo(line, err=True),
    )
    try:
        result = search(space, eval_files, out, options)
    except KeyboardInterrupt:
        click.echo(
            f"error: interrupted; finished trials are kept in {out} (continue with --resume)", err=True
        )
        sys.exit(INTERRUPTED_EXIT_CODE)
    click.echo(result.table)
    best = result.best
    if best is not None:
        scores = ", ".join(
            f"{o.name}={v:.4g}" for o, v in zip(result.objectives, best.values or [], strict=False)
        )
        click.echo(f"best: trial {best.number} ({scores}) → {result.best_yaml}")
    if len(result.objectives) > 1:
        click.echo(f"pareto front: {len(result.pareto)} trial(s) in {out / 'pareto'}")
    click.echo(f"report: {out / 'report.html'}")
