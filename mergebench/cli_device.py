"""``--device`` for the commands that compute tensors (merge, lora merge, lora extract): one option, one
check that a CUDA device is there before any work, one report of the GPU memory used."""

from __future__ import annotations

import click

from mergebench.errors import ConfigError


def device_option(help_text: str = "Where the arithmetic runs."):
    return click.option(
        "--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help=help_text
    )


def check_device(device: str) -> str:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available (use --device cpu)")
    return device


def report_gpu_memory(device: str) -> None:
    """Peak GPU memory, on stderr: it should be a few tensors' worth, never the model."""
    if device == "cuda":
        import torch

        click.echo(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 1e9:.2f} GB", err=True)
