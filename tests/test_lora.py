"""LoRA: merge into a base, concat ranks, base+adapter merge inputs, extract — checked against real PEFT."""

from __future__ import annotations

import json
import re
from pathlib import Path

import peft
import pytest
import torch
import transformers
from click.testing import CliRunner

from tests.conftest import assert_clean_failure, save_model, tiny_llama_config

ATOL = 1e-5


# --- helpers ---------------------------------------------------------------------------------------


def lora_cli(*args):
    from mergebench.cli import main

    return CliRunner().invoke(main, ["lora", *[str(a) for a in args]], catch_exceptions=True)


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    from mergebench.sources import open_checkpoint

    checkpoint = open_checkpoint(str(path))
    return {name: checkpoint.read(name) for name in checkpoint.tensors}


def load_model(path: Path, cls=None):
    cls = cls or transformers.AutoModelForCausalLM
    return cls.from_pretrained(path, dtype=torch.float32)


def make_adapter(base_path: Path, out: Path, seed: int, **lora_kwargs) -> Path:
    """A PEFT adapter with random non-zero A and B (and a perturbed DoRA magnitude)."""
    torch.manual_seed(seed)
    model = load_model(base_path)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(**lora_kwargs))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if any(k in name for k in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
            elif "lora_magnitude_vector" in name:
                param.mul_(1 + 0.1 * torch.randn(param.shape, generator=generator))
            elif "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(out)
    return out


def peft_merged(base_path: Path, adapter_path: Path) -> dict[str, torch.Tensor]:
    model = load_model(base_path)
    merged = peft.PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def assert_state_close(ours: dict, expected: dict, atol: float = ATOL) -> None:
    for name, tensor in ours.items():
        torch.testing.assert_close(
            tensor, expected[name], atol=atol, rtol=0, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_llama_config(attention_bias=True))
    return save_model(model, tmp_path_factory.mktemp("lora") / "base")


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    specs = {
        "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
        "rslora": dict(r=8, lora_alpha=4, use_rslora=True, target_modules=["k_proj", "o_proj", "gate_proj"]),
        "patterns": dict(
            r=4,
            lora_alpha=16,
            target_modules=["q_proj", "up_proj"],
            rank_pattern={r"layers\.1\.self_attn\.q_proj": 2, "up_proj": 6},
            alpha_pattern={"layers.2.mlp.up_proj": 3},
        ),
        "embedding": dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]),
        "bias_saved": dict(
            r=2, lora_alpha=2, target_modules=["q_proj"], lora_bias=True, modules_to_save=["lm_head"]
        ),
        "dora": dict(
            r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "down_proj", "embed_tokens"]
        ),
    }
    return {
        name: make_adapter(base, root / name, seed, **kw) for seed, (name, kw) in enumerate(specs.items(), 1)
    }


# --- lora merge ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "rslora", "patterns", "embedding", "bias_saved", "dora"])
def test_merge_matches_peft(base, adapters, tmp_path, kind):
    out = tmp_path / "merged"
    result = lora_cli(
        "merge", base, adapters[kind], "--out", out, "--max-shard-size", "20KB", "--no-progress"
    )
    assert result.exit_code == 0, result.output
    ours = load_dir(out)
    expected = peft_merged(base, adapters[kind])
    assert set(ours) == set(expected)
    assert_state_close(ours, expected)
    assert len(list(out.glob("model-*.safetensors"))) > 1  # a normal sharded model dir
    card = (out / "README.md").read_text()
    assert str(adapters[kind]) in card and str(base) in card
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_merge_several_with_weights(base, adapters, tmp_path):
    names, weights = ["plain", "rslora", "patterns", "bias_saved"], [1.0, 0.5, -0.75, 2.0]
    out = tmp_path / "merged"
    paths = [adapters[n] for n in names]
    result = lora_cli(
        "merge", base, *paths, "--out", out, "--weights", ",".join(map(str, weights)), "--no-progress"
    )
    assert result.exit_code == 0, result.output
    base_state = load_dir(base)
    expected = {k: v.clone() for k, v in base_state.items()}
    for path, weight in zip(paths, weights, strict=True):
        for name, tensor in peft_merged(base, path).items():
            if name in expected:
                expected[name] += weight * (tensor - base_state[name])
    assert_state_close(load_dir(out), expected)
    card = (out / "README.md").read_text()
    assert "weight: -0.75" in card


def test_merge_bf16_rounds_once(base, adapters, tmp_path):
    out = tmp_path / "merged"
    result = lora_cli("merge", base, adapters["plain"], "--out", out, "--dtype", "bfloat16", "--no-progress")
    assert result.exit_code == 0, result.output
    ours = load_dir(out)
    expected = peft_merged(base, adapters["plain"])
    for name, tensor in ours.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, expected[name].to(torch.bfloat16)), name


# --- lora concat -----------------------------------------------------------------------------------


def test_concat_is_exact_and_loads_in_peft(base, adapters, tmp_path):
    names, weights = ["plain", "rslora", "patterns", "embedding"], [1.0, -0.5, 0.25, 1.5]
    out = tmp_path / "cat"
    paths = [adapters[n] for n in names]
    result = lora_cli("concat", *paths, "--out", out, "--weights", ",".join(map(str, weights)))
    assert result.exit_code == 0, result.output
    base_state = load_dir(base)
    expected = {k: v.clone() for k, v in base_state.items()}
    for path, weight in zip(paths, weights, strict=True):
        for name, tensor in peft_merged(base, path).items():
            expected[name] += weight * (tensor - base_state[name])
    assert_state_close(peft_merged(base, out), expected)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_rslora"] is False


@pytest.mark.parametrize("rank", [3, 6])
def test_concat_rank_compression_error_is_the_discarded_energy(base, adapters, tmp_path, rank):
    names = ["plain", "patterns"]
    out = tmp_path / "cat"
    result = lora_cli("concat", *[adapters[n] for n in names], "--out", out, "--rank", rank)
    assert result.exit_code == 0, result.output
    assert "retained energy" in result.output
    base_state = load_dir(base)
    exact = {k: v.clone() for k, v in base_state.items()}
    for name in names:
        for key, tensor in peft_merged(base, adapters[name]).items():
            exact[key] += tensor - base_state[key]
    compressed = peft_merged(base, out)
    checked = 0
    for key in exact:
        delta = (exact[key] - base_state[key]).double()
        if not delta.any():
            continue
        s = torch.linalg.svd(delta).S
        discarded = float(s[rank:].square().sum().sqrt())
        error = float(torch.linalg.norm(compressed[key].double() - exact[key].double()))
        assert error == pytest.approx(discarded, abs=1e-4, rel=1e-3), key
        checked += 1
    assert checked > 0


def test_concat_refuses_dora(adapters, tmp_path):
    result = lora_cli("concat", adapters["plain"], adapters["dora"], "--out", tmp_path / "cat")
    assert_clean_failure(result, "DoRA")
    assert not (tmp_path / "cat").exists()


# --- GPT-2 (fan_in_fan_out) ------------------------------------------------------------------------


def test_gpt2_fan_in_fan_out(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32)
    base = save_model(transformers.GPT2LMHeadModel(config), tmp_path / "gpt2")
    adapter = make_adapter(
        base,
        tmp_path / "ad",
        7,
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
    )
    out = tmp_path / "merged"
    result = lora_cli("merge", base, adapter, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    ours, expected = load_dir(out), peft_merged(base, adapter)
    assert_state_close(ours, {k: expected.get(k, expected.get(f"transformer.{k}")) for k in ours})


# --- base+adapter in a merge config ----------------------------------------------------------------


def test_base_plus_adapter_in_task_arithmetic(base, adapters, tmp_path):
    from mergebench.cli import main

    ft = save_model(
        transformers.LlamaForCausalLM.from_pretrained(base, dtype=torch.float32).apply(
            lambda m: [p.data.add_(0.01) for p in m.parameters(recurse=False)]
        ),
        tmp_path / "ft",
    )
    merged_first = tmp_path / "merged_first"
    result = lora_cli("merge", base, adapters["plain"], "--out", merged_first, "--no-progress")
    assert result.exit_code == 0, result.output

    def config(first: str) -> Path:
        path = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml"
        path.write_text(
            "merge_method: task_arithmetic\n"
            f"base_model: {base}\n"
            "models:\n"
            f"  - model: {first}\n    parameters: {{weight: 0.7}}\n"
            f"  - model: {ft}\n    parameters: {{weight: 0.5}}\n"
            "parameters: {lambda: 0.9}\n"
        )
        return path

    runner = CliRunner()
    a = runner.invoke(
        main, ["merge", str(config(f"{base}+{adapters['plain']}")), str(tmp_path / "a"), "--no-progress"]
    )
    assert a.exit_code == 0, a.output
    b = runner.invoke(main, ["merge", str(config(str(merged_first))), str(tmp_path / "b"), "--no-progress"])
    assert b.exit_code == 0, b.output
    ours, expected = load_dir(tmp_path / "a"), load_dir(tmp_path / "b")
    assert set(ours) == set(expected)
    for name in ours:
        assert torch.equal(ours[name], expected[name]), name
    assert f"{base}+{adapters['plain']}" in (tmp_path / "a" / "README.md").read_text()


def test_base_plus_bad_adapter_fails_in_validate(base, tmp_path):
    from mergebench.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "merge_method: linear\nparameters: {weight: 1.0}\n"
        f"models:\n  - model: {base}+{tmp_path / 'nope'}\n  - model: {base}\n"
    )
    result = CliRunner().invoke(main, ["merge", str(cfg), str(tmp_path / "o"), "--no-progress"])
    assert_clean_failure(result, "nope")
    assert not (tmp_path / "o").exists()


# --- extract ---------------------------------------------------------------------------------------


def low_rank_finetune(base, targets: str, seed: int):
    """``base`` loaded, with a rank-2 change 0.05·u·v added to every weight whose name matches ``targets``."""
    model = load_model(base)
    generator = torch.Generator().manual_seed(seed)
    pattern = re.compile(targets)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if pattern.search(name):
                rows, cols = param.shape
                u, v = torch.randn(rows, 2, generator=generator), torch.randn(2, cols, generator=generator)
                param.add_(0.05 * u @ v)
    return model


def test_extract_then_merge_reproduces_low_rank_finetune(base, tmp_path):
    model = low_rank_finetune(base, r"(q_proj|v_proj|up_proj|down_proj|embed_tokens)\.weight$", seed=3)
    with torch.no_grad():
        model.get_parameter("model.layers.1.input_layernorm.weight").add_(0.1)  # a 1-D change: saved whole
    ft = save_model(model, tmp_path / "ft")
    adapter = tmp_path / "extracted"
    result = lora_cli("extract", "--base", base, "--finetuned", ft, "--rank", 4, "--out", adapter)
    assert result.exit_code == 0, result.output
    assert "relative error" in result.output
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["model.layers.1.input_layernorm"]
    out = tmp_path / "merged"
    result = lora_cli("merge", base, adapter, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    expected = load_dir(ft)
    assert_state_close(load_dir(out), expected, atol=1e-4)
    assert_state_close(peft_merged(base, adapter), expected, atol=1e-4)  # PEFT reads it the same way


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the lent GPU machine)")
def test_merge_and_extract_on_cuda_equal_the_cpu(base, adapters, tmp_path):
    """``--device cuda`` folds (B·A, DoRA norms) and factorizes (SVD) on the GPU: the merge equals PEFT's
    as the CPU one does, bf16 outputs within one rounding step of the CPU's, and the extracted adapter
    reproduces the finetune's low-rank change."""
    for kind in ("plain", "embedding", "dora"):
        out = tmp_path / f"merged-{kind}"
        result = lora_cli("merge", base, adapters[kind], "--out", out, "--no-progress", "--device", "cuda")
        assert result.exit_code == 0, result.output
        assert_state_close(load_dir(out), peft_merged(base, adapters[kind]))
    outs = {}
    for device in ("cpu", "cuda"):
        outs[device] = tmp_path / f"bf16-{device}"
        args = ("--out", outs[device], "--dtype", "bfloat16", "--no-progress", "--device", device)
        assert lora_cli("merge", base, adapters["plain"], *args).exit_code == 0
    cpu, gpu = load_dir(outs["cpu"]), load_dir(outs["cuda"])
    for name, tensor in cpu.items():
        step = torch.finfo(torch.bfloat16).eps * tensor.float().abs().clamp(min=1e-30)
        assert bool(((gpu[name].float() - tensor.float()).abs() <= step).all()), name
    ft = save_model(low_rank_finetune(base, r"(q_proj|down_proj)\.weight$", seed=5), tmp_path / "ft")
    adapter = tmp_path / "extracted"
    result = lora_cli(
        "extract", "--base", base, "--finetuned", ft, "--rank", 4, "--out", adapter, "--device", "cuda"
    )
    assert result.exit_code == 0, result.output
    assert_state_close(peft_merged(base, adapter), load_dir(ft), atol=1e-4)


# --- bad input -------------------------------------------------------------------------------------


def test_mismatched_shapes_fail_before_output(tmp_path, adapters):
    torch.manual_seed(0)
    wide = save_model(transformers.LlamaForCausalLM(tiny_llama_config(hidden_size=48)), tmp_path / "wide")
    out = tmp_path / "out"
    result = lora_cli("merge", wide, adapters["plain"], "--out", out, "--no-progress")
    assert_clean_failure(result, "does not fit", "q_proj")
    assert not out.exists()


def test_mismatched_targets_fail_before_output(tmp_path, adapters):
    torch.manual_seed(0)
    short = save_model(
        transformers.LlamaForCausalLM(tiny_llama_config(num_hidden_layers=2)), tmp_path / "short"
    )
    out = tmp_path / "out"
    result = lora_cli("merge", short, adapters["plain"], "--out", out, "--no-progress")
    assert_clean_failure(result, "model.layers.2.")
    assert not out.exists()
    assert not list(tmp_path.glob(".out*"))


def test_missing_adapter_files(base, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for target, fragment in [(tmp_path / "absent", "absent"), (empty, "adapter_config.json")]:
        out = tmp_path / "out"
        assert_clean_failure(lora_cli("merge", base, target, "--out", out), fragment)
        assert not out.exists()
    (empty / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    assert_clean_failure(
        lora_cli("merge", base, empty, "--out", tmp_path / "out"), "adapter_model.safetensors"
    )
    assert not (tmp_path / "out").exists()


def test_pickled_adapter_refused_unless_allowed(base, adapters, tmp_path):
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((adapters["plain"] / "adapter_config.json").read_text())
    torch.save(load_file(adapters["plain"] / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    out = tmp_path / "out"
    result = lora_cli("merge", base, pickled, "--out", out)
    assert_clean_failure(result, "pickle", "--allow-pickle")
    assert not out.exists()
    result = lora_cli("merge", base, pickled, "--out", out, "--allow-pickle", "--no-progress")
    assert result.exit_code == 0, result.output
    assert_state_close(load_dir(out), peft_merged(base, adapters["plain"]))


def test_bad_weights(base, adapters, tmp_path):
    result = lora_cli("merge", base, adapters["plain"], "--out", tmp_path / "o", "--weights", "1,2")
    assert_clean_failure(result, "--weights")
    assert not (tmp_path / "o").exists()


def test_pattern_key_matches_peft():
    from peft.utils.other import get_pattern_key as peft_key

    from mergebench.io.adapter import get_pattern_key

    patterns = {"q_proj": 1, r"layers\.1\.self_attn\.q_proj": 2, "proj": 3, "mlp.*": 4}
    for path in [
        "model.layers.1.self_attn.q_proj",
        "model.layers.11.self_attn.q_proj",
        "x.up_proj",
        "mlp.up",
        "a.mlp.b",
    ]:
        ours = get_pattern_key(patterns.keys(), path)
        assert (ours if ours is not None else path) == peft_key(list(patterns), path)


def test_inspect_summarises_an_adapter(adapters):
    from tests.conftest import run_cli

    result = run_cli("inspect", adapters["dora"], "--tensors")
    assert result.exit_code == 0, result.output
    first, targets = result.output.splitlines()[:2]
    config = json.loads((adapters["dora"] / "adapter_config.json").read_text())
    assert "PEFT DoRA adapter" in first and f"rank {config['r']}" in first and "unknown" not in first
    assert all(name in targets for name in config["target_modules"])
    assert "lora_magnitude_vector" in result.output


def test_concat_keeps_the_base_model_and_the_tokenizer_an_adapter_carried(base, adapters, tmp_path):
    import shutil

    with_tokenizer = tmp_path / "with-tokenizer"
    shutil.copytree(adapters["rslora"], with_tokenizer)
    (with_tokenizer / "tokenizer_config.json").write_text('{"model_max_length": 64}\n')
    out = tmp_path / "cat"
    result = lora_cli("concat", adapters["plain"], with_tokenizer, "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "tokenizer_config.json").read_text() == '{"model_max_length": 64}\n'
    base_model = json.loads((adapters["plain"] / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == base_model
    assert f"base_model: {json.dumps(base_model)}" in (out / "README.md").read_text()
