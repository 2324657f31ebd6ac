"""``mergebench lora {merge,concat,extract}``: a group that ``cli.py`` adds to the main command (which
turns errors into messages and exit codes)."""

from __future__ import annotations

from pathlib import Path

import click

from mergebench.cli_command import Group
from mergebench.cli_device import check_device, device_option, report_gpu_memory
from mergebench.dtypes import STORAGE_CHOICES as DTYPES
from mergebench.dtypes import torch_dtype


def _dtype(name: str | None):
    return torch_dtype(name) if name is not None else None


@click.group("lora", cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def lora_group() -> None:
    """PEFT LoRA adapters: fold into a base, concatenate, extract from a finetune."""


@lora_group.command("merge")
@click.argument("base")
@click.argument("adapters", nargs=-1, required=True)
# --out: an existing file is refused by the output check (exit 5), not by click as a usage error
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output model dir.")
@click.option("--weights", default=None, help="One weight per adapter, comma-separated (default 1 each).")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest output shard.")
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="Output dtype (default: the base's).")
@click.option("--overwrite", is_flag=True, help="Replace an existing non-empty output directory.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickled .bin weights (runs code from the file!).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@device_option("Where the low-rank products are computed and added.")
def merge_command(
    base, adapters, out, weights, max_shard_size, dtype, overwrite, allow_pickle, no_progress, device
):
    """Write BASE with every ADAPTER folded in: W' = W + Σ w_i s_i B_i A_i, streamed tensor by tensor."""
    from mergebench.lora.merge import parse_weights, run_lora_merge

    result = run_lora_merge(
        base,
        list(adapters),
        out,
        weights=parse_weights(weights, len(adapters)),
        max_shard_size=max_shard_size,
        dtype=_dtype(dtype),
        overwrite=overwrite,
        allow_pickle=allow_pickle,
        progress=not no_progress,
        device=check_device(device),
    )
    click.echo(f"merged model written to {result}")
    report_gpu_memory(device)


@lora_group.command("concat")
@click.argument("adapters", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output adapter dir.")
@click.option("--weights", default=None, help="One weight per adapter, comma-separated (default 1 each).")
@click.option(
    "--rank", type=int, default=None, help="Compress each module's summed update to this rank (SVD)."
)
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="Factor dtype (default: the inputs').")
@click.option("--overwrite", is_flag=True, help="Replace an existing non-empty output directory.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickled adapter_model.bin.")
def concat_command(adapters, out, weights, rank, dtype, overwrite, allow_pickle):
    """Write ONE adapter whose update is the weighted sum of the ADAPTERS' updates (ranks concatenated)."""
    from mergebench.lora.concat import run_lora_concat
    from mergebench.lora.merge import parse_weights

    reports = run_lora_concat(
        list(adapters),
        out,
        weights=parse_weights(weights, len(adapters)),
        rank=rank,
        dtype=_dtype(dtype),
        overwrite=overwrite,
        allow_pickle=allow_pickle,
    )
    if rank is not None:
        for report in reports:
            click.echo(
                f"  {report.path}: rank {report.rank_in} → {report.rank_out}, "
                f"retained energy {report.energy:.6f}"
            )
    total = sum(r.rank_out for r in reports)
    click.echo(f"adapter with {len(reports)} modules (total rank {total}) written to {out}")


@lora_group.command("extract")
@click.option("--base", "base", required=True, help="Base model dir or hub id.")
@click.option("--finetuned", required=True, help="Finetuned model dir or hub id.")
@click.option("--rank", type=int, required=True, help="LoRA rank of each extracted module.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output adapter dir.")
@click.option(
    "--dtype", type=click.Choice(DTYPES), default="float32", show_default=True, help="Factor dtype."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing non-empty output directory.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickled .bin weights.")
@device_option("Where the differences are factorized (SVD).")
def extract_command(base, finetuned, rank, out, dtype, overwrite, allow_pickle, device):
    """Write a PEFT adapter approximating FINETUNED − BASE by truncated SVD per weight matrix."""
    from mergebench.lora.extract import run_lora_extract

    report = run_lora_extract(
        base,
        finetuned,
        rank,
        out,
        dtype=_dtype(dtype),
        overwrite=overwrite,
        allow_pickle=allow_pickle,
        log=click.echo,
        device=check_device(device),
    )
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(
        f"adapter with {len(report.modules)} LoRA modules and {len(report.saved)} saved modules written to {out}"
    )
    report_gpu_memory(device)
