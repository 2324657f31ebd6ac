"""What an op reads: a stored tensor, or a base tensor with LoRA adapters folded in.

Each input names the stored tensors it needs (``refs``) and how to build its value from them
(``build``), so the executor reads bytes without knowing what an adapter is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mergebench.fold import TensorRecipe, apply_recipe
from mergebench.io.checkpoint import Checkpoint
from mergebench.io.safetensors_header import TensorInfo
from mergebench.mapper import Mapper, in_order


@dataclass(frozen=True)
class TensorRef:
    """One stored tensor: which checkpoint, which name."""

    checkpoint: Checkpoint
    name: str

    @property
    def info(self) -> TensorInfo:
        return self.checkpoint.tensors[self.name]

    @property
    def nbytes(self) -> int:
        return self.info.nbytes

    @property
    def refs(self) -> tuple[TensorRef, ...]:
        return (self,)

    def read(self, buffer: torch.Tensor | None = None, map: Mapper = in_order) -> torch.Tensor:
        return self.checkpoint.read(self.name, buffer, map)

    def build(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return tensors[0]


@dataclass(frozen=True)
class LoraFold:
    """A base tensor with adapters' updates folded in: W + Σ w_i ΔW_i, in the base's dtype (see ``fold``).

    It has the base tensor's name, shape and dtype, so planning treats it like the stored tensor.
    """

    base: TensorRef
    recipe: TensorRecipe
    factors: tuple[TensorRef, ...]  # the adapter tensors ``recipe.inputs`` lists, in that order

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def info(self) -> TensorInfo:
        return self.base.info

    @property
    def nbytes(self) -> int:
        return self.base.nbytes

    @property
    def refs(self) -> tuple[TensorRef, ...]:
        return (self.base, *self.factors)

    def build(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return apply_recipe(self.recipe, tensors[0], tensors[1:])


Input = TensorRef | LoraFold
