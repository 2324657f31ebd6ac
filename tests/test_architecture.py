"""Family detection and checkpoint layouts (mergebench.architecture), from names and configs alone."""

from __future__ import annotations

import pytest

from mergebench.architecture import (
    describe_model,
    detect_family,
    layer_config_updates,
    layer_count,
    layer_index,
)
from mergebench.errors import PlanError


def llama_names(n=2, prefix="model.", head=True):
    names = [f"{prefix}embed_tokens.weight"]
    for i in range(n):
        names += [f"{prefix}layers.{i}.self_attn.q_proj.weight", f"{prefix}layers.{i}.mlp.up_proj.weight"]
    names += [f"{prefix}norm.weight"] + (["lm_head.weight"] if head else [])
    return names


GPT2 = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight"]
GPT2 += ["transformer.h.1.attn.c_attn.weight", "transformer.ln_f.weight"]
NEOX = ["gpt_neox.embed_in.weight", "gpt_neox.layers.0.attention.dense.weight"]
NEOX += ["gpt_neox.final_layer_norm.weight", "embed_out.weight"]
BERT = ["embeddings.word_embeddings.weight", "encoder.layer.0.output.dense.weight", "pooler.dense.weight"]


@pytest.mark.parametrize(
    ("config", "names", "family", "kind"),
    [
        ({"model_type": "mistral"}, llama_names(), "llama", "mistral"),
        ({"model_type": "qwen2"}, llama_names(), "llama", "qwen2"),
        ({"model_type": "gemma2"}, llama_names(head=False), "llama", "gemma2"),
        ({"model_type": "phi3"}, llama_names(), "llama", "phi3"),
        ({"architectures": ["Qwen2ForCausalLM"]}, llama_names(), "llama", "qwen2"),
        ({"architectures": ["GPT2LMHeadModel"]}, GPT2, "gpt2", "gpt2"),
        (None, GPT2, "gpt2", "gpt2"),
        (None, NEOX, "gpt_neox", "gpt_neox"),
        (None, BERT, "bert", "bert"),
        (None, llama_names(), "llama", "llama"),
    ],
)
def test_detect_family(config, names, family, kind):
    found, found_kind = detect_family("m", config, names)
    assert (found.name, found_kind) == (family, kind)


def test_layouts_split_before_layers_after():
    layout = describe_model("m", {"model_type": "gpt2", "n_layer": 2}, GPT2)
    assert layout.prefix == "transformer.h." and layout.num_layers == 2 and layout.tied
    assert layout.before == ("transformer.wte.weight", "transformer.wpe.weight")
    assert layout.after == ("transformer.ln_f.weight",)
    assert layout.layers[1] == ("attn.c_attn.weight",)
    bert = describe_model("m", {"model_type": "bert", "num_hidden_layers": 1}, BERT)
    assert bert.prefix == "encoder.layer." and bert.after == ("pooler.dense.weight",)
    base_model = describe_model("m", {"model_type": "llama"}, llama_names(prefix="", head=False))
    assert base_model.prefix == "layers." and not base_model.tied


@pytest.mark.parametrize(
    ("config", "names", "fragments"),
    [
        (
            {"model_type": "t5", "architectures": ["T5Model"]},
            ["encoder.block.0.x"],
            ["'t5'", "T5Model", "supported"],
        ),
        (
            {"architectures": ["MambaForCausalLM"]},
            ["backbone.layers.0.x"],
            ["MambaForCausalLM", "not supported"],
        ),
        (
            None,
            ["encoder.block.0.layer.0.SelfAttention.q.weight"],
            ["cannot tell the architecture", "encoder.block"],
        ),
        (
            {"model_type": "llama"},
            [*llama_names(), "model.vision_tower.patch.weight"],
            ["vision_tower", "llama"],
        ),
        ({"model_type": "llama"}, [*llama_names(), "vision.layers.0.x"], ["two places"]),
        (
            {"model_type": "llama", "num_hidden_layers": 3},
            llama_names(2),
            ["num_hidden_layers = 3", "2 layers"],
        ),
        ({"model_type": "llama"}, [n for n in llama_names(3) if ".1." not in n], ["layer 1 has no tensors"]),
        ({"model_type": "gpt2"}, llama_names(), ["neither in a layer (h.N)", "gpt2"]),
    ],
)
def test_unsupported_layouts_are_named(config, names, fragments):
    with pytest.raises(PlanError) as info:
        describe_model("./m", config, names)
    message = str(info.value)
    assert "\n" not in message and message.startswith("./m: ")
    for fragment in fragments:
        assert fragment in message


def test_config_updates_rebuild_per_layer_lists():
    layout = describe_model("a", {"model_type": "gpt2"}, GPT2)
    a = {"n_layer": 2, "layer_types": ["x0", "x1"]}
    b = {"n_layer": 3, "layer_types": ["y0", "y1", "y2"]}
    plan = [(a, "a", 1), (b, "b", 0), (b, "b", 2)]
    assert layer_config_updates(layout.family, a, plan) == {"n_layer": 3, "layer_types": ["x1", "y0", "y2"]}
    assert layer_config_updates(layout.family, {"n_layer": 2}, plan) == {"n_layer": 3}
    with pytest.raises(PlanError, match="b: config.json has no per-layer list 'layer_types'"):
        layer_config_updates(layout.family, a, [(a, "a", 0), ({"n_layer": 3}, "b", 1)])


def test_models_form_helpers_unchanged():
    assert layer_index("model.layers.12.mlp.experts.3.w1.weight") == 12
    assert layer_index("transformer.h.3.attn.c_attn.weight") == 3
    assert layer_index("model.embed_tokens.weight") is None
    assert layer_count({"n_layer": 5}, []) == 5
    assert layer_count(None, llama_names(4)) == 4
