"""``mergebench eval``: quick-eval one or more model dirs on JSONL data files (see mergebench.quickeval)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mergebench.errors import EvalError


@click.command(name="eval")
@click.argument("models", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--data",
    "data_files",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help='JSONL file (repeatable): {"prompt","answer"} lines -> exact-match accuracy; {"text"} -> perplexity.',
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cuda", "cpu"]),
    default="auto",
    show_default=True,
    help="auto = cuda (bfloat16) when available, else cpu (float32).",
)
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=str), help="Also write results here."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per batch (default: 32 on cpu, 128 on cuda); halved when a batch runs out of memory.",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Generation limit (default: longest answer's token count + 8).",
)
def eval_command(models, data_files, device, json_out, batch_size, max_new_tokens):
    """Evaluate MODEL dirs (rows) on every --data file (columns) and print a table."""
    results = evaluate_and_print(
        models, list(data_files), device, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    if json_out:
        try:
            Path(json_out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise EvalError(f"{json_out}: cannot write results ({e.strerror})") from None
        click.echo(f"wrote {json_out}")


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
