"""The click command class of every subcommand: torch is imported once, with Python's cyclic garbage
collector paused, and what it created is then frozen out of the collector's way.

Every command needs torch, which brings ~165K long-lived objects. Collected while they arrive they
cost ~0.15 s of collections; left in the collector's generations, each later full collection, and
the ones at interpreter exit, walks them all again. Frozen (``gc.freeze``), they are skipped: on a
2-core VM a 3-model model_stock merge of 0.85B models went from 4.93 to 4.35 s (median of 5
alternated runs). The import runs after the command line is parsed, so ``--help`` and usage errors
stay instant; every command imports torch anyway, so the import itself costs nothing extra (the rest
of mergebench, ~7K more objects, is left to the commands that need it).
"""

from __future__ import annotations

import gc
import importlib

import click

_FROZEN = False


def import_frozen() -> None:
    """Import torch with the collector paused, then freeze every object alive.
    Once per process: a second command run in the same process (tests) finds them imported."""
    global _FROZEN
    if _FROZEN:
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        importlib.import_module("torch")
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    _FROZEN = True


class Command(click.Command):
    """A subcommand that calls :func:`import_frozen` before its body runs."""

    def invoke(self, ctx: click.Context):
        import_frozen()
        return super().invoke(ctx)


class Group(click.Group):
    """A group whose ``@group.command()`` subcommands are :class:`Command`."""

    command_class = Command
