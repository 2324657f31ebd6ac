"""Frankenmerges (``slices:``): real tiny transformers models, real CLI, independent references.

References are built here by copying layers between state dicts and loading them into a deeper
transformers model, sharing no code with mergebench's planner.
"""

from __future__ import annotations

import copy
import json
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from tests import reference as ref
from tests.conftest import (
    assert_clean_failure,
    finetune_of,
    run_cli,
    save_model,
    tiny_llama_config,
    write_config,
)

ROOT = Path(__file__).resolve().parents[1]
TOKENS = torch.tensor([[1, 5, 9, 17, 33, 2, 40, 41, 7, 3, 60, 11]])


# ---------------------------------------------------------------------------------------------------
# helpers


def output_tensors(directory: Path) -> dict[str, torch.Tensor]:
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    tensors = {}
    for file_name in sorted(set(index["weight_map"].values())):
        with safe_open(str(directory / file_name), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensors[name] = handle.get_tensor(name)
    assert set(tensors) == set(index["weight_map"])
    return tensors


def stacked_reference(cls, config, layer_key, layer_plan, before_sd, after_sd, is_before):
    """A deeper model whose layer k is layer ``layer_plan[k][1]`` of state dict ``layer_plan[k][0]``."""
    model = cls(config).eval()
    pattern = re.compile(rf"^({re.escape(layer_key)})\.(\d+)\.(.+)$")
    state = {}
    for key in model.state_dict():
        match = pattern.match(key)
        if match:
            source, index = layer_plan[int(match[2])]
            state[key] = source[f"{match[1]}.{index}.{match[3]}"]
        else:
            state[key] = (before_sd if is_before(key) else after_sd)[key]
    model.load_state_dict(state, strict=True)
    # Tied heads share the embeddings' storage: the embeddings (from ``before_sd``) must win.
    targets = model.state_dict()
    with torch.no_grad():
        for key in targets:
            if is_before(key):
                targets[key].copy_(before_sd[key])
    return model


def logits_of(model, **extra):
    with torch.no_grad():
        out = model(input_ids=TOKENS, **extra)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def merge_ok(config_path: Path, out: Path, *extra: str):
    result = run_cli("merge", config_path, out, "--no-progress", "--max-shard-size", "20KB", *extra)
    assert result.exit_code == 0, result.output
    return out


def llama(path: Path, *, seed=0, layers=4, **overrides):
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(tiny_llama_config(num_hidden_layers=layers, **overrides)).eval()
    save_model(model, path)
    return model


def load_example(name: str, models: dict[str, Path], tmp_path: Path) -> Path:
    """An example config from merge_configs/ with its demo_models/ paths pointing at tmp models."""
    data = yaml.safe_load((ROOT / "merge_configs" / name).read_text())
    for slice_ in data["slices"]:
        for source in slice_["sources"]:
            source["model"] = str(models[source["model"].removeprefix("demo_models/")])
    return write_config(tmp_path / name, data)


def is_llama_before(key: str) -> bool:
    return "embed_tokens" in key


# ---------------------------------------------------------------------------------------------------
# example configs


def demo_layer_count() -> int:
    """The demo base's depth, from tools/build_demo_models.py when present (4 otherwise)."""
    builder = ROOT / "tools" / "build_demo_models.py"
    if builder.is_file():
        match = re.search(r"^\s*layers: int = (\d+)", builder.read_text(), re.MULTILINE)
        if match:
            return int(match.group(1))
    return 4


def test_solar_upscale_example_equals_stacked_reference(tmp_path):
    import transformers

    layers = demo_layer_count()
    base = llama(tmp_path / "base", layers=layers)
    cfg = load_example("solar-upscale-demo.yaml", {"base": tmp_path / "base"}, tmp_path)
    ranges = [s["sources"][0]["layer_range"] for s in yaml.safe_load(cfg.read_text())["slices"]]
    plan = [i for start, end in ranges for i in range(start, end)]
    assert len(plan) > layers and len(set(plan)) < len(plan)  # deeper, with repeated layers

    out = merge_ok(cfg, tmp_path / "out")
    written = json.loads((out / "config.json").read_text())
    assert written["num_hidden_layers"] == len(plan)

    # a repeated source layer is stored as separate tensors with equal bytes
    tensors = output_tensors(out)
    first, second = [k for k, i in enumerate(plan) if i == plan[len(plan) // 2]][:2]
    name = "model.layers.{}.self_attn.q_proj.weight"
    assert torch.equal(tensors[name.format(first)], tensors[name.format(second)])
    assert len(tensors) == 3 + 9 * len(plan)

    merged = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    sd = base.state_dict()
    expected = stacked_reference(
        transformers.LlamaForCausalLM,
        tiny_llama_config(num_hidden_layers=len(plan)),
        "model.layers",
        [(sd, i) for i in plan],
        sd,
        sd,
        is_llama_before,
    )
    torch.testing.assert_close(logits_of(merged), logits_of(expected), rtol=0, atol=1e-6)
    # transformers can save it again: no two tensor names share one storage
    merged.save_pretrained(tmp_path / "resaved")


def test_goliath_interleave_example_equals_stacked_reference(tmp_path):
    import transformers

    layers = demo_layer_count()
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(tiny_llama_config(num_hidden_layers=layers))
    a, b = finetune_of(base, seed=1, scale=0.05).eval(), finetune_of(base, seed=2, scale=0.05).eval()
    paths = {"skill_a": save_model(a, tmp_path / "a"), "skill_b": save_model(b, tmp_path / "b")}
    cfg = load_example("goliath-interleave-demo.yaml", paths, tmp_path)
    data = yaml.safe_load(cfg.read_text())
    state = {str(paths["skill_a"]): a.state_dict(), str(paths["skill_b"]): b.state_dict()}
    plan = [
        (state[s["sources"][0]["model"]], i)
        for s in data["slices"]
        for i in range(*s["sources"][0]["layer_range"])
    ]
    models_used = {s["sources"][0]["model"] for s in data["slices"]}
    assert models_used == {str(p) for p in paths.values()}  # really interleaves both

    out = merge_ok(cfg, tmp_path / "out")
    merged = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    first_model = data["slices"][0]["sources"][0]["model"]
    last_model = data["slices"][-1]["sources"][0]["model"]
    expected = stacked_reference(
        transformers.LlamaForCausalLM,
        tiny_llama_config(num_hidden_layers=len(plan)),
        "model.layers",
        plan,
        state[first_model],
        state[last_model],
        is_llama_before,
    )
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == len(plan)
    torch.testing.assert_close(logits_of(merged), logits_of(expected), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# families: one planner, no special cases


def _gpt2():
    import transformers

    config = transformers.GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=96, n_positions=32)
    return transformers.GPT2LMHeadModel, config, "transformer.h", lambda k: ".wte." in k or ".wpe." in k


def _neox():
    import transformers

    config = transformers.GPTNeoXConfig(
        num_hidden_layers=3,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=96,
        max_position_embeddings=32,
    )
    return transformers.GPTNeoXForCausalLM, config, "gpt_neox.layers", lambda k: "embed_in" in k


def _bert(cls_name):
    def make():
        import transformers

        config = transformers.BertConfig(
            num_hidden_layers=3,
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=96,
            max_position_embeddings=32,
        )
        cls = getattr(transformers, cls_name)
        prefix = "bert.encoder.layer" if cls_name != "BertModel" else "encoder.layer"
        return cls, config, prefix, lambda k: "embeddings." in k

    return make


def _tied_llama():
    import transformers

    return (
        transformers.LlamaForCausalLM,
        tiny_llama_config(tie_word_embeddings=True),
        "model.layers",
        is_llama_before,
    )


FAMILIES = {
    "gpt2": (_gpt2, "n_layer"),
    "gpt_neox": (_neox, "num_hidden_layers"),
    "bert-mlm": (_bert("BertForMaskedLM"), "num_hidden_layers"),
    "bert-model": (_bert("BertModel"), "num_hidden_layers"),
    "llama-tied": (_tied_llama, "num_hidden_layers"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_passthrough_equals_reference(tmp_path, family):
    """Two tiny models of one family, stacked [0, 2] of A + [1, 3] of B; ends from A and B."""
    make, count_key = FAMILIES[family]
    cls, config, layer_key, is_before = make()
    torch.manual_seed(0)
    a = cls(config).eval()
    b = finetune_of(a, seed=5, scale=0.05).eval()
    pa, pb = save_model(a, tmp_path / "a", "8KB"), save_model(b, tmp_path / "b", "8KB")
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": str(pa), "layer_range": [0, 2]}]},
                {"sources": [{"model": str(pb), "layer_range": [1, 3]}]},
            ],
        },
    )
    out = merge_ok(cfg, tmp_path / "out")
    written = json.loads((out / "config.json").read_text())
    assert written[count_key] == 4
    source_names = set(output_tensors(pa))
    assert {re.sub(r"\.\d+\.", ".N.", n) for n in output_tensors(out)} == {
        re.sub(r"\.\d+\.", ".N.", n) for n in source_names
    }
    if getattr(config, "tie_word_embeddings", False):
        assert not any(n.startswith("lm_head") for n in output_tensors(out))
        assert written.get("tie_word_embeddings", True) is True

    new_config = copy.deepcopy(config)
    setattr(new_config, count_key, 4)
    sa, sb = a.state_dict(), b.state_dict()
    expected = stacked_reference(
        cls, new_config, layer_key, [(sa, 0), (sa, 1), (sb, 1), (sb, 2)], sa, sb, is_before
    )
    merged = cls.from_pretrained(out).eval()
    torch.testing.assert_close(logits_of(merged), logits_of(expected), rtol=0, atol=1e-5)
    if getattr(config, "tie_word_embeddings", False) and hasattr(merged, "lm_head"):
        assert merged.lm_head.weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()


def test_per_layer_config_lists_are_sliced(tmp_path):
    """Gemma2's layer_types (sliding/full alternate) follow the layers; the output loads and matches."""
    import transformers

    config = transformers.Gemma2Config(
        num_hidden_layers=4,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        vocab_size=96,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "full_attention", "sliding_attention"],
    )
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(config).eval()
    path = save_model(model, tmp_path / "gemma2", "16KB")
    plan = [0, 1, 2, 1, 2, 3]
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": str(path), "layer_range": [0, 3]}]},
                {"sources": [{"model": str(path), "layer_range": [1, 4]}]},
            ],
        },
    )
    out = merge_ok(cfg, tmp_path / "out")
    written = json.loads((out / "config.json").read_text())
    assert written["num_hidden_layers"] == 6
    assert written["layer_types"] == [config.layer_types[i] for i in plan]

    new_config = copy.deepcopy(config)
    new_config.num_hidden_layers = 6
    new_config.layer_types = [config.layer_types[i] for i in plan]
    sd = model.state_dict()
    expected = stacked_reference(
        transformers.Gemma2ForCausalLM,
        new_config,
        "model.layers",
        [(sd, i) for i in plan],
        sd,
        sd,
        is_llama_before,
    )
    merged = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert list(merged.config.layer_types) == new_config.layer_types
    torch.testing.assert_close(logits_of(merged), logits_of(expected), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# merged slices


@pytest.fixture
def three_llamas(tmp_path):
    import transformers

    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(tiny_llama_config(num_hidden_layers=4)).eval()
    ft1, ft2 = finetune_of(base, seed=1, scale=0.05), finetune_of(base, seed=2, scale=0.05)
    paths = [save_model(m, tmp_path / n) for m, n in ((base, "base"), (ft1, "ft1"), (ft2, "ft2"))]
    return paths, [output_tensors(p) for p in paths]


def test_slerp_slices_with_t_gradient_equal_reference(tmp_path, three_llamas):
    (pa, pb, _), (ta, tb, _) = three_llamas
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "merge_method": "slerp",
            "base_model": str(pa),
            "parameters": {"t": 0.3},
            "slices": [
                {
                    "sources": [
                        {"model": str(pa), "layer_range": [0, 3]},
                        {"model": str(pb), "layer_range": [1, 4]},
                    ],
                    "parameters": {"t": [{"filter": "mlp", "value": [0.0, 1.0]}, {"value": [0.2, 0.8]}]},
                },
                {
                    "sources": [
                        {"model": str(pb), "layer_range": [3, 4]},
                        {"model": str(pa), "layer_range": [0, 1]},
                    ]
                },
            ],
        },
    )
    out = merge_ok(cfg, tmp_path / "out")
    got = output_tensors(out)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4

    def check(out_name, a_name, b_name, t):
        want = ref.slerp(ta[a_name].double().numpy(), tb[b_name].double().numpy(), t)
        np.testing.assert_allclose(got[out_name].double().numpy(), want, rtol=1e-5, atol=1e-6)

    # slice 0: output layer i = slerp(base layer i, ft1 layer i + 1) at position i / 2
    for i in range(3):
        for rest in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            t = (i / 2) if "mlp" in rest else 0.2 + 0.6 * (i / 2)
            check(f"model.layers.{i}.{rest}", f"model.layers.{i}.{rest}", f"model.layers.{i + 1}.{rest}", t)
    # slice 1 (one layer): global t = 0.3, base_model's source is the base even when listed second
    check("model.layers.3.self_attn.o_proj.weight", "model.layers.0.self_attn.o_proj.weight",
          "model.layers.3.self_attn.o_proj.weight", 0.3)  # fmt: skip
    # non-layer tensors: before from the first slice at its first gradient value, after from the last
    check("model.embed_tokens.weight", "model.embed_tokens.weight", "model.embed_tokens.weight", 0.2)
    check("model.norm.weight", "model.norm.weight", "model.norm.weight", 0.3)
    check("lm_head.weight", "lm_head.weight", "lm_head.weight", 0.3)


def test_ties_slice_with_parameter_precedence_equals_reference(tmp_path, three_llamas):
    (pb, p1, p2), (tb, t1, t2) = three_llamas
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "merge_method": "ties",
            "base_model": str(pb),
            "parameters": {"weight": 0.1, "density": 0.5, "lambda": 1.5},
            "slices": [
                {
                    "sources": [
                        {"model": str(pb), "layer_range": [0, 2]},
                        {"model": str(p1), "layer_range": [0, 2], "parameters": {"weight": 0.7}},
                        {"model": str(p2), "layer_range": [2, 4]},
                    ],
                    "parameters": {"weight": 0.4, "density": [0.3, 0.9]},
                },
                {
                    "sources": [
                        {"model": str(pb), "layer_range": [3, 4]},
                        {"model": str(p1), "layer_range": [3, 4]},
                        {"model": str(p2), "layer_range": [3, 4]},
                    ]
                },
            ],
        },
    )
    out = merge_ok(cfg, tmp_path / "out")
    got = output_tensors(out)

    def check(out_name, names, weights, densities):
        base, m1, m2 = (t[n].double().numpy() for t, n in zip((tb, t1, t2), names, strict=True))
        want = ref.ties(base, [m1, m2], weights, densities, lam=1.5)
        np.testing.assert_allclose(got[out_name].double().numpy(), want, rtol=1e-5, atol=1e-6)

    rest = "self_attn.v_proj.weight"
    for i in range(2):  # source > slice > global; density gradient 0.3 → 0.9 across the slice
        d = 0.3 + 0.6 * i
        names = (f"model.layers.{i}.{rest}", f"model.layers.{i}.{rest}", f"model.layers.{i + 2}.{rest}")
        check(f"model.layers.{i}.{rest}", names, [0.7, 0.4], [d, d])
    check(f"model.layers.2.{rest}", (f"model.layers.3.{rest}",) * 3, [0.1, 0.1], [0.5, 0.5])
    check("model.embed_tokens.weight", ("model.embed_tokens.weight",) * 3, [0.7, 0.4], [0.3, 0.3])
    check("lm_head.weight", ("lm_head.weight",) * 3, [0.1, 0.1], [0.5, 0.5])


def test_passthrough_scale_filter_and_non_layer_source(tmp_path, three_llamas):
    (pa, pb, _), (ta, tb, _) = three_llamas
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "merge_method": "passthrough",
            "non_layer_source": str(pb),
            "slices": [
                {
                    "sources": [{"model": str(pa), "layer_range": [0, 2]}],
                    "parameters": {"scale": [{"filter": "o_proj", "value": [0.5, 0.0]}, {"value": 1.0}]},
                },
                {"sources": [{"model": str(pa), "layer_range": [2, 4]}]},
            ],
        },
    )
    got = output_tensors(merge_ok(cfg, tmp_path / "out"))
    o_proj = "model.layers.{}.self_attn.o_proj.weight"
    assert torch.equal(got[o_proj.format(0)], ta[o_proj.format(0)] * 0.5)
    assert torch.equal(got[o_proj.format(1)], torch.zeros_like(ta[o_proj.format(1)]))
    assert torch.equal(got[o_proj.format(2)], ta[o_proj.format(2)])
    assert torch.equal(got["model.layers.1.mlp.up_proj.weight"], ta["model.layers.1.mlp.up_proj.weight"])
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(got[name], tb[name])  # non_layer_source: pb, though the slices are pa's


def test_passthrough_models_form_copies_one_model(tmp_path, three_llamas):
    (pa, pb, _), (ta, _, _) = three_llamas
    cfg = write_config(tmp_path / "one.yaml", {"merge_method": "passthrough", "models": [{"model": str(pa)}]})
    got = output_tensors(merge_ok(cfg, tmp_path / "out"))
    assert got.keys() == ta.keys() and all(torch.equal(got[k], ta[k]) for k in ta)
    two = write_config(
        tmp_path / "two.yaml",
        {"merge_method": "passthrough", "models": [{"model": str(pa)}, {"model": str(pb)}]},
    )
    assert_one_line_failure(run_cli("merge", two, tmp_path / "out2"), tmp_path / "out2", "models:", "slices")


# ---------------------------------------------------------------------------------------------------
# bad inputs: one line, non-zero exit, nothing written


def assert_one_line_failure(result, out: Path, *fragments: str) -> str:
    line = assert_clean_failure(result, *fragments)
    assert len([x for x in result.output.splitlines() if x.startswith("error:")]) == 1, result.output
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}") or "tmp" in p.name]
    return line


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Small models of several kinds for the error tests (built once)."""
    import transformers

    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    paths = {}
    paths["a"] = save_model(transformers.LlamaForCausalLM(tiny_llama_config(num_hidden_layers=4)), root / "a")
    paths["b"] = save_model(transformers.LlamaForCausalLM(tiny_llama_config(num_hidden_layers=4)), root / "b")
    paths["wide"] = save_model(
        transformers.LlamaForCausalLM(tiny_llama_config(hidden_size=64, intermediate_size=96)), root / "wide"
    )
    paths["tied"] = save_model(
        transformers.LlamaForCausalLM(tiny_llama_config(num_hidden_layers=4, tie_word_embeddings=True)),
        root / "tied",
    )
    gpt2 = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=96, n_positions=32)
    paths["gpt2"] = save_model(transformers.GPT2LMHeadModel(gpt2), root / "gpt2")
    weird = root / "weird"
    weird.mkdir()
    for f in paths["a"].iterdir():
        (weird / f.name).write_bytes(f.read_bytes())
    data = json.loads((weird / "config.json").read_text())
    data.update(model_type="mamba9", architectures=["Mamba9ForCausalLM"])
    (weird / "config.json").write_text(json.dumps(data))
    paths["weird"] = weird
    return {k: str(v) for k, v in paths.items()}


def slices_cfg(*sources, method="passthrough", **top):
    return {"merge_method": method, **top, "slices": [{"sources": list(s)} for s in sources]}


def src(model, start, end):
    return {"model": model, "layer_range": [start, end]}


BAD = {
    "outside": (
        lambda z: slices_cfg([src(z["a"], 0, 2)], [src(z["b"], 2, 9)]),
        ["slices[1].sources[0].layer_range: [2, 9] is outside", "4 layers", "end-exclusive"],
    ),
    "empty": (
        lambda z: slices_cfg([src(z["a"], 0, 2)], [src(z["b"], 2, 2)]),
        ["slices[1].sources[0].layer_range: [2, 2] is empty or reversed", "end-exclusive"],
    ),
    "reversed": (
        lambda z: slices_cfg([src(z["a"], 3, 1)]),
        ["slices[0].sources[0].layer_range: [3, 1] is empty or reversed"],
    ),
    "unequal-lengths": (
        lambda z: slices_cfg(
            [src(z["a"], 0, 2), src(z["b"], 0, 3)], method="linear", parameters={"weight": 1}
        ),
        ["slices[0].sources[1].layer_range: [0, 3] spans 3 layers", "sources[0] spans 2"],
    ),
    "hidden-sizes": (
        lambda z: slices_cfg([src(z["a"], 0, 2)], [src(z["wide"], 1, 3)]),
        ["slices[1].sources[0].model:", "has hidden size 64 (hidden_size) but", "has 32"],
    ),
    "mixed-families": (
        lambda z: slices_cfg([src(z["a"], 0, 2)], [src(z["gpt2"], 2, 4)]),
        ["slices[1].sources[0].model:", "is a gpt2 model but", "is llama"],
    ),
    "unknown-family": (
        lambda z: slices_cfg([src(z["weird"], 0, 2)]),
        ["slices[0].sources[0].model:", "model_type 'mamba9'", "Mamba9ForCausalLM", "not a supported"],
    ),
    "passthrough-two-sources": (
        lambda z: slices_cfg([src(z["a"], 0, 2), src(z["b"], 0, 2)]),
        ["slices[0].sources: merge_method 'passthrough' takes exactly 1 source per slice, got 2"],
    ),
    "base-not-in-slice": (
        lambda z: slices_cfg(
            [src(z["a"], 0, 2), src(z["b"], 0, 2)],
            [src(z["b"], 2, 4), src(z["a"], 2, 4)],
            [src(z["b"], 3, 4)],
            method="ties",
            base_model=z["a"],
            parameters={"weight": 1},
        ),  # fmt: skip
        ["slices[2].sources: merge_method 'ties' needs base_model"],
    ),
    "non-layer-source-bad-key": (
        lambda z: slices_cfg([src(z["a"], 0, 2)], non_layer_source={"head": z["b"]}),
        ["non_layer_source.head: unknown key"],
    ),
    "non-layer-source-other-family": (
        lambda z: slices_cfg([src(z["a"], 0, 2)], non_layer_source={"after": z["gpt2"]}),
        ["non_layer_source:", "is a gpt2 model but"],
    ),
    "tied-vs-untied-ends": (
        lambda z: slices_cfg([src(z["tied"], 0, 2)], [src(z["a"], 2, 4)]),
        ["ties its output head", "non_layer_source"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_slices_fail_cleanly_before_reading_tensors(tmp_path, zoo, case, monkeypatch):
    make, fragments = BAD[case]
    cfg = write_config(tmp_path / "cfg.yaml", make(zoo))

    def no_reads(info):
        raise AssertionError(f"tensor data read during planning: {info.name}")

    monkeypatch.setattr("mergebench.io.checkpoint.read_tensor", no_reads)
    out = tmp_path / "out"
    assert_one_line_failure(run_cli("merge", cfg, out, "--no-progress"), out, *fragments)
    validate = run_cli("validate", cfg)
    assert validate.exit_code != 0 and "Traceback" not in validate.output


# ---------------------------------------------------------------------------------------------------
# a 70B-shaped plan from headers alone


LLAMA_70B = dict(hidden=8192, inter=28672, kv=1024, vocab=32000, layers=80)


def write_sparse_llama_70b(directory: Path, layers_per_shard: int = 5) -> None:
    """Real safetensors headers + index for a bf16 Llama-2-70B shape; data regions are sparse holes."""
    h, i, kv, vocab, n = (LLAMA_70B[k] for k in ("hidden", "inter", "kv", "vocab", "layers"))
    layer = {
        "input_layernorm.weight": [h],
        "self_attn.q_proj.weight": [h, h],
        "self_attn.k_proj.weight": [kv, h],
        "self_attn.v_proj.weight": [kv, h],
        "self_attn.o_proj.weight": [h, h],
        "post_attention_layernorm.weight": [h],
        "mlp.gate_proj.weight": [i, h],
        "mlp.up_proj.weight": [i, h],
        "mlp.down_proj.weight": [h, i],
    }
    groups = [{"model.embed_tokens.weight": [vocab, h]}]
    for start in range(0, n, layers_per_shard):
        groups.append(
            {
                f"model.layers.{k}.{rest}": shape
                for k in range(start, start + layers_per_shard)
                for rest, shape in layer.items()
            }
        )
    groups[-1].update({"model.norm.weight": [h], "lm_head.weight": [vocab, h]})
    directory.mkdir()
    weight_map, total = {}, 0
    for s, group in enumerate(groups):
        name = f"model-{s + 1:05d}-of-{len(groups):05d}.safetensors"
        header, offset = {}, 0
        for tensor, shape in group.items():
            size = int(np.prod(shape)) * 2
            header[tensor] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
            weight_map[tensor] = name
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(directory / name, "wb") as handle:
            handle.write(struct.pack("<Q", len(raw)) + raw)
            handle.truncate(8 + len(raw) + offset)  # sparse: no data is written
        total += offset
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": h,
        "intermediate_size": i,
        "num_hidden_layers": n,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    (directory / "config.json").write_text(json.dumps(config))


def test_plan_70b_shaped_frankenmerge_from_headers_only(tmp_path, monkeypatch):
    from mergebench.config import parse_config
    from mergebench.pipeline import plan_merge
    from mergebench.planner import Copy

    model = tmp_path / "llama70b"
    write_sparse_llama_70b(model)

    def no_reads(info):
        raise AssertionError(f"tensor data read during planning: {info.name}")

    monkeypatch.setattr("mergebench.io.checkpoint.read_tensor", no_reads)
    data = slices_cfg([src(str(model), 0, 60)], [src(str(model), 20, 80)])  # SOLAR-like: 120 layers
    started = time.perf_counter()
    plan = plan_merge(parse_config(data))
    elapsed = time.perf_counter() - started
    print(f"planned a 120-layer frankenmerge of a 70B-shaped model in {elapsed:.2f} s")

    names = [job.output.name for job in plan.ops]
    assert len(names) == len(set(names)) == 3 + 9 * 120
    assert names[0] == "model.embed_tokens.weight" and names[-2:] == ["model.norm.weight", "lm_head.weight"]
    by_name = {job.output.name: job for job in plan.ops}
    assert (
        by_name["model.layers.59.mlp.down_proj.weight"].inputs[0].name
        == "model.layers.59.mlp.down_proj.weight"
    )
    assert (
        by_name["model.layers.60.mlp.down_proj.weight"].inputs[0].name
        == "model.layers.20.mlp.down_proj.weight"
    )
    assert (
        by_name["model.layers.119.self_attn.q_proj.weight"].inputs[0].name
        == "model.layers.79.self_attn.q_proj.weight"
    )
    assert all(isinstance(job, Copy) for job in plan.ops)  # plain copies
    assert plan.config_updates == {"num_hidden_layers": 120}
    per_layer = sum(int(np.prod(job.output.shape)) * 2 for job in plan.ops if ".layers.0." in job.output.name)
    assert plan.output_bytes == 120 * per_layer + 2 * 32000 * 8192 * 2 + 8192 * 2
    assert plan.output_bytes > 180e9

    cfg = write_config(tmp_path / "cfg.yaml", data)
    result = run_cli("validate", cfg)
    assert result.exit_code == 0, result.output
    assert f"ok: {3 + 9 * 120} output tensors" in result.output
