"""Promises README makes that no other test checked: each test here fails if the promise breaks.

Failure-side promises that belong in the catalogue are there (tests/test_catalogue.py): an error raised
in the writer thread ("writer thread raises"), LoRA refusals such as conv LoRA and target_parameters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import Family, run_cli, save_model, tiny_llama_config, write_config
from tests.conftest_demo import CHARS, make_tiny_model_dir
from tests.test_catalogue import PREFIX, Q_PROJ, V_PROJ, read_shard, update_tensors, write_adapter_dir


def merged(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model directory (its safetensors files)."""
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def merge(config: dict, tmp: Path, out: Path, *extra: str) -> None:
    """``mergebench merge`` of ``config`` into ``out``, which must succeed."""
    result = run_cli("merge", write_config(tmp / f"{out.name}.yaml", config), out, "--no-progress", *extra)
    assert result.exit_code == 0, result.output


def copies(family: Family, tmp: Path) -> list[Path]:
    """Base, ft1 and ft2 copied under ``tmp`` (to be changed)."""
    return [Path(shutil.copytree(m, tmp / m.name)) for m in (family.base, family.ft1, family.ft2)]


# ---- merge promises ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_a_non_float_tensor_is_copied_from_the_base(llama_family, tmp_path, dtype) -> None:
    """An int64 buffer that differs in every model comes out as the base's, bit for bit, still int64."""
    base, ft1, ft2 = copies(llama_family, tmp_path)
    for model, values in ((base, torch.arange(8)), (ft1, torch.arange(8) * 3), (ft2, torch.arange(8) + 5)):
        update_tensors(lambda tensors, v=values: tensors.update({"model.position_ids": v}))(model)
    config = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": [
            {"model": str(ft1), "parameters": {"weight": 0.7}},
            {"model": str(ft2), "parameters": {"weight": 0.3}},
        ],
        **({"dtype": dtype} if dtype else {}),
    }
    merge(config, tmp_path, tmp_path / "out")
    out = merged(tmp_path / "out")["model.position_ids"]
    assert out.dtype == torch.int64 and torch.equal(out, torch.arange(8))


def test_out_dtype_differs_from_dtype(llama_family, tmp_path) -> None:
    """dtype float32 computes in float32; out_dtype bfloat16 is what is written, rounded once, and what
    config.json says."""
    config = {
        "merge_method": "linear",
        "models": [
            {"model": str(llama_family.ft1), "parameters": {"weight": 0.3}},
            {"model": str(llama_family.ft2), "parameters": {"weight": 0.7}},
        ],
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }
    merge(config, tmp_path, tmp_path / "out")
    out = merged(tmp_path / "out")
    first, second = merged(llama_family.ft1), merged(llama_family.ft2)
    assert set(out) == set(first)
    for name, tensor in out.items():
        assert tensor.dtype == torch.bfloat16, name
        expected = ((first[name] * 0.3).add_(second[name], alpha=0.7) / 1.0).to(torch.bfloat16)
        assert torch.equal(tensor, expected), name
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_dtype_float64_computes_in_float64(llama_family, tmp_path) -> None:
    """With dtype float64 the merge matches a float64 numpy reference to ~1e-15, which float32
    arithmetic cannot (its rounding error is ~1e-9 here)."""
    weights = (0.3, 0.7)
    config = {
        "merge_method": "linear",
        "models": [
            {"model": str(llama_family.ft1), "parameters": {"weight": weights[0]}},
            {"model": str(llama_family.ft2), "parameters": {"weight": weights[1]}},
        ],
        "dtype": "float64",
    }
    merge(config, tmp_path, tmp_path / "out64")
    merge({**config, "dtype": "float32"}, tmp_path, tmp_path / "out32")
    out64, out32 = merged(tmp_path / "out64"), merged(tmp_path / "out32")
    first, second = merged(llama_family.ft1), merged(llama_family.ft2)
    assert json.loads((tmp_path / "out64" / "config.json").read_text())["torch_dtype"] == "float64"
    worst32 = 0.0
    for name, tensor in out64.items():
        a, b = first[name].numpy().astype(np.float64), second[name].numpy().astype(np.float64)
        reference = (a * weights[0] + b * weights[1]) / (weights[0] + weights[1])
        assert tensor.dtype == torch.float64, name
        np.testing.assert_allclose(tensor.numpy(), reference, rtol=0, atol=1e-15, err_msg=name)
        worst32 = max(worst32, float(np.abs(out32[name].numpy().astype(np.float64) - reference).max()))
    assert worst32 > 1e-12  # float32 arithmetic would not have passed the check above


def test_int8_mask_is_accepted_and_changes_nothing(llama_family, tmp_path) -> None:
    """mergekit configs carry int8_mask; it is accepted and the weights are byte-identical without it."""
    config = {
        "merge_method": "ties",
        "base_model": str(llama_family.base),
        "models": [
            {"model": str(llama_family.ft1), "parameters": {"weight": 1.0, "density": 0.5}},
            {"model": str(llama_family.ft2), "parameters": {"weight": 0.5, "density": 0.7}},
        ],
        "dtype": "bfloat16",
    }
    merge(config, tmp_path, tmp_path / "plain")
    merge({**config, "parameters": {"int8_mask": True}}, tmp_path, tmp_path / "masked")
    shards = sorted(p.name for p in (tmp_path / "plain").glob("*.safetensors"))
    assert shards == sorted(p.name for p in (tmp_path / "masked").glob("*.safetensors"))
    for name in [*shards, "model.safetensors.index.json", "config.json"]:
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "masked" / name).read_bytes(), name


def test_tokenizer_source_naming_a_model_copies_its_tokenizer_files(tmp_path) -> None:
    """Three models with the same character vocabulary; ft1's tokenizer files differ in their bytes."""
    base, ft1, ft2 = (
        make_tiny_model_dir(tmp_path / name, seed=seed) for seed, name in enumerate(("base", "ft1", "ft2"))
    )
    settings = json.loads((ft1 / "tokenizer_config.json").read_text())
    (ft1 / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 77}, indent=1))
    config = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": [
            {"model": str(ft1), "parameters": {"weight": 0.5}},
            {"model": str(ft2), "parameters": {"weight": 0.5}},
        ],
        "tokenizer_source": str(ft1),
    }
    merge(config, tmp_path, tmp_path / "out")
    copied = sorted(
        p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(("tokenizer", "special"))
    )
    assert "tokenizer_config.json" in copied and "tokenizer.json" in copied
    for name in copied:
        assert (tmp_path / "out" / name).read_bytes() == (ft1 / name).read_bytes(), name
    assert (tmp_path / "out" / "tokenizer_config.json").read_bytes() != (
        base / "tokenizer_config.json"
    ).read_bytes()


def test_every_shard_is_within_the_limit_except_a_single_larger_tensor(llama_family, tmp_path) -> None:
    """--max-shard-size bounds each shard's tensor bytes; a tensor larger than the limit gets a shard of
    its own. The tiny model has both kinds (embeddings and q_proj exceed 3 KB), so both are checked."""
    limit = 3000
    config = {
        "merge_method": "linear",
        "models": [
            {"model": str(m), "parameters": {"weight": 0.5}} for m in (llama_family.ft1, llama_family.ft2)
        ],
    }
    merge(config, tmp_path, tmp_path / "out", "--max-shard-size", "3KB")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    seen, total, kinds = {}, 0, set()
    for shard in sorted((tmp_path / "out").glob("model-*.safetensors")):
        header, body = read_shard(shard)
        header.pop("__metadata__", None)
        size = sum(end - start for start, end in (entry["data_offsets"] for entry in header.values()))
        assert size == len(body)
        if size > limit:
            assert len(header) == 1, f"{shard.name}: {size} bytes in {len(header)} tensors"
            kinds.add("single tensor over the limit")
        else:
            kinds.add("within the limit" if len(header) > 1 else "single tensor")
        seen.update({name: shard.name for name in header})
        total += size
    assert kinds >= {"single tensor over the limit", "within the limit"}  # both branches were exercised
    assert seen == index["weight_map"] and total == index["metadata"]["total_size"]
    assert set(seen) == set(merged(llama_family.ft1))


# ---- LoRA ----------------------------------------------------------------------------------------


def test_lora_merge_bf16_fast_path_equals_the_float32_reference_rounded_once(tmp_path) -> None:
    """A bfloat16 base takes the blocked path (widen a block to float32, add s·B·A, round once): every
    adapted tensor equals (W.float() + s·B·A).bfloat16(); rounding ΔW to bfloat16 first would differ."""
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_llama_config()).to(torch.bfloat16)
    base = save_model(model, tmp_path / "base")
    r, alpha = 2, 6
    adapter = write_adapter_dir(tmp_path / "adapter", {Q_PROJ: (32, 32), V_PROJ: (16, 32)}, r=r, alpha=alpha)
    result = run_cli("lora", "merge", base, adapter, "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output
    out, before, factors = (
        merged(tmp_path / "out"),
        merged(base),
        load_file(adapter / "adapter_model.safetensors"),
    )
    assert set(out) == set(before)
    naive_differs = False
    for name, tensor in out.items():
        assert tensor.dtype == torch.bfloat16, name
        module = name.removesuffix(".weight")
        if module not in (Q_PROJ, V_PROJ):
            assert torch.equal(tensor, before[name]), name
            continue
        a, b = factors[f"{PREFIX}{module}.lora_A.weight"], factors[f"{PREFIX}{module}.lora_B.weight"]
        expected = torch.addmm(before[name].float(), b * (alpha / r), a).to(torch.bfloat16)
        assert torch.equal(tensor, expected), name
        naive = before[name] + (b * (alpha / r) @ a).to(torch.bfloat16)  # rounded twice
        naive_differs |= not torch.equal(naive, expected)
    assert naive_differs


def test_lora_concat_when_the_first_adapter_holds_only_saved_tensors(tmp_path) -> None:
    """The factor dtype comes from the first LoRA module of any adapter (this used to stop with an
    uncaught StopIteration when the first adapter had only modules_to_save)."""
    saved = write_adapter_dir(tmp_path / "saved", {}, tensors={f"{PREFIX}model.norm.weight": torch.ones(32)})
    lora = write_adapter_dir(tmp_path / "lora", {Q_PROJ: (32, 32)})
    result = run_cli("lora", "concat", saved, lora, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    keys = set(load_file(tmp_path / "out" / "adapter_model.safetensors"))
    assert keys == {
        f"{PREFIX}model.norm.weight",
        f"{PREFIX}{Q_PROJ}.lora_A.weight",
        f"{PREFIX}{Q_PROJ}.lora_B.weight",
    }


# ---- quick-eval ----------------------------------------------------------------------------------

SPECIALS = [f"<s{i}>" for i in range(9)]  # decode to nothing: tokens generated, no characters shown


def bigram_model(path: Path, transitions: dict[str, str]) -> Path:
    """A Llama whose greedy next token depends only on the current token (attention and MLP write
    nothing; one-hot embeddings; lm_head maps each token to its successor), with a character tokenizer
    that also knows the special tokens ``SPECIALS``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, processors

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *SPECIALS, *CHARS])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS,
    )
    hidden = 64
    assert len(vocab) <= hidden
    config = transformers.LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        for norm in (
            model.model.norm,
            model.model.layers[0].input_layernorm,
            model.model.layers[0].post_attention_layernorm,
        ):
            norm.weight.fill_(1.0)
        model.model.embed_tokens.weight[:, : len(vocab)] = torch.eye(len(vocab))
        for current, following in transitions.items():
            model.lm_head.weight[vocab[following], vocab[current]] = 1.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def chain(*tokens: str) -> dict[str, str]:
    """Transitions that make the model write ``tokens[1:]`` after ``tokens[0]``."""
    return dict(zip(tokens[:-1], tokens[1:], strict=True))


def test_eval_default_max_new_tokens_is_the_longest_answer_plus_8(tmp_path) -> None:
    """Both answers have 2 tokens, so the default limit is 10 generated tokens. From "q" the model
    writes a, 8 silent specials, b, c: "ab" takes exactly 10 tokens and is right (9 would give "a",
    11 "abc"); from "r" it writes d, 9 silent specials, b: "db" takes 11 and is wrong by default."""
    transitions = {
        **chain("q", "a", *SPECIALS[1:], "b", "c"),
        **chain("r", "d", SPECIALS[0], SPECIALS[1]),
    }
    model = bigram_model(tmp_path / "bigram", transitions)
    exact = tmp_path / "exact.jsonl"
    exact.write_text(json.dumps({"prompt": "q", "answer": "ab"}) + "\n")
    longer = tmp_path / "longer.jsonl"
    longer.write_text(json.dumps({"prompt": "r", "answer": "db"}) + "\n")

    def accuracy(*extra: str) -> dict[str, float]:
        """Accuracy per data file, through the CLI and its --json output."""
        scores = tmp_path / "scores.json"
        result = run_cli(
            "eval", model, "--data", exact, "--data", longer, "--device", "cpu", "--json", scores, *extra
        )
        assert result.exit_code == 0, result.output
        return {stem: row["accuracy"] for stem, row in json.loads(scores.read_text())[str(model)].items()}

    assert accuracy() == {"exact": 1.0, "longer": 0.0}
    assert accuracy("--max-new-tokens", "11") == {"exact": 0.0, "longer": 1.0}  # the chains are as described
    assert accuracy("--max-new-tokens", "9") == {"exact": 0.0, "longer": 0.0}
