"""``mergebench eval``: quick-eval one or more model dirs on JSONL data files (see mergebench.quickeval)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import click

from mergebench.cli_command import Command
from mergebench.errors import EvalError


@click.command(name="eval", cls=Command)
# Paths and numbers are plain here and checked below (or by quickeval): click would report a bad one as a
# usage error of its own, not as the one `error:` line and exit code 6 of every other eval problem.
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--data",
    "data_files",
    multiple=True,
    required=True,
    help='JSONL file (repeatable): {"prompt","answer"} lines -> exact-match accuracy; {"text"} -> perplexity.',
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cuda", "cpu"]),
    default="auto",
    show_default=True,
    help="auto = cuda (bfloat16) when available, else cpu (float32).",
)
@click.option("--json", "json_out", default=None, help="Also write results here.")
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Rows per batch (default: 32 on cpu, 128 on cuda); halved when a batch runs out of memory.",
)
@click.option(
    "--max-new-tokens",
    type=int,
    default=None,
    help="Generation limit (default: longest answer's token count + 8).",
)
def eval_command(models, data_files, device, json_out, batch_size, max_new_tokens):
    """Evaluate MODEL dirs (rows) on every --data file (columns) and print a table."""
    for flag, value in (("--batch-size", batch_size), ("--max-new-tokens", max_new_tokens)):
        if value is not None and value < 1:
            raise EvalError(f"{flag}: must be at least 1, got {value}")
    if json_out:  # before evaluating: a bad target must not cost the whole evaluation
        target = Path(json_out)
        if target.is_dir() or not target.parent.is_dir():
            what = "is a directory" if target.is_dir() else "its parent is not a directory"
            raise EvalError(f"{json_out}: cannot write results ({what})")
    results = evaluate_and_print(
        models, list(data_files), device, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    if json_out:
        _write_json(Path(json_out), results)
        click.echo(f"wrote {json_out}")


def _write_json(target: Path, results: dict) -> None:
    """Write beside the target and rename: a failed write (a full disk) leaves no partial file."""
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        temp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        os.replace(temp, target)
    except OSError as e:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise EvalError(f"{target}: cannot write results ({e.strerror})") from None


def evaluate_and_print(models, data_files, device, **options) -> dict:
    """Evaluate, print the table and a line saying where it ran and how long it took; return results."""
    import time

    from mergebench.dtypes import dtype_name
    from mergebench.quickeval import evaluate_models, format_table, resolve_device

    torch_device, dtype = resolve_device(device)
    start = time.perf_counter()
    results = evaluate_models(models, data_files, device, **options)
    seconds = time.perf_counter() - start
    click.echo(format_table(results))
    click.echo(
        f"evaluated {len(results)} model(s) x {len(data_files)} file(s) on {torch_device.type} "
        f"({dtype_name(dtype)}) in {seconds:.1f} s",
        err=True,
    )
    return results
