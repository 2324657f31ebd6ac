"""One error type per kind of mistake; ``cli.py`` alone turns them into a one-line message and exit code."""

from __future__ import annotations


class MergebenchError(Exception):
    """Base of every error a user can cause; the message is shown as-is, on one line."""

    exit_code = 1


class ConfigError(MergebenchError):
    """The merge config (YAML or CLI flags) is invalid; the message names the key's path."""

    exit_code = 2


class CheckpointError(MergebenchError):
    """A model directory, hub id, shard or index is missing, unsafe or corrupt; names the file."""

    exit_code = 3


class PlanError(MergebenchError):
    """Inputs disagree (missing tensor, shape or dtype mismatch); names the tensor and model."""

    exit_code = 4


class OutputError(MergebenchError):
    """The output location is unusable (exists, inside an input, not writable)."""

    exit_code = 5


class EvalError(MergebenchError):
    """Quick-eval input is unusable (bad JSONL line, model without tokenizer, empty file)."""

    exit_code = 6


class AdapterError(MergebenchError):
    """A LoRA adapter is missing, unsafe, or does not match its base model; names the module."""

    exit_code = 7
