"""Tokenizer merging (mergebench/vocab.py): finetunes that added different tokens merge into one vocabulary
whose embedding/head rows are aligned by token, as mergekit 0.1.5 does for the same YAML.

Every model and tokenizer is built here with the ``tokenizers`` library and transformers
(tests/tokenizer_models.py); expected rows are computed independently from the inputs' files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mergebench import vocab as vocab_module
from mergebench.vocab import CHAT_TEMPLATES
from tests.conftest import assert_clean_failure, run_cli, write_config
from tests.mergekit_ref import MERGEKIT_YAML, load_tensors, mismatches, run_mergekit
from tests.tokenizer_models import (
    CHATML,
    PLAIN_TEMPLATE,
    byte_bpe,
    finetune,
    load_state,
    save,
    tiny_bert,
    tiny_llama,
    unigram,
    vocab_of,
    wordpiece,
)

IM = ("<|im_start|>", "<|im_end|>")
TOOLS = ("<tool_call>", "</tool_call>")
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")
F32 = {"dtype": "float32", "out_dtype": "float32"}


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> dict[str, Path]:
    """A bf16 byte-level-BPE tiny Llama base and finetunes that added tokens (resized embeddings):
    ft1 the ChatML tokens (special), ft2 tool-call tokens (plain), ft3 <|im_start|> and <extra>;
    ft0 added none."""
    root = tmp_path_factory.mktemp("bpe")
    tokenizer = byte_bpe()
    tokenizer.chat_template = PLAIN_TEMPLATE
    model = tiny_llama(len(tokenizer))
    base = save(model, tokenizer, root / "base")
    return {
        "base": base,
        "ft1": finetune(model, base, root / "ft1", 1, special=IM, chat_template=CHATML),
        "ft2": finetune(model, base, root / "ft2", 2, plain=TOOLS, chat_template=CHATML),
        "ft3": finetune(model, base, root / "ft3", 3, special=(IM[0],), plain=("<extra>",)),
        "ft0": finetune(model, base, root / "ft0", 4),
    }


def merge(tmp_path: Path, config: dict, name: str = "out") -> Path:
    out = tmp_path / name
    result = run_cli("merge", write_config(tmp_path / f"{name}.yaml", config), out, "--no-progress")
    assert result.exit_code == 0, result.output
    return out


def task_arithmetic(paths: dict[str, Path], tokenizer: dict | str, **extra) -> dict:
    config = {
        "merge_method": "task_arithmetic",
        "base_model": str(paths["base"]),
        "models": [
            {"model": str(paths["ft1"]), "parameters": {"weight": 0.7}},
            {"model": str(paths["ft2"]), "parameters": {"weight": 0.5}},
        ],
        "parameters": {"lambda": 0.9},
        **F32,
        **extra,
    }
    key = "tokenizer_source" if isinstance(tokenizer, str) else "tokenizer"
    return {**config, key: tokenizer}


def expected_rows(models: list[Path], out_vocab: dict[str, int], name: str, combine) -> dict[int, np.ndarray]:
    """Independently: for each output token, the rows of the models that have it (by token string);
    ``combine(rows)`` gets a list with None where a model lacks the token."""
    states = [load_state(path)[name] for path in models]
    vocabs = [vocab_of(path) for path in models]
    expected = {}
    for token, index in out_vocab.items():
        rows = [
            state[vocab[token]] if token in vocab and vocab[token] < len(state) else None
            for state, vocab in zip(states, vocabs, strict=True)
        ]
        expected[index] = combine(rows)
    return expected


def ta_combine(weights, lam):
    """task arithmetic where every model has the token; else the one model that has it (mergekit)."""

    def combine(rows):
        present = [r for r in rows if r is not None]
        if len(present) == len(rows):
            base, others = rows[0], rows[1:]
            return base + lam * sum(w * (r - base) for w, r in zip(weights, others, strict=True))
        assert len(present) == 1, rows
        return present[0]

    return combine


# ---- union: vocabulary, rows, flags, the model runs ----------------------------------------------------


def test_union_vocabulary_rows_and_a_running_model(bpe, tmp_path):
    import transformers

    out = merge(tmp_path, task_arithmetic(bpe, "union"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    vocab = tokenizer.get_vocab()
    inputs = [vocab_of(bpe[n]) for n in ("base", "ft1", "ft2")]
    assert set(vocab) == set().union(*inputs)
    base_vocab = inputs[0]
    assert all(vocab[t] == i for t, i in base_vocab.items())  # the base's ids stay
    assert sorted(vocab[t] for t in (*IM, *TOOLS)) == list(range(len(base_vocab), len(base_vocab) + 4))
    # flags: ChatML tokens stay special (and extra special), tool tokens stay plain added tokens
    added = {info.content: info for info in tokenizer.added_tokens_decoder.values()}
    assert all(added[t].special for t in IM) and not any(added[t].special for t in TOOLS)
    assert set(IM) <= set(tokenizer.all_special_tokens)
    assert tokenizer.bos_token == "<s>" and tokenizer.eos_token_id == base_vocab["</s>"]
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(vocab) and config["eos_token_id"] == base_vocab["</s>"]

    merged = load_state(out)
    models = [bpe["base"], bpe["ft1"], bpe["ft2"]]
    for name in VOCAB_TENSORS:
        assert merged[name].shape == (len(vocab), 32)
        expected = expected_rows(models, vocab, name, ta_combine([0.7, 0.5], 0.9))
        for index, row in expected.items():
            np.testing.assert_allclose(
                merged[name][index], row, rtol=1e-5, atol=1e-6, err_msg=f"{name}[{index}]"
            )

    text = "<|im_start|>user\nhello world<|im_end|>\n<tool_call>merging</tool_call>"
    ids = tokenizer(text)["input_ids"]
    assert {vocab[t] for t in (*IM, *TOOLS)} <= set(ids)
    assert tokenizer.decode(ids) == text
    assert (
        tokenizer.decode(ids, skip_special_tokens=True) == "user\nhello world\n<tool_call>merging</tool_call>"
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(vocab)) and torch.isfinite(logits).all()
    generated = model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == len(ids) + 3 and int(generated.max()) < len(vocab)


# ---- mergekit 0.1.5 gives the same model for the same YAML ----------------------------------------------


def assert_same_model_by_token(ours: Path, theirs: Path) -> None:
    """Same tensors; vocabulary tensors compared row by row for the same token (mergekit orders tokens
    added by different models by set iteration, which varies between its runs), padding rows by index;
    every value within one bf16 rounding step."""
    mine, ref = load_tensors(ours), load_tensors(theirs)
    assert sorted(mine) == sorted(ref)
    vocab, other = vocab_of(ours), vocab_of(theirs)
    assert set(vocab) == set(other)
    ours_ids = torch.tensor([vocab[t] for t in vocab])
    theirs_ids = torch.tensor([other[t] for t in vocab])
    bad = {}
    for name, tensor in mine.items():
        reference = ref[name]
        assert tensor.shape == reference.shape and tensor.dtype == reference.dtype, name
        if name in VOCAB_TENSORS:
            pads = torch.arange(len(vocab), tensor.shape[0])
            tensor = torch.cat([tensor[ours_ids], tensor[pads]])
            reference = torch.cat([reference[theirs_ids], reference[pads]])
        if count := mismatches(tensor, reference):
            bad[name] = f"{count}/{tensor.numel()}"
    assert not bad, f"differs from mergekit by more than one rounding step: {bad}"
    assert (
        json.loads((ours / "config.json").read_text())["vocab_size"]
        == json.loads((theirs / "config.json").read_text())["vocab_size"]
    )


@pytest.mark.parametrize("source", ["union", "base", "ft1"])
def test_equals_mergekit(bpe, tmp_path, source):
    config = task_arithmetic(bpe, str(bpe.get(source, source)), out_dtype="bfloat16")
    ours = merge(tmp_path, config)
    assert_same_model_by_token(ours, run_mergekit(config, tmp_path / "mergekit", copy_tokenizer=True))


def test_tokens_overrides_and_padding_equal_mergekit(bpe, tmp_path):
    """linear over ft1, ft2, ft3: <|im_start|> is in two of three (the third gets their mean), the
    overrides fill or force rows, new tokens come from a model's token or are zero, rows are padded."""
    tokens = {
        "<|im_end|>": {"source": {"kind": "zero"}},
        "<tool_call>": {
            "source": {"kind": "model_token", "model": str(bpe["ft1"]), "token": "a"},
            "force": True,
        },
        "<new>": {"source": {"kind": "model_token", "model": str(bpe["ft3"]), "token_id": 7}},
        "<also_new>": {"source": {"kind": "zero"}},
        "<extra>": {"source": str(bpe["ft3"])},
    }
    config = {
        "merge_method": "linear",
        "models": [
            {"model": str(bpe["ft1"]), "parameters": {"weight": 0.5}},
            {"model": str(bpe["ft2"]), "parameters": {"weight": 0.3}},
            {"model": str(bpe["ft3"]), "parameters": {"weight": 0.2}},
        ],
        "tokenizer": {"source": "union", "tokens": tokens, "pad_to_multiple_of": 32},
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }
    ours = merge(tmp_path, config)
    vocab = vocab_of(ours)
    assert {"<new>", "<also_new>"} <= set(vocab) and len(load_tensors(ours)["lm_head.weight"]) % 32 == 0
    assert_same_model_by_token(ours, run_mergekit(config, tmp_path / "mergekit", copy_tokenizer=True))


def test_tokens_overrides_rows(bpe, tmp_path):
    """Each override, checked against the inputs' rows (task arithmetic: base + λ Σ w (θ_i − θ_base))."""
    tokens = {
        IM[1]: {"source": {"kind": "zero"}},  # ft1 has it: base and ft2 get zeros
        TOOLS[0]: {
            "source": {"kind": "model_token", "model": str(bpe["base"]), "token": "a"},
            "force": True,
        },
        "<new>": {"source": {"kind": "model_token", "model": str(bpe["ft1"]), "token_id": 5}},
        "<void>": {"source": {"kind": "zero"}},
    }
    out = merge(tmp_path, task_arithmetic(bpe, {"source": "union", "tokens": tokens}))
    vocab, merged = vocab_of(out), load_state(out)
    base, ft1 = load_state(bpe["base"]), load_state(bpe["ft1"])
    base_vocab, ft1_vocab = vocab_of(bpe["base"]), vocab_of(bpe["ft1"])
    for name in VOCAB_TENSORS:
        row = merged[name]
        np.testing.assert_allclose(
            row[vocab[IM[1]]], 0.9 * 0.7 * ft1[name][ft1_vocab[IM[1]]], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(row[vocab[TOOLS[0]]], base[name][base_vocab["a"]], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(row[vocab["<new>"]], ft1[name][5], rtol=1e-5, atol=1e-6)
        assert not row[vocab["<void>"]].any()


def test_pad_to_multiple_of(bpe, tmp_path):
    config = task_arithmetic(bpe, {"source": "union", "pad_to_multiple_of": 64})
    path = write_config(tmp_path / "pad.yaml", config)
    result = run_cli("merge", path, tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    vocab, merged = vocab_of(out), load_state(out)
    rows = 64 * -(-len(vocab) // 64)
    assert rows > len(vocab)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == rows
    note = [line for line in result.stderr.splitlines() if "pad_to_multiple_of" in line]
    assert note and f"{rows} embedding rows" in note[0]
    # padding rows: the method over each input's mean aligned row (mergekit)
    models = [bpe["base"], bpe["ft1"], bpe["ft2"]]
    for name in VOCAB_TENSORS:
        aligned = expected_rows(models, vocab, name, lambda rows: rows)
        means = []
        for k in range(3):
            fill = [
                aligned[i][k] if aligned[i][k] is not None else next(r for r in aligned[i] if r is not None)
                for i in range(len(vocab))
            ]
            means.append(np.mean(fill, axis=0))
        pad = means[0] + 0.9 * (0.7 * (means[1] - means[0]) + 0.5 * (means[2] - means[0]))
        assert merged[name].shape[0] == rows
        for index in range(len(vocab), rows):
            np.testing.assert_allclose(merged[name][index], pad, rtol=1e-4, atol=1e-6)
    transformers_model_runs(out, len(vocab))


def transformers_model_runs(out: Path, tokens: int) -> None:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[0, 5, tokens - 1]])).logits
    assert torch.isfinite(logits).all()


def test_base_source_with_different_sizes(bpe, tmp_path):
    out = merge(tmp_path, task_arithmetic(bpe, "base"))
    base_vocab = vocab_of(bpe["base"])
    assert vocab_of(out) == base_vocab
    assert (out / "tokenizer.json").read_bytes() == (bpe["base"] / "tokenizer.json").read_bytes()
    merged = load_state(out)
    for name in VOCAB_TENSORS:
        expected = expected_rows(
            [bpe["base"], bpe["ft1"], bpe["ft2"]], base_vocab, name, ta_combine([0.7, 0.5], 0.9)
        )
        assert merged[name].shape[0] == len(base_vocab)
        np.testing.assert_allclose(
            merged[name], np.stack([expected[i] for i in range(len(base_vocab))]), atol=1e-6
        )
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(base_vocab)


def test_same_vocabularies_merge_as_without_tokenizer_keys(bpe, tmp_path):
    """tokenizer_source base or union over models that share the vocabulary changes nothing: same bytes."""
    plain = {
        "merge_method": "linear",
        "models": [
            {"model": str(bpe[n]), "parameters": {"weight": w}} for n, w in (("base", 0.4), ("ft0", 0.6))
        ],
        "dtype": "bfloat16",
    }
    without = merge(tmp_path, plain, "without")
    for source in ("base", "union"):
        with_key = merge(tmp_path, {**plain, "tokenizer_source": source}, source)
        for path in without.iterdir():
            if path.name != "README.md":
                assert (with_key / path.name).read_bytes() == path.read_bytes(), (source, path.name)


# ---- whole-tensor methods and every executor path ------------------------------------------------------


def aligned_inputs(models: list[Path], out_vocab: dict[str, int], name: str) -> list[torch.Tensor]:
    """Each model's tensor re-indexed to the output vocabulary, built independently of vocab.py: its own
    row, else the one model's that has the token (every test token is in all models or in one)."""
    per_token = expected_rows(models, out_vocab, name, lambda rows: rows)
    out = []
    for k in range(len(models)):
        rows = []
        for index in range(len(out_vocab)):
            row = per_token[index][k]
            rows.append(row if row is not None else next(r for r in per_token[index] if r is not None))
        out.append(torch.tensor(np.stack(rows), dtype=torch.float32))
    return out


def test_ties_on_aligned_rows_every_path(bpe, monkeypatch):
    """TIES trims by whole-tensor magnitude: its thresholds must be those of the aligned tensors (as in
    mergekit), whether rows are streamed in blocks (CPU) or the aligned tensors are built whole (GPU path)."""
    import mergebench
    from mergebench.execute import run_op
    from mergebench.methods.registry import get_method
    from mergebench.planner import RowMerge, op_refs

    config = {
        "merge_method": "ties",
        "base_model": str(bpe["base"]),
        "models": [
            {"model": str(bpe["ft1"]), "parameters": {"weight": 1.0, "density": 0.5}},
            {"model": str(bpe["ft2"]), "parameters": {"weight": 0.6, "density": 0.3}},
        ],
        "tokenizer_source": "union",
        "dtype": "float32",
    }
    plan = mergebench.plan(config)
    ops = [op for op in plan.ops if isinstance(op, RowMerge)]
    assert sorted(op.output.name for op in ops) == sorted(VOCAB_TENSORS)
    union: dict[str, int] = {}  # base tokens, then each finetune's new ones, each in id order
    for path in (bpe["base"], bpe["ft1"], bpe["ft2"]):
        for token, _ in sorted(vocab_of(path).items(), key=lambda item: item[1]):
            union.setdefault(token, len(union))
    for op in ops:
        tensors = [ref.read() for ref in op_refs(op)]
        streamed = run_op(op, [t.clone() for t in tensors], chunked=True)
        whole = run_op(op, [t.clone() for t in tensors], chunked=False)
        base, *models = aligned_inputs([bpe["base"], bpe["ft1"], bpe["ft2"]], union, op.output.name)
        reference = get_method("ties")(
            models, base, name=op.output.name, weight=[1.0, 0.6], density=[0.5, 0.3]
        ).to(op.output.dtype)
        torch.testing.assert_close(streamed, reference, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(whole, reference, rtol=1e-6, atol=1e-7)
        # the strided samples TIES' thresholds take of large tensors, gathered in small blocks here
        monkeypatch.setattr(vocab_module, "SAMPLE_BLOCK", 64)
        gather = vocab_module.RowGather(op.rows, tensors, lambda t: t.to(torch.float32), None)
        inputs = vocab_module.RowInputs(gather, op.output.shape, True, 2, lambda: torch.empty(0))
        n = inputs.numel
        for start, step in ((0, 1), (0, 7), (5, 64), (3, 1000)):
            assert torch.equal(inputs.model(1, start, n, step), gather.flat(2, start, n)[::step])
            assert torch.equal(inputs.base(start, n, step), gather.flat(0, start, n)[::step])


# ---- other tokenizer models, tied embeddings -------------------------------------------------------------


def test_unigram_sentencepiece_union(tmp_path):
    import transformers

    tokenizer = unigram()
    model = tiny_llama(len(tokenizer), dtype=torch.float32)
    base = save(model, tokenizer, tmp_path / "base")
    ft1 = finetune(model, base, tmp_path / "ft1", 1, special=IM)
    ft2 = finetune(model, base, tmp_path / "ft2", 2, plain=("▁merging_tokens",))
    config = {
        "merge_method": "linear",
        "models": [{"model": str(p), "parameters": {"weight": w}} for p, w in ((ft1, 0.6), (ft2, 0.4))],
        "tokenizer_source": "union",
        **F32,
    }
    out = merge(tmp_path, config)
    merged_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    vocab = merged_tokenizer.get_vocab()
    assert type(merged_tokenizer.backend_tokenizer.model).__name__ == "Unigram"
    assert set(vocab) == set(vocab_of(ft1)) | set(vocab_of(ft2))
    text = "<|im_start|>hello world merging tokenizers<|im_end|>"
    ids = merged_tokenizer(text)["input_ids"]
    ft1_tokenizer = transformers.AutoTokenizer.from_pretrained(ft1)  # has the same ids for these tokens
    assert vocab[IM[0]] in ids and ids == ft1_tokenizer(text)["input_ids"]
    assert merged_tokenizer.decode(ids) == ft1_tokenizer.decode(ids)
    assert merged_tokenizer.decode(merged_tokenizer("a ▁merging_tokens b")["input_ids"]).endswith("b")

    def linear(rows):
        present = [(w, r) for w, r in zip((0.6, 0.4), rows, strict=True) if r is not None]
        return sum(w * r for w, r in present) / sum(w for w, _ in present)

    merged = load_state(out)
    for name in VOCAB_TENSORS:
        for index, row in expected_rows([ft1, ft2], vocab, name, linear).items():
            np.testing.assert_allclose(merged[name][index], row, rtol=1e-5, atol=1e-6)
    transformers_model_runs(out, len(vocab))


def test_wordpiece_bert_union(tmp_path):
    import transformers

    tokenizer = wordpiece()
    model = tiny_bert(len(tokenizer))
    base = save(model, tokenizer, tmp_path / "base")
    ft1 = finetune(model, base, tmp_path / "ft1", 1, special=("[TOOL]",))
    ft2 = finetune(model, base, tmp_path / "ft2", 2, plain=("zebra",))
    config = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": [
            {"model": str(ft1), "parameters": {"weight": 0.7}},
            {"model": str(ft2), "parameters": {"weight": 0.5}},
        ],
        "parameters": {"lambda": 0.9},
        "tokenizer_source": "union",
        **F32,
    }
    out = merge(tmp_path, config)
    merged_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    vocab = merged_tokenizer.get_vocab()
    assert type(merged_tokenizer.backend_tokenizer.model).__name__ == "WordPiece"
    assert {"[TOOL]", "zebra"} <= set(vocab) and len(vocab) == len(vocab_of(base)) + 2
    ids = merged_tokenizer("a zebra [TOOL] merges")["input_ids"]
    assert (
        ids[0] == vocab["[CLS]"]
        and ids[-1] == vocab["[SEP]"]
        and vocab["zebra"] in ids
        and vocab["[TOOL]"] in ids
    )
    merged = load_state(out)
    for name in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):
        assert merged[name].shape[0] == len(vocab)
        for index, row in expected_rows([base, ft1, ft2], vocab, name, ta_combine([0.7, 0.5], 0.9)).items():
            np.testing.assert_allclose(merged[name][index], row, rtol=1e-5, atol=1e-6)
    bert = transformers.BertForMaskedLM.from_pretrained(out)
    with torch.no_grad():
        logits = bert(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(vocab)) and torch.isfinite(logits).all()


def test_tied_embeddings_stay_tied(tmp_path):
    import transformers

    tokenizer = byte_bpe()
    model = tiny_llama(len(tokenizer), tied=True, dtype=torch.float32)
    base = save(model, tokenizer, tmp_path / "base")
    ft1 = finetune(model, base, tmp_path / "ft1", 1, special=IM)
    ft2 = finetune(model, base, tmp_path / "ft2", 2, plain=TOOLS)
    out = merge(tmp_path, {**task_arithmetic({"base": base, "ft1": ft1, "ft2": ft2}, "union")})
    merged = load_state(out)
    assert "lm_head.weight" not in merged
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["vocab_size"] == len(tokenizer) + 4
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    vocab = vocab_of(out)
    for index, row in expected_rows(
        [base, ft1, ft2], vocab, VOCAB_TENSORS[0], ta_combine([0.7, 0.5], 0.9)
    ).items():
        np.testing.assert_allclose(merged[VOCAB_TENSORS[0]][index], row, rtol=1e-5, atol=1e-6)


# ---- chat templates ------------------------------------------------------------------------------------


def test_chat_template_auto_named_and_inline(bpe, tmp_path):
    import transformers

    auto = merge(tmp_path, task_arithmetic(bpe, "union", chat_template="auto"), "auto")
    assert transformers.AutoTokenizer.from_pretrained(auto).chat_template == CHATML  # 2 of 3 inputs use it
    # a chat template alone: the base's tokenizer with the template; tensors as without any tokenizer key
    plain = task_arithmetic(bpe, "base")
    del plain["tokenizer_source"]
    plain["models"] = [{"model": str(bpe["ft0"]), "parameters": {"weight": 0.5}}]
    named = merge(tmp_path, {**plain, "chat_template": "llama3"}, "named")
    without = merge(tmp_path, plain, "without")
    assert transformers.AutoTokenizer.from_pretrained(named).chat_template == CHAT_TEMPLATES["llama3"]
    shards = sorted(p.name for p in without.glob("*.safetensors"))
    assert shards and all((named / n).read_bytes() == (without / n).read_bytes() for n in shards)
    inline = "{% for message in messages %}[{{ message['role'] }}] {{ message['content'] }}\n{% endfor %}"
    written = merge(tmp_path, {**plain, "chat_template": inline}, "inline")
    tokenizer = transformers.AutoTokenizer.from_pretrained(written)
    assert tokenizer.chat_template == inline.strip() or tokenizer.chat_template == inline
    on_disk = [
        (written / "chat_template.jinja").is_file(),
        "chat_template" in json.loads((written / "tokenizer_config.json").read_text()),
    ]
    assert any(on_disk)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert rendered == "[user] hi\n"


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there "}, {"role": "assistant", "content": " Hello!"}],
    [
        {"role": "system", "content": " be nice "},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
    ],
    [{"role": "user", "content": "one"}],
    [
        {"role": "system", "content": "s1"},
        {"role": "user_context", "content": "ctx"},
        {"role": "user", "content": "q"},
        {"role": "system", "content": "s2"},
    ],
]


def test_built_in_templates_render_as_mergekits(bpe):
    from transformers import AutoTokenizer

    directory = (
        MERGEKIT_YAML.parents[1]
        / "lib"
        / "python3.11"
        / "site-packages"
        / "mergekit"
        / "_data"
        / "chat_templates"
    )
    if not directory.is_dir():
        pytest.fail(f"{directory} is missing: run `bash tools/setup_mergekit.sh`")
    assert sorted(p.stem for p in directory.glob("*.jinja")) == sorted(CHAT_TEMPLATES)
    tokenizer = AutoTokenizer.from_pretrained(bpe["base"])

    def render(template, conversation, prompt):
        try:
            return tokenizer.apply_chat_template(
                conversation, chat_template=template, tokenize=False, add_generation_prompt=prompt
            )
        except Exception as exc:  # mistral refuses some conversations: it must refuse the same ones
            return f"error: {exc}"

    for name, ours in CHAT_TEMPLATES.items():
        theirs = (directory / f"{name}.jinja").read_text()
        for conversation in CONVERSATIONS:
            for prompt in (False, True):
                assert render(ours, conversation, prompt) == render(theirs, conversation, prompt), name


# ---- up-front errors, self-check --------------------------------------------------------------------------


def no_tensor_reads(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a tensor was read before the error")

    monkeypatch.setattr("mergebench.io.checkpoint.read_tensor", refuse)


def error_cases(bpe, wordpiece_llama):
    ft1, ft2 = str(bpe["ft1"]), str(bpe["ft2"])
    model_token = {"kind": "model_token", "model": ft1}
    return {
        "unknown token": (
            {"source": "union", "tokens": {"<x>": {"source": {**model_token, "token": "<nope>"}}}},
            4,
            ["tokenizer.tokens.<x>.source.token", "'<nope>' is not in"],
        ),
        "token in no model, no source": (
            {"source": "union", "tokens": {"<x>": {}}},
            4,
            ["tokenizer.tokens.<x>", "give a source"],
        ),
        "token_id out of range": (
            {"source": "union", "tokens": {"<x>": {"source": {**model_token, "token_id": 9999}}}},
            4,
            ["tokenizer.tokens.<x>.source.token_id", "9999"],
        ),
        "model lacks the token": (
            {"source": "union", "tokens": {IM[0]: {"source": ft2}}},
            4,
            [f"tokenizer.tokens.{IM[0]}.source", "has no token"],
        ),
        "model not an input": (
            {"source": "union", "tokens": {"<x>": {"source": "/elsewhere/model"}}},
            2,
            ["tokenizer.tokens.<x>.source", "not a model named in the config"],
        ),
        "bad source kind": (
            {"source": "union", "tokens": {"<x>": {"source": {"kind": "mean"}}}},
            2,
            ["tokenizer.tokens.<x>.source", "kind: model_token"],
        ),
        "both token and token_id": (
            {"source": "union", "tokens": {"<x>": {"source": {**model_token, "token": "a", "token_id": 1}}}},
            2,
            ["tokenizer.tokens.<x>.source", "exactly one of 'token' and 'token_id'"],
        ),
        "force without source": (
            {"source": "union", "tokens": {"a": {"force": True}}},
            2,
            ["tokenizer.tokens.a.force"],
        ),
        "unknown tokenizer source": ({"source": "everything"}, 2, ["tokenizer.source", "'everything'"]),
        "pad zero": ({"source": "union", "pad_to_multiple_of": 0}, 2, ["tokenizer.pad_to_multiple_of"]),
        "BPE vs WordPiece": (wordpiece_llama, 4, ["tokenizer_source: union", "WordPiece", "BPE"]),
        "unknown chat template": ("chatlm", 2, ["chat_template", "'chatlm'"]),
        "both keys": ("both", 2, ["give either tokenizer_source or tokenizer"]),
    }


@pytest.fixture(scope="module")
def wordpiece_llama(tmp_path_factory) -> Path:
    tokenizer = wordpiece()
    return save(tiny_llama(len(tokenizer)), tokenizer, tmp_path_factory.mktemp("wp") / "model")


@pytest.mark.parametrize(
    "case",
    [
        "unknown token",
        "token in no model, no source",
        "token_id out of range",
        "model lacks the token",
        "model not an input",
        "bad source kind",
        "both token and token_id",
        "force without source",
        "unknown tokenizer source",
        "pad zero",
        "BPE vs WordPiece",
        "unknown chat template",
        "both keys",
    ],
)
def test_errors_up_front(bpe, wordpiece_llama, tmp_path, monkeypatch, case):
    setting, code, fragments = error_cases(bpe, wordpiece_llama)[case]
    if case == "BPE vs WordPiece":
        config = task_arithmetic(bpe, "union")
        config["models"][1]["model"] = str(setting)
    elif case == "unknown chat template":
        config = task_arithmetic(bpe, "union", chat_template=setting)
    elif case == "both keys":
        config = {**task_arithmetic(bpe, "union"), "tokenizer": {"source": "union"}}
    else:
        config = task_arithmetic(bpe, setting)
    no_tensor_reads(monkeypatch)
    result = run_cli("merge", write_config(tmp_path / "bad.yaml", config), tmp_path / "out", "--no-progress")
    assert result.exit_code == code, result.output
    assert_clean_failure(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_failed_self_check_publishes_nothing(bpe, tmp_path, monkeypatch):
    """A tokenizer whose ids outgrow the embeddings (here: one token too many, as a bug would write)."""
    import mergebench.vocab as vocab

    serialize = vocab._serialize

    def one_token_too_many(tokenizer):
        tokenizer.add_tokens(["<oops>"])
        return serialize(tokenizer)

    monkeypatch.setattr(vocab, "_serialize", one_token_too_many)
    config = write_config(tmp_path / "cfg.yaml", task_arithmetic(bpe, "union"))
    result = run_cli("merge", config, tmp_path / "out", "--no-progress")
    assert_clean_failure(result, "output self-check failed", "'<oops>'", "nothing was published")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_slices_keep_their_vocabulary(bpe, tmp_path):
    """A slices merge takes tokenizer keys where no row needs aligning; else a one-line error."""
    slices = [
        {"sources": [{"model": str(bpe["base"]), "layer_range": [0, 1]}]},
        {"sources": [{"model": str(bpe["ft0"]), "layer_range": [1, 2]}]},
    ]
    config = {
        "merge_method": "passthrough",
        "slices": slices,
        "tokenizer_source": "union",
        "chat_template": "chatml",
    }
    out = merge(tmp_path, config)
    assert vocab_of(out) == vocab_of(bpe["base"]) and (out / "chat_template.jinja").is_file()
    slices[1]["sources"][0]["model"] = str(bpe["ft1"])
    config["non_layer_source"] = {"before": str(bpe["base"]), "after": str(bpe["base"])}
    config["slices"] = slices
    bad = run_cli("merge", write_config(tmp_path / "bad.yaml", config), tmp_path / "bad", "--no-progress")
    assert_clean_failure(bad, "tokenizer:", "supported for 'models' configs")
