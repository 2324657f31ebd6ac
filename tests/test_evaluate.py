"""Quick-eval: results checked against an independent, unbatched reference built on plain forward passes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mergebench import quickeval as ev
from mergebench.cli import main
from mergebench.errors import EvalError
from tests.conftest_demo import make_tiny_model_dir

PROMPTS = ["add: 1+2 =", "reverse: abc =", "x", "hello there", "12 + 30 =", "a.b.c", "zz", "upper: q ="]
TEXTS = ["the cat sees a dog.", "one two three", "q", "a much longer line of text, with commas: and 123 =+"]
MAX_NEW = 6


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [make_tiny_model_dir(root / f"m{i}", seed=i) for i in range(2)]


def _load(d):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)


def reference_greedy(model, tok, prompt, max_new):
    ids = tok(prompt)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
            nxt = int(torch.argmax(logits))
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
    return tok.decode(out, skip_special_tokens=True).split("\n", 1)[0].strip()


def reference_ppl(model, tok, texts):
    nll, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok(t)["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1]
            nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    return math.exp(nll / count)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory, model_dirs):
    """qa.jsonl: answers = model 0's reference outputs, every third deliberately wrong; text.jsonl; mixed."""
    root = tmp_path_factory.mktemp("data")
    model, tok = _load(model_dirs[0])
    outs = [reference_greedy(model, tok, p, MAX_NEW) for p in PROMPTS]
    qa = [
        {"prompt": p, "answer": (o + "!" if i % 3 == 0 else f"  {o} ")}
        for i, (p, o) in enumerate(zip(PROMPTS, outs, strict=True))
    ]
    n_right = sum(i % 3 != 0 for i in range(len(PROMPTS)))
    texts = [{"text": t} for t in TEXTS]
    return {
        "qa": write_jsonl(root / "qa.jsonl", qa),
        "text": write_jsonl(root / "text.jsonl", texts),
        "mixed": write_jsonl(root / "mixed.jsonl", [qa[0], texts[0], "", qa[1], texts[1]]),
        "expected_acc": n_right / len(PROMPTS),
        "outs": outs,
        "root": root,
    }


def test_device_auto_is_cpu_without_cuda():
    dev, dtype = ev.resolve_device("auto")
    if not torch.cuda.is_available():
        assert dev.type == "cpu" and dtype == torch.float32
    else:
        assert dev.type == "cuda" and dtype == torch.bfloat16
    assert ev.resolve_device("cpu")[0].type == "cpu"


def test_accuracy_and_perplexity_match_unbatched_reference(model_dirs, data):
    res = ev.evaluate(model_dirs[0], [data["qa"], data["text"]], "cpu", batch_size=3, max_new_tokens=MAX_NEW)
    assert set(res) == {"qa", "text"}
    assert res["qa"] == {"accuracy": data["expected_acc"], "perplexity": None, "n": len(PROMPTS)}
    model, tok = _load(model_dirs[0])
    want = reference_ppl(model, tok, TEXTS)
    assert res["text"]["accuracy"] is None and res["text"]["n"] == len(TEXTS)
    assert res["text"]["perplexity"] == pytest.approx(want, rel=1e-4)
    # batched generation with left padding gives the same strings as the unbatched loop
    gen = ev.greedy_generate(model, tok, PROMPTS, torch.device("cpu"), max_new_tokens=MAX_NEW, batch_size=8)
    assert gen == data["outs"]


def test_mixed_file_and_several_models(model_dirs, data):
    res = ev.evaluate_models(
        [str(d) for d in model_dirs], [data["mixed"], data["text"]], "cpu", max_new_tokens=MAX_NEW
    )
    assert list(res) == [str(d) for d in model_dirs]
    m0 = res[str(model_dirs[0])]
    assert m0["mixed"]["n"] == 4
    assert m0["mixed"]["accuracy"] == 0.5  # qa[0] wrong, qa[1] right
    model, tok = _load(model_dirs[0])
    assert m0["mixed"]["perplexity"] == pytest.approx(reference_ppl(model, tok, TEXTS[:2]), rel=1e-4)
    model1, tok1 = _load(model_dirs[1])
    m1 = res[str(model_dirs[1])]
    assert m1["text"]["perplexity"] == pytest.approx(reference_ppl(model1, tok1, TEXTS), rel=1e-4)
    table = ev.format_table(res)
    lines = table.splitlines()
    assert len(lines) == 2 + len(model_dirs)
    assert "mixed:acc" in lines[0] and "mixed:ppl" in lines[0] and "text:ppl" in lines[0]
    assert "text:acc" not in lines[0]  # empty for every model
    assert lines[2].startswith(str(model_dirs[0])) and "50.0%" in lines[2]


def test_default_max_new_tokens_from_answers(model_dirs, data):
    # answers are at most MAX_NEW tokens, so the default limit (longest answer + margin) sees all of them
    res = ev.evaluate(model_dirs[0], data["qa"], "cpu")
    model, tok = _load(model_dirs[0])
    longest = max(len(tok(o + "!", add_special_tokens=False)["input_ids"]) for o in data["outs"])
    limit = longest + ev.ANSWER_MARGIN_TOKENS
    outs = [reference_greedy(model, tok, p, limit) for p in PROMPTS]
    answers = [json.loads(x)["answer"] for x in data["qa"].read_text().splitlines()]
    assert res["qa"]["accuracy"] == sum(o == a.strip() for o, a in zip(outs, answers, strict=True)) / len(
        PROMPTS
    )


def test_custom_evaluator_appears_in_json_and_table(model_dirs, data, tmp_path):
    def n_prompts(model, tokenizer, records, device):
        assert isinstance(device, torch.device) and hasattr(model, "generate") and tokenizer.eos_token_id == 2
        return float(sum("prompt" in r for r in records))

    ev.register_evaluator("n_prompts", n_prompts)
    try:
        out = tmp_path / "res.json"
        runner = CliRunner()
        result = runner.invoke(
            main,
            [
                "eval",
                str(model_dirs[0]),
                "--data",
                str(data["qa"]),
                "--data",
                str(data["mixed"]),
                "--device",
                "cpu",
                "--json",
                str(out),
                "--batch-size",
                "2",
                "--max-new-tokens",
                str(MAX_NEW),
            ],
        )
        assert result.exit_code == 0, result.output
        assert "n_prompts" in result.output.splitlines()[0]
        got = json.loads(out.read_text())
        assert got == {
            str(model_dirs[0]): {
                "qa": {
                    "accuracy": data["expected_acc"],
                    "perplexity": None,
                    "n": len(PROMPTS),
                    "n_prompts": 8.0,
                },
                "mixed": {
                    "accuracy": 0.5,
                    "perplexity": pytest.approx(got[str(model_dirs[0])]["mixed"]["perplexity"]),
                    "n": 4,
                    "n_prompts": 2.0,
                },
            }
        }
        assert got[str(model_dirs[0])]["mixed"]["perplexity"] > 1.0
    finally:
        ev.unregister_evaluator("n_prompts")
    assert "n_prompts" not in ev.evaluate(model_dirs[0], data["text"], "cpu")["text"]


@pytest.mark.parametrize(
    "lines, fragment",
    [
        (['{"text": "ok"}', "", '{"prompt": "a", "answer": "b"', '{"text": "x"}'], ":3: invalid JSON"),
        (['{"text": "ok"}', '{"foo": 1}'], ":2: line has neither prompt/answer nor text"),
        (['{"prompt": "a"}'], ":1: missing 'answer'"),
        (["[1, 2]"], ":1: expected a JSON object"),
        ([], "data file is empty"),
        (["", "   "], "data file is empty"),
    ],
)
def test_bad_data_errors_name_file_and_line(model_dirs, tmp_path, lines, fragment):
    bad = write_jsonl(tmp_path / "bad.jsonl", lines) if lines else tmp_path / "bad.jsonl"
    if not lines:
        bad.write_text("")
    with pytest.raises(EvalError) as exc:
        ev.evaluate(model_dirs[0], bad, "cpu")
    msg = str(exc.value)
    assert str(bad) in msg and fragment in msg and "\n" not in msg
    result = CliRunner().invoke(main, ["eval", str(model_dirs[0]), "--data", str(bad), "--device", "cpu"])
    assert result.exit_code == EvalError.exit_code and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


def test_model_without_tokenizer(tmp_path, data):
    d = make_tiny_model_dir(tmp_path / "notok", with_tokenizer=False)
    with pytest.raises(EvalError, match="no tokenizer"):
        ev.evaluate(d, data["text"], "cpu")
    with pytest.raises(EvalError, match="model directory not found"):
        ev.evaluate(tmp_path / "missing", data["text"], "cpu")
    with pytest.raises(EvalError, match="data file not found"):
        ev.evaluate(d, tmp_path / "missing.jsonl", "cpu")


def test_cli_process_exits_cleanly_on_error(model_dirs, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"text": "a"}', "{nope"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mergebench",
            "eval",
            str(model_dirs[0]),
            "--data",
            str(bad),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EvalError.exit_code
    assert "Traceback" not in proc.stderr
    assert f"{bad}:2: invalid JSON" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_package_level_hook_and_merge_with_eval(model_dirs, data, tmp_path):
    """``mergebench.evaluate`` is the Python hook; ``merge --eval`` shows the merge beside its inputs."""
    import mergebench
    from tests.conftest import run_cli

    assert mergebench.evaluate(model_dirs[0], data["qa"], device="cpu", max_new_tokens=MAX_NEW)["qa"][
        "accuracy"
    ] == pytest.approx(data["expected_acc"])
    config = tmp_path / "avg.yaml"
    config.write_text(
        f"merge_method: linear\nmodels:\n  - {{model: {model_dirs[0]}, parameters: {{weight: 1.0}}}}\n"
        f"  - {{model: {model_dirs[1]}, parameters: {{weight: 0.0}}}}\ndtype: float32\n"
    )
    out = tmp_path / "merged"
    result = run_cli("merge", config, out, "--no-progress", "--eval", data["qa"], "--eval-device", "cpu")
    assert result.exit_code == 0, result.output
    rows = {
        line.split()[0]: line for line in result.output.splitlines() if line.startswith(("/", str(tmp_path)))
    }
    assert set(rows) == {str(model_dirs[0]), str(model_dirs[1]), str(out)}
    # weight 0 on the second model: the merge is the first model, so it scores exactly as it does
    assert rows[str(out)].split()[1:] == rows[str(model_dirs[0])].split()[1:]


class TooBig(Exception):
    """Stands in for an out-of-memory error: raised by the batch function below for batches over a limit."""


def test_batches_run_longest_first_shrink_on_error_and_keep_input_order():
    lengths = [3, 9, 1, 7, 7, 2, 5]
    seen: list[list[int]] = []
    shrinks = []

    def run(indices):
        seen.append(indices)
        if len(indices) > 2:
            raise TooBig("batch too large")
        return [f"item{i}" for i in indices]

    out = ev.map_in_batches(lengths, 4, run, shrink_on=(TooBig,), on_shrink=lambda: shrinks.append(1))
    assert out == [f"item{i}" for i in range(len(lengths))]
    assert seen[0] == [1, 3, 4, 6]  # longest first: 9, 7, 7, 5
    assert [len(b) for b in seen[1:]] == [2, 2, 2, 1]  # halved once, then kept at 2
    assert len(shrinks) == 1
    assert [i for b in seen[1:] for i in b] == [1, 3, 4, 6, 0, 5, 2]


def test_a_single_row_that_does_not_fit_is_a_clear_error():
    def run(indices):
        raise TooBig("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(EvalError, match="out of memory on a single row"):
        ev.map_in_batches([4, 2], 8, run, shrink_on=(TooBig,))
    with pytest.raises(TooBig):  # errors not named in shrink_on pass through untouched
        ev.map_in_batches([4, 2], 8, run)


@pytest.mark.parametrize("batch_size", [1, 2, None])
def test_results_do_not_depend_on_batch_size(model_dirs, data, batch_size):
    res = ev.evaluate(
        model_dirs[0], [data["qa"], data["text"]], "cpu", batch_size=batch_size, max_new_tokens=MAX_NEW
    )
    model, tok = _load(model_dirs[0])
    assert res["qa"]["accuracy"] == data["expected_acc"]
    assert res["text"]["perplexity"] == pytest.approx(reference_ppl(model, tok, TEXTS), rel=1e-4)


def test_an_eval_error_names_the_model(model_dirs, data):
    def refuses(model, tokenizer, records, device):
        raise EvalError("out of memory on a single row (test)")

    ev.register_evaluator("refuses", refuses)
    try:
        with pytest.raises(EvalError, match=r"^.*m1: out of memory on a single row"):
            ev.evaluate_models([model_dirs[1]], [data["text"]], "cpu")
    finally:
        ev.unregister_evaluator("refuses")


def _eval_error_case(case: str, model_dirs, data, tmp_path: Path) -> tuple[list[str], str]:
    """(CLI arguments, fragment of the expected message) for one class of eval error."""
    good = [str(model_dirs[0]), "--data", str(data["text"]), "--device", "cpu"]
    if case == "bad line":
        bad = write_jsonl(tmp_path / "bad.jsonl", ['{"text": "a"}', "{nope"])
        return [str(model_dirs[0]), "--data", str(bad), "--device", "cpu"], f"{bad}:2: invalid JSON"
    if case == "empty file":
        (tmp_path / "empty.jsonl").write_text("\n\n")
        return [str(model_dirs[0]), "--data", str(tmp_path / "empty.jsonl")], "data file is empty"
    if case == "missing file":
        return [str(model_dirs[0]), "--data", str(tmp_path / "nope.jsonl")], "data file not found"
    if case == "missing model":
        return [str(tmp_path / "no-model"), *good[1:]], "model directory not found"
    if case == "no tokenizer":
        bare = make_tiny_model_dir(tmp_path / "bare", with_tokenizer=False)
        return [str(bare), *good[1:]], "no tokenizer"
    assert case == "cuda absent"
    return [*good[:-1], "cuda"], "CUDA is not available"


@pytest.mark.parametrize(
    "case", ["bad line", "empty file", "missing file", "missing model", "no tokenizer", "cuda absent"]
)
def test_eval_cli_errors_are_one_line_with_the_eval_exit_code(case, model_dirs, data, tmp_path):
    if case == "cuda absent" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args, fragment = _eval_error_case(case, model_dirs, data, tmp_path)
    result = CliRunner().invoke(main, ["eval", *args])
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == EvalError.exit_code, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert len(errors) == 1 and fragment in errors[0], result.output


def test_merge_with_a_bad_eval_file_fails_before_merging(model_dirs, tmp_path):
    from tests.conftest import write_config

    bad = write_jsonl(tmp_path / "bad.jsonl", ["{nope"])
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "merge_method": "linear",
            "models": [{"model": str(d), "parameters": {"weight": 1.0}} for d in model_dirs],
        },
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["merge", str(cfg), str(out), "--no-progress", "--eval", str(bad)])
    assert result.exit_code == EvalError.exit_code, result.output
    assert f"{bad}:1: invalid JSON" in result.output and "merged model written" not in result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "cfg.yaml"]
