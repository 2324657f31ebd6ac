"""``base+adapter`` model strings (mergekit syntax): the adapter-applied model as a merge input.

``AdaptedCheckpoint`` has exactly the base's headers; ``read(name)`` reads the base tensor and, when
the adapter touches it, applies the update on the spot (W + ΔW, rounded once to the base's dtype, i.e.
exactly what ``lora merge`` would have written). No cache directory, nothing materialised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mergebench.errors import AdapterError
from mergebench.io.checkpoint import Checkpoint, open_checkpoint
from mergebench.lora.adapter import Adapter, open_adapter
from mergebench.lora.bind import TensorRecipe, apply_recipe, bind_adapters


@dataclass
class AdaptedCheckpoint(Checkpoint):
    """A base checkpoint seen through one LoRA adapter, tensor by tensor."""

    base: Checkpoint | None = None
    adapter: Adapter | None = None
    recipes: dict[str, TensorRecipe] = field(default_factory=dict, repr=False)

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        assert self.base is not None and self.adapter is not None
        tensor = self.base.read(name, buffer)
        recipe = self.recipes.get(name)
        if recipe is None:
            return tensor
        inputs = [self.adapter.read(key) for _, key in recipe.inputs]
        return apply_recipe(recipe, tensor, inputs)


def split_spec(spec: str) -> tuple[str, str] | None:
    """``"base+adapter"`` → (base, adapter); None for a plain model string (or an existing path with '+')."""
    if "+" not in spec or Path(spec).exists():
        return None
    cuts = [i for i, char in enumerate(spec) if char == "+"]
    for cut in cuts:  # prefer a cut whose left side is an existing directory
        if Path(spec[:cut]).exists():
            return spec[:cut], spec[cut + 1 :]
    return spec[: cuts[0]], spec[cuts[0] + 1 :]


def open_adapted(spec: str, *, allow_pickle: bool = False) -> Checkpoint:
    """Open ``base+adapter`` from headers only, validating the adapter against the base up front."""
    parts = split_spec(spec)
    if parts is None:
        return open_checkpoint(spec, allow_pickle=allow_pickle)
    base_spec, adapter_spec = parts
    if not base_spec or not adapter_spec:
        raise AdapterError(f"{spec}: expected 'base+adapter'")
    base = open_checkpoint(base_spec, allow_pickle=allow_pickle)
    adapter = open_adapter(adapter_spec, allow_pickle=allow_pickle)
    recipes = bind_adapters(base, [adapter])
    return AdaptedCheckpoint(
        spec, base.path, base.tensors, base.config, base=base, adapter=adapter, recipes=recipes
    )


def open_model(spec: str, *, allow_pickle: bool = False) -> Checkpoint:
    """A model string of a merge config: a directory / hub id, or ``base+adapter``."""
    if split_spec(spec) is None:
        return open_checkpoint(spec, allow_pickle=allow_pickle)
    return open_adapted(spec, allow_pickle=allow_pickle)
