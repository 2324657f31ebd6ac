"""What every subcommand shares: the one place where errors become messages and exit codes."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable

import click

from mergebench.errors import ConfigError, MergebenchError


def friendly_errors(command: Callable) -> Callable:
    """Turn user errors into ``error: …`` lines on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        # A terminated merge unwinds like Ctrl-C, so its temporary output is removed.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            return command(*args, **kwargs)
        except MergebenchError as exc:
            for line in str(exc).splitlines() or [type(exc).__name__]:
                click.echo(f"error: {line}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted; nothing was written", err=True)
            sys.exit(130)

    return wrapper


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def check_device(device: str) -> str:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available (use --device cpu)")
    return device
