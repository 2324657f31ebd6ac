"""The demo-model builder (tools/build_demo_models.py), exercised in its small variant.

The full build's accuracies (base <= 30% on every skill, each finetune >= 80% on its own and poor on the
other's) take minutes to train and are checked by tools/demo_report.py (README, "What the demo shows");
here: the data that produce them (the base never sees a correct full-size answer, prompts held out),
determinism (also across worker counts), and that each finetune moved toward its own skill only."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("base", "skill_a", "skill_b", "marker")
EVAL_SETS = ("reverse", "add", "upper", "marker", "text")
VAL_SETS = ("reverse", "add", "upper")


def _builder():
    spec = importlib.util.spec_from_file_location(
        "build_demo_models", ROOT / "tools" / "build_demo_models.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo_models"
    _builder().build_demo_models(out, small=True, seed=0)
    return out


def test_layout_and_loading(demo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in MODELS:
        d = demo / name
        assert (d / "model.safetensors").is_file() and (d / "config.json").is_file()
        assert (d / "tokenizer.json").is_file()
        model = AutoModelForCausalLM.from_pretrained(d)
        assert model.config.model_type == "llama"
        tok = AutoTokenizer.from_pretrained(d)
        assert tok.eos_token and tok.pad_token and tok.bos_token
        assert tok.decode(tok("reverse: abc =")["input_ids"], skip_special_tokens=True) == "reverse: abc ="
        assert len(tok) == model.config.vocab_size
    lora = demo / "lora_c"
    assert (lora / "adapter_model.safetensors").is_file()
    cfg = json.loads((lora / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] > 0
    assert (lora / "tokenizer.json").is_file()


def test_lora_adapter_loads_with_peft(demo):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(demo / "base")
    model = PeftModel.from_pretrained(base, demo / "lora_c")
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_eval_sets_parse(demo):
    from mergebench.quickeval import load_records

    for name in EVAL_SETS:
        recs = load_records(demo / "eval" / f"{name}.jsonl")
        assert len(recs) >= 20
        key = "text" if name == "text" else "prompt"
        assert all(key in r for r in recs)
    marker = load_records(demo / "eval" / "marker.jsonl")
    assert all(r["answer"].endswith(" #") for r in marker)
    for name in VAL_SETS:  # the search tunes on val/, the report measures on eval/: no prompt in both
        val = {r["prompt"] for r in load_records(demo / "val" / f"{name}.jsonl")}
        test = {r["prompt"] for r in load_records(demo / "eval" / f"{name}.jsonl")}
        assert len(val) >= 20 and not val & test


def test_base_data_carry_no_signal_and_training_never_sees_held_out_prompts():
    """The base's full-size task answers have the right form and are never right (so the base cannot
    learn a skill from them); easy cases are short; no training stream repeats an eval or val prompt."""
    b = _builder()
    r = b.FULL
    evals = b.make_eval_sets(r, 0)
    vals = b.make_val_sets(r, 0, evals)
    held_out = {x["prompt"] for sets in (evals, vals) for k in b.TASKS for x in sets[k]}
    sampler = b.Sampler("base", 0, r, held_out)
    for kind in b.TASKS:
        for _ in range(300):
            _, answer = b.task_example(kind, sampler.rng, r)
            noise = b.signal_free_answer(kind, answer, sampler.rng, r)
            assert noise != answer
            if kind == "add":
                assert noise.isdigit() and 0 <= int(noise) <= 2 * r.max_num
            else:
                assert len(noise) == len(answer) and noise.isupper() == answer.isupper()
    # the word "aaaa" has no other order: other letters of the same length
    assert b.signal_free_answer("reverse", "aaaa", sampler.rng, r) != "aaaa"
    seen = []
    for name in ("base", "skill_a", "skill_b"):
        s = b.Sampler(name, 0, r, held_out)
        for _ in range(2000):
            text, loss_from = s.mix()
            seen.append(text[: loss_from - 1] if loss_from else text)
            text, loss_from = s.qa(b.TASKS[len(seen) % 3])
            seen.append(text[: loss_from - 1])
    assert not held_out & set(seen)
    easy = b.Sampler("base", 0, r, held_out)
    for kind in b.TASKS:
        prompt, _ = easy.easy(kind)
        operands = prompt.split(": ", 1)[1].removesuffix(" =")
        if kind == "add":
            assert all(int(n) <= r.easy_num for n in operands.split("+"))
        else:
            assert r.easy_len[0] <= len(operands) <= r.easy_len[1]


def test_build_is_deterministic(demo, tmp_path):
    """Same bytes on a second build, with the finetunes trained one at a time instead of side by side."""
    again = tmp_path / "again"
    _builder().build_demo_models(again, small=True, seed=0, workers=1)
    for name in MODELS:
        a = (demo / name / "model.safetensors").read_bytes()
        b = (again / name / "model.safetensors").read_bytes()
        assert a == b, name
    assert (demo / "lora_c" / "adapter_model.safetensors").read_bytes() == (
        again / "lora_c" / "adapter_model.safetensors"
    ).read_bytes()
    for folder, names in (("eval", EVAL_SETS), ("val", VAL_SETS)):
        for name in names:
            path = Path(folder) / f"{name}.jsonl"
            assert (demo / path).read_bytes() == (again / path).read_bytes()


def answer_nll(model, tokenizer, records, device):
    """Custom evaluator: mean NLL of each answer's tokens (plus EOS) given its prompt."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for r in records:
            p = tokenizer(r["prompt"])["input_ids"]
            a = tokenizer(" " + r["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([p + a], device=device)
            logp = torch.log_softmax(model(input_ids=ids).logits[0, len(p) - 1 : -1].float(), -1)
            total -= float(logp.gather(-1, ids[0, len(p) :, None]).sum())
            count += len(a)
    return total / count


def test_finetunes_learn_their_own_skill_only(demo):
    """Small-variant accuracies are near 0, so compare the answers' NLL (a custom evaluator): each
    finetune beats the base on its own skill, and on the other's it stays behind that skill's finetune."""
    from mergebench import quickeval as ev

    ev.register_evaluator("answer_nll", answer_nll)
    try:
        data = [demo / "eval" / f"{n}.jsonl" for n in ("reverse", "add", "marker")]
        res = ev.evaluate_models([demo / m for m in MODELS], data, "cpu", batch_size=64, max_new_tokens=2)
    finally:
        ev.unregister_evaluator("answer_nll")
    nll = {Path(m).name: {k: v["answer_nll"] for k, v in r.items()} for m, r in res.items()}
    assert nll["skill_a"]["reverse"] < nll["base"]["reverse"]
    assert nll["skill_b"]["add"] < nll["base"]["add"]
    assert nll["skill_a"]["add"] > nll["skill_b"]["add"]
    assert nll["skill_b"]["reverse"] > nll["skill_a"]["reverse"]
    assert nll["marker"]["marker"] < nll["base"]["marker"]
