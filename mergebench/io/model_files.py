"""The non-tensor files of an output model: config.json, generation config, tokenizer, model card."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from mergebench import __version__
from mergebench.io.checkpoint import Checkpoint


def write_config(
    directory: Path, reference: Checkpoint, dtype: torch.dtype | None, updates: dict | None = None
) -> None:
    """config.json of the reference model, with the dtype (and e.g. layer count) updated."""
    if reference.config is None:
        return
    config = dict(reference.config)
    if dtype is not None:
        config["torch_dtype"] = str(dtype).removeprefix("torch.")  # torch.bfloat16 → "bfloat16"
        if "dtype" in config:
            config["dtype"] = config["torch_dtype"]
    config.update(updates or {})
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def copy_side_files(directory: Path, reference: Checkpoint, tokenizer_source: Checkpoint) -> None:
    """Generation config from the reference model, tokenizer files from the tokenizer source."""
    generation = reference.path / "generation_config.json"
    if generation.is_file():
        shutil.copyfile(generation, directory / "generation_config.json")
    for path in tokenizer_source.tokenizer_files():
        shutil.copyfile(path, directory / path.name)


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
    (directory / "README.md").write_text("\n".join(front + body))
