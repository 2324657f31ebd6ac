"""``mergebench analyze``: the command around ``mergebench.analyze`` (numbers, JSON) and
``mergebench.report_html`` (the page).

torch and matplotlib are imported inside the command, so ``mergebench --help`` and every other
subcommand start without paying for them.
"""

from __future__ import annotations

from pathlib import Path

import click

from mergebench.cli_command import Command
from mergebench.errors import ConfigError, MergebenchError, OutputError

DEFAULT_DENSITIES = "0.05,0.1,0.2,0.3,0.5,0.7,0.9"  # as mergebench.analyze.DEFAULT_DENSITIES (no torch here)


def parse_densities(text: str) -> list[float]:
    """``"0.1,0.2"`` → [0.1, 0.2]; ranges are checked by ``analyze.check_densities``."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise ConfigError(f"--densities: {part!r} is not a number (expected e.g. 0.1,0.2,0.5)") from None
    if not values:
        raise ConfigError("--densities: give at least one density (e.g. 0.1,0.2,0.5)")
    return values


def prepare_out_dir(out: Path) -> None:
    """Create the output directory (reports inside it are replaced: they are derived, not models)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot create the directory ({exc.strerror or exc})") from None


@click.command(name="analyze", cls=Command)
@click.argument("models", nargs=-1, metavar="MODEL...")
@click.option("--base", default=None, metavar="MODEL", help="Base model: analyze task vectors θ_i − θ_base.")
@click.option(
    "--out",
    "out",
    default="analysis",
    show_default=True,
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Where analysis.json and report.html are written.",
)
@click.option(
    "--densities",
    default=DEFAULT_DENSITIES,
    show_default=True,
    metavar="D,D,...",
    help="Trim densities at which to measure the energy each task vector keeps.",
)
@click.option("--allow-pickle", is_flag=True, help="Allow pickled .bin weights (runs code from the file!).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def analyze_command(models, base, out, densities, allow_pickle, no_progress):
    """See what a merge will do: task-vector norms, cosines, sign conflicts, energy kept by trimming
    and SLERP angles, per tensor, layer and module type, streamed one tensor at a time.

    Writes DIR/analysis.json and a self-contained DIR/report.html, and prints a summary.
    """
    from mergebench.analyze import analyze, check_densities, format_summary, write_analysis

    try:  # before the long part: a missing plotting library must not cost a pass over the models
        from mergebench.report_html import write_report
    except ImportError as exc:
        raise MergebenchError(
            f"analyze: the report needs matplotlib ({exc.name or exc} is not installed); "
            "install it with: pip install 'mergebench[workbench]'"
        ) from None
    parsed = check_densities(parse_densities(densities))
    if not models:
        raise ConfigError("analyze: give at least one MODEL (and --base), or two models to compare")
    if out.exists() and not out.is_dir():  # before the long part: a wrong --out must not cost a run
        raise OutputError(f"--out {out}: exists and is not a directory")
    analysis = analyze(models, base, parsed, allow_pickle=allow_pickle, progress=not no_progress)
    prepare_out_dir(out)
    write_analysis(analysis, out / "analysis.json")
    write_report(analysis, out / "report.html")
    for line in format_summary(analysis):
        click.echo(line)
    click.echo(f"wrote {out / 'analysis.json'} and {out / 'report.html'}")
