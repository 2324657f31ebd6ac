"""LoRA folding: the one place where PEFT module paths become base tensor names, and W + ΔW is computed.

``bind_adapters`` checks every module of every adapter against the base's headers (tensor exists, is a
float matrix of the right shape, bias/magnitude shapes) before anything is read or written, and
returns one ``TensorRecipe`` per base tensor that an adapter changes. ``apply_recipe`` then computes
that tensor from the base tensor and the few adapter tensors it needs.

Several adapters with weights w_i combine as task vectors, each taken against the base:
    W' = W + Σ_i w_i · (adapted_i(W) − W)
which for plain LoRA is W + Σ w_i s_i B_i A_i (what PEFT's sequential merge gives for w_i = 1). For
DoRA, adapted_i(W) = m_i ⊙ V_i / ‖V_i‖ (row norms, V_i = W + s_i B_i A_i) is computed against the base
alone, so the result does not depend on the adapters' order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from mergebench.architecture import WRAPPER_PREFIXES
from mergebench.errors import AdapterError
from mergebench.io.adapter import Adapter, LoraModule
from mergebench.io.checkpoint import Checkpoint
from mergebench.io.safetensors_header import TensorInfo

MAX_REPORTED = 3
BLOCK_ELEMENTS = 1 << 18  # rows of a big matrix are updated in float32 blocks of ~1 MB (cache-sized)


@dataclass(frozen=True)
class Contribution:
    """What one adapter does to one base tensor: replace it, add a low-rank update, or both."""

    adapter: int  # index into the adapter list
    weight: float
    module: LoraModule | None = None
    transposed: bool = False  # the base tensor is the canonical out × in update transposed
    replacement: str | None = None  # adapter key of a full tensor that replaces the base's
    bias: bool = False  # this base tensor is the module's bias (lora_B.bias adds to it)

    @property
    def keys(self) -> list[str]:
        """Adapter tensors this contribution reads, in a fixed order."""
        keys = [self.replacement] if self.replacement else []
        if self.module is not None:
            if self.bias:
                keys.append(self.module.bias_key)  # type: ignore[arg-type]
            else:
                keys += [self.module.a_key, self.module.b_key]
                if self.module.magnitude_key:
                    keys.append(self.module.magnitude_key)
        return keys

    @property
    def simple(self) -> bool:
        """A plain weighted low-rank add (the fast, blocked path)."""
        return self.replacement is None and self.module is not None and not self.bias and not self.module.dora


@dataclass
class TensorRecipe:
    """All contributions to one base tensor, and the adapter tensors to read for it."""

    name: str
    contributions: list[Contribution] = field(default_factory=list)

    @property
    def inputs(self) -> list[tuple[int, str]]:
        return [(c.adapter, key) for c in self.contributions for key in c.keys]


def resolve_name(name: str, base_names: Mapping[str, object]) -> str | None:
    """A PEFT parameter name (``model.layers.0.q_proj.weight``) → the base checkpoint's tensor name.

    Exact match first; then without the model-class prefix (e.g. GPT-2 hub checkpoints store ``h.0…``
    while PEFT says ``transformer.h.0…``); then with a prefix the base uses added.
    """
    if name in base_names:
        return name
    _, _, rest = name.partition(".")
    if rest and rest in base_names:
        return rest
    for prefix in WRAPPER_PREFIXES:
        if f"{prefix}.{name}" in base_names:
            return f"{prefix}.{name}"
    return None


def _orientation(module: LoraModule, info: TensorInfo) -> bool | None:
    """Whether the base tensor is the canonical update transposed; None when its shape fits neither way."""
    canonical = (module.out_features, module.in_features)
    plain, flipped = info.shape == canonical, info.shape == canonical[::-1]
    if module.embedding:
        return True if flipped else None
    if plain and flipped:  # square: only the config can tell (PEFT flips the flag by module type)
        return module.fan_in_fan_out
    if plain or flipped:
        return flipped
    return None


def bind_adapters(
    base: Checkpoint, adapters: Sequence[Adapter], weights: Sequence[float] | None = None
) -> dict[str, TensorRecipe]:
    """Validate every adapter against ``base``'s headers; base tensor name → recipe, in base order."""
    weights = list(weights) if weights is not None else [1.0] * len(adapters)
    if len(weights) != len(adapters):
        raise AdapterError(f"{len(weights)} weights given for {len(adapters)} adapters")
    tensors = base.tensors
    recipes: dict[str, TensorRecipe] = {}
    for index, (adapter, weight) in enumerate(zip(adapters, weights, strict=True)):
        problems: list[str] = []
        found: dict[str, Contribution] = {}

        def add(name: str, contribution: Contribution, found=found) -> None:
            previous = found.get(name)
            if previous is not None:  # a replaced embedding that also carries LoRA factors
                contribution = Contribution(
                    contribution.adapter,
                    contribution.weight,
                    module=previous.module or contribution.module,
                    transposed=previous.transposed or contribution.transposed,
                    replacement=previous.replacement or contribution.replacement,
                    bias=previous.bias or contribution.bias,
                )
            found[name] = contribution

        for param, key in adapter.replacements.items():
            name = resolve_name(param, tensors)
            if name is None:
                problems.append(f"saved tensor {param!r} has no counterpart in the base")
                continue
            have, want = adapter.weights.tensors[key].shape, tensors[name].shape
            if have != want:
                problems.append(f"saved tensor {param!r} has shape {list(have)}, the base's {list(want)}")
                continue
            add(name, Contribution(index, weight, replacement=key))
        for path, module in adapter.modules.items():
            name = resolve_name(f"{path}.weight", tensors)
            if name is None:
                problems.append(f"module {path!r} is not in the base (no tensor {path}.weight)")
                continue
            info = tensors[name]
            if len(info.shape) != 2 or not info.dtype.is_floating_point:
                problems.append(f"module {path!r}: base tensor {name} is {list(info.shape)} {info.dtype}")
                continue
            transposed = _orientation(module, info)
            if transposed is None:
                problems.append(
                    f"module {path!r}: update is {module.out_features}×{module.in_features} "
                    f"but base tensor {name} is {list(info.shape)}"
                )
                continue
            if module.magnitude_key is not None:
                shape = adapter.weights.tensors[module.magnitude_key].shape
                if shape != (module.out_features,):
                    problems.append(f"module {path!r}: DoRA magnitude has shape {list(shape)}")
                    continue
            add(name, Contribution(index, weight, module=module, transposed=transposed))
            if module.bias_key is not None:
                bias_name = resolve_name(f"{path}.bias", tensors)
                if bias_name is None:
                    problems.append(f"module {path!r} has lora_bias but the base layer has no bias")
                    continue
                shape = adapter.weights.tensors[module.bias_key].shape
                if tensors[bias_name].shape != shape or shape != (module.out_features,):
                    problems.append(f"module {path!r}: lora_B.bias {list(shape)} vs base {bias_name}")
                    continue
                add(bias_name, Contribution(index, weight, module=module, bias=True))
        if problems:
            more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
            raise AdapterError(
                f"adapter {adapter.spec} does not fit base {base.spec}: "
                + "; ".join(problems[:MAX_REPORTED])
                + more
            )
        for name, contribution in found.items():
            recipes.setdefault(name, TensorRecipe(name)).contributions.append(contribution)
    order = {name: i for i, name in enumerate(tensors)}
    return dict(sorted(recipes.items(), key=lambda item: order[item[0]]))


def _f32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.float32)


def apply_recipe(recipe: TensorRecipe, base: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The adapted tensor, in ``base``'s dtype, computed in float32 and rounded once.

    ``inputs`` are the adapter tensors listed by ``recipe.inputs``, in that order. ``base`` is
    updated in place when possible (callers pass a fresh tensor they own).
    """
    values = iter(inputs)
    per_contribution = [[next(values) for _ in c.keys] for c in recipe.contributions]
    if all(c.simple for c in recipe.contributions):
        return _add_low_rank(base, recipe.contributions, per_contribution)
    return _apply_general(base, recipe.contributions, per_contribution)


def _factors(contributions, tensors, transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with L @ R = Σ w s ΔW of the contributions of one orientation, in the base's layout."""
    bs, as_ = [], []
    for c, (a, b) in zip(contributions, tensors, strict=True):
        as_.append(_f32(a))
        bs.append(_f32(b) * (c.weight * c.module.scale))
    a_cat = as_[0] if len(as_) == 1 else torch.cat(as_, dim=0)  # k × in
    b_cat = bs[0] if len(bs) == 1 else torch.cat(bs, dim=1)  # out × k
    return (a_cat.T, b_cat.T) if transposed else (b_cat, a_cat)


def _add_low_rank(base: torch.Tensor, contributions, tensors) -> torch.Tensor:
    """W + Σ L·R, in row blocks: each block is widened to float32 once, updated, and rounded once."""
    groups = []
    for transposed in (False, True):
        chosen = [(c, t) for c, t in zip(contributions, tensors, strict=True) if c.transposed == transposed]
        if chosen:
            groups.append(_factors([c for c, _ in chosen], [t for _, t in chosen], transposed))
    if base.dtype == torch.float32 or base.dtype == torch.float64:
        for left, right in groups:
            base.addmm_(left.to(base.dtype), right.to(base.dtype))
        return base
    rows, cols = base.shape
    step = max(1, BLOCK_ELEMENTS // max(cols, 1))
    scratch = torch.empty((min(step, rows), cols), dtype=torch.float32, device=base.device)
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        chunk = scratch[: stop - start]
        chunk.copy_(base[start:stop])
        for left, right in groups:
            chunk.addmm_(left[start:stop], right)
        base[start:stop].copy_(chunk)
    return base


def _apply_general(base: torch.Tensor, contributions, tensors) -> torch.Tensor:
    """Replacements, DoRA and bias updates: each adapter's adapted tensor against the base, weighted."""
    original = _f32(base)
    result = original.clone()
    for c, values in zip(contributions, tensors, strict=True):
        values = list(values)
        adapted = _f32(values.pop(0)) if c.replacement else original
        if c.module is not None and c.bias:
            adapted = adapted + c.module.scale * _f32(values[0])
        elif c.module is not None:
            a, b = _f32(values[0]), _f32(values[1])
            canonical = adapted.T if c.transposed else adapted
            merged = torch.addmm(canonical, b, a, alpha=c.module.scale)
            if c.module.dora:
                magnitude = _f32(values[2])
                norm = torch.linalg.norm(merged, dim=1)
                merged = merged * (magnitude / norm).unsqueeze(1)
            adapted = merged.T if c.transposed else merged
        if len(contributions) == 1 and c.weight == 1:
            return adapted.to(base.dtype)  # exactly the adapted tensor, as PEFT's merge gives it
        result.add_(adapted - original, alpha=c.weight)
    return result.to(base.dtype)
