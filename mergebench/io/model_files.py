"""The non-tensor files of a model: which ones travel with it, and writing config.json and the card.

The one table of side files: what the hub download fetches besides weights, which files make a
tokenizer, and which are copied into an output model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mergebench.dtypes import dtype_name
from mergebench.io.checkpoint import check_within_model
from mergebench.io.writer import copy_file, write_file
from mergebench.version import __version__

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
# Any one of these makes a directory loadable with AutoTokenizer.
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# Fetched from the hub for a model or adapter: weights in safetensors form, configs and tokenizer only.
HUB_ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


def tokenizer_files(directory: Path) -> list[Path]:
    return [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]


def has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_MARKERS)


def write_config(
    directory: Path, config: dict | None, dtype: torch.dtype | None, updates: dict | None = None
) -> None:
    """config.json of the reference model, with the dtype (and e.g. layer count) updated."""
    if config is None:
        return
    config = dict(config)
    if dtype is not None:
        config["torch_dtype"] = dtype_name(dtype)  # torch.bfloat16 → "bfloat16"
        if "dtype" in config:
            config["dtype"] = config["torch_dtype"]
    config.update(updates or {})
    write_file(directory / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")


def side_files(reference_dir: Path, tokenizer_dir: Path | None) -> list[Path]:
    """The files an output copies from its inputs: generation config from the reference model,
    tokenizer files from the tokenizer source (none when ``tokenizer_dir`` is None: the merge writes a
    tokenizer of its own). Each must lie inside its model (``check_within_model``), and so must the
    reference's config.json, whose contents the output's config.json carries."""
    config, generation = reference_dir / CONFIG_FILE, reference_dir / GENERATION_CONFIG
    if config.is_file():
        check_within_model(config, reference_dir)
    copied = [(generation, reference_dir)] if generation.is_file() else []
    if tokenizer_dir is not None:
        copied += [(path, tokenizer_dir) for path in tokenizer_files(tokenizer_dir)]
    for path, directory in copied:
        check_within_model(path, directory)
    return [path for path, _ in copied]


def copy_side_files(directory: Path, reference_dir: Path, tokenizer_dir: Path | None) -> None:
    """Generation config from the reference model, tokenizer files from the tokenizer source."""
    for path in side_files(reference_dir, tokenizer_dir):
        copy_file(path, directory / path.name)


def write_tokenizer_files(directory: Path, files: dict[str, bytes]) -> None:
    """A merged tokenizer's files (as transformers saved them at plan time: vocab.plan_vocabulary)."""
    for name, data in files.items():
        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"tokenizer file name {name!r} is not a plain file name")
        write_file(directory / name, data)


def write_model_card(
    directory: Path, *, title: str, inputs: Sequence[str], config_text: str, details: str = ""
) -> None:
    """README.md recording exactly how the model was made, so the merge can be reproduced."""
    front = ["---", "library_name: transformers", "tags:", "- merge", "- mergebench"]
    front += ["base_model:", *[f"- {json.dumps(name)}" for name in inputs], "---", ""]
    body = [
        f"# {title}",
        "",
        f"Made with [mergebench](https://pypi.org/project/mergebench/) {__version__}.",
        "",
        "## Inputs",
        "",
        *[f"- `{name}`" for name in inputs],
        "",
    ]
    if details:
        body += [details.rstrip(), ""]
    body += ["## Configuration", "", "```yaml", config_text.rstrip(), "```", ""]
    write_file(directory / "README.md", "\n".join(front + body))
