"""What differs between model families: where the layer index sits in a tensor name, and which
config key holds the layer count. The one place that knows about architectures."""

from __future__ import annotations

import re

# "model.layers.12.self_attn...", "transformer.h.3.attn...", "encoder.layer.0...", "gpt_neox.layers.5..."
LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block)\.(\d+)\.")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def layer_index(tensor_name: str) -> int | None:
    """The transformer block a tensor belongs to, or None for embeddings, final norm, lm_head."""
    match = LAYER_PATTERN.search(tensor_name)
    return int(match.group(1)) if match else None


def layer_count(config: dict | None, tensor_names) -> int:
    """Number of blocks: from config.json when it says, else one past the highest index seen."""
    for key in LAYER_COUNT_KEYS:
        value = (config or {}).get(key)
        if isinstance(value, int) and value > 0:
            return value
    indices = [i for i in map(layer_index, tensor_names) if i is not None]
    return max(indices) + 1 if indices else 0
