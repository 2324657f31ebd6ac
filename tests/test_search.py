"""``mergebench search`` end to end: real trials (merge + quick-eval) on a local Ray instance of 2 CPUs over
two tiny models, the study kept in SQLite and resumed, failing trials recorded, best.yaml reproducible."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from mergebench.errors import CheckpointError, ConfigError, EvalError, OutputError
from mergebench.search import Objective, best_score, parse_objectives
from tests.browser import assert_renders, chromium_driver
from tests.conftest import assert_clean_failure, run_cli
from tests.conftest_demo import make_tiny_model_dir

CANDIDATE_PROMPTS = [a + b for a in "abcdefghijklmnopqrstuvwxyz" for b in "abcd"]
SHORT, LONG = 20, 40
TEXTS = ["the cat sees a dog.", "one two three", "a much longer line of text, with commas: and 123 =+"]


def stopping_answers(model_dir: Path, prompts: list[str]) -> list[tuple[str, str]]:
    """(prompt, answer) pairs whose greedy answer ended (EOS or newline) within SHORT tokens (it is the
    same with twice the room): the eval's own limit (longest answer + 8) then reproduces them. A random
    model rarely stops, hence many candidates."""
    from mergebench import quickeval

    model, tokenizer, device = quickeval.load_model(model_dir, "cpu")
    short = quickeval.greedy_generate(model, tokenizer, prompts, device, max_new_tokens=SHORT)
    long = quickeval.greedy_generate(model, tokenizer, prompts, device, max_new_tokens=LONG)
    return [(p, a) for p, a, b in zip(prompts, short, long, strict=True) if a == b and a]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Two tiny models; qa.jsonl (4 answers of each model), text.jsonl; each model alone scores 50%."""
    from mergebench.quickeval import evaluate

    root = tmp_path_factory.mktemp("search")
    models = [make_tiny_model_dir(root / f"m{i}", seed=i) for i in range(2)]
    qa = []
    for model in models:
        pairs = stopping_answers(model, CANDIDATE_PROMPTS)
        assert len(pairs) >= 4, pairs
        qa += [{"prompt": p, "answer": a} for p, a in pairs[:4]]
    qa_file = root / "qa.jsonl"
    qa_file.write_text("".join(json.dumps(r) + "\n" for r in qa))
    text_file = root / "text.jsonl"
    text_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    for model in models:  # the data are what they claim: each model gets exactly its own half
        assert evaluate(model, qa_file, "cpu")["qa"]["accuracy"] == 0.5
    return SimpleNamespace(root=root, models=models, qa=qa_file, text=text_file)


def process_tree() -> dict[int, list[int]]:
    """Live (not zombie) processes by parent pid, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(stat.parent.name))
    return children


def descendants(pid: int) -> set[int]:
    tree, found, todo = process_tree(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance of 2 CPUs for the module (its warm workers serve every search); shut down
    at the end, and none of its processes (GCS, raylet, workers, agents) may outlive the module."""
    import logging

    import ray

    assert not ray.is_initialized()
    before = descendants(os.getpid())
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=128 * 1024**2,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    try:
        yield
    finally:
        started = descendants(os.getpid()) - before  # Ray's processes, workers included
        ray.shutdown()
        deadline = time.monotonic() + 20
        while True:
            alive = {pid for children in process_tree().values() for pid in children}
            left = started & alive
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert started and not left, f"Ray processes left running: {sorted(left)}"


def write_space(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def read_leaderboard(out: Path) -> list[dict]:
    with (out / "leaderboard.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_search_resume_and_reproduce_the_best(work, local_ray, tmp_path):
    space = write_space(
        tmp_path / "space.yaml",
        f"""merge_method: linear
models:
  - model: {work.models[0]}
    parameters: {{weight: {{min: 0.5, max: 1.0}}}}
  - model: {work.models[1]}
    parameters: {{weight: {{choices: [0.0, 0.05, 0.5]}}}}
dtype: float32
""",
    )
    out = tmp_path / "out"
    args = ["search", space, "--eval", work.qa, "--eval", work.text, "--out", out, "--device", "cpu"]
    result = run_cli(*args, "--trials", "4")
    assert result.exit_code == 0, result.output
    # qa has prompt lines, text only text: one objective per file, a Pareto front
    header = "trial  state     accuracy:qa ↑  perplexity:text ↓  models[0].parameters.weight"
    assert header in result.output
    assert sum(line.startswith("trial ") for line in result.output.splitlines()) == 4  # one log line each
    for name in ("study.db", "leaderboard.csv", "best.yaml", "report.html"):
        assert (out / name).is_file(), name
    assert not (out / "scratch").exists()  # every trial removed its merged model
    rows = read_leaderboard(out)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 4
    assert list(rows[0]) == [
        "trial",
        "state",
        "accuracy:qa",
        "perplexity:text",
        "models[0].parameters.weight",
        "models[1].parameters.weight",
        "seconds",
        "error",
    ]
    pareto = sorted((out / "pareto").glob("trial-*.yaml"))
    assert pareto and f"trial-{rows[0]['trial']}.yaml" in [p.name for p in pareto]
    report = (out / "report.html").read_text()
    assert report.count("src='data:image/png;base64,") == 3  # history, Pareto front, importances
    assert "<script" not in report.lower() and "Pareto front" in report
    driver = chromium_driver(tmp_path / "chromium-profile")
    try:
        assert_renders(driver, out / "report.html", "mergebench search", 3)
    finally:
        driver.quit()

    # a second run into the same OUT needs --resume; with it, the study grows to 6 trials
    again = run_cli(*args, "--trials", "6")
    assert_clean_failure(again, "holds a search study; add --resume")
    assert again.exit_code == OutputError.exit_code
    resumed = run_cli(*args, "--trials", "6", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert sum(line.startswith("trial ") for line in resumed.output.splitlines()) == 2  # only the new ones
    later = read_leaderboard(out)
    assert sorted(int(r["trial"]) for r in later) == list(range(6))
    first = {r["trial"]: r for r in rows}
    for row in later:
        if row["trial"] in first:  # earlier trials are kept as they were
            assert row == first[row["trial"]]

    # best.yaml is a plain config: `mergebench merge` runs it, and the merge scores what the search said
    best = later[0]
    assert (
        f"trial {best['trial']}, the Pareto-optimal trial with the best mean of 6 trials"
        in ((out / "best.yaml").read_text().splitlines()[0])
    )
    merged = tmp_path / "best-merge"
    merge = run_cli("merge", out / "best.yaml", merged, "--no-progress")
    assert merge.exit_code == 0, merge.output
    from mergebench.quickeval import evaluate

    scores = evaluate(merged, [work.qa, work.text], "cpu")
    assert scores["qa"]["accuracy"] == float(best["accuracy:qa"])
    assert scores["text"]["perplexity"] == pytest.approx(float(best["perplexity:text"]), rel=1e-5)
    # the search really searched: model 0 alone (weight 0 for model 1) gets its half of the answers
    assert max(float(r["accuracy:qa"]) for r in later) >= 0.5


def test_failing_trials_are_recorded_and_the_study_goes_on(work, local_ray, tmp_path):
    missing = work.root / "missing-model"
    space = write_space(
        tmp_path / "space.yaml",
        f"""merge_method: linear
models:
  - model: {work.models[0]}
    parameters: {{weight: {{min: 0.5, max: 1.0}}}}
  - model: {{choices: ["{work.models[1]}", "{missing}"]}}
    parameters: {{weight: {{min: 0.0, max: 0.5}}}}
""",
    )
    out = tmp_path / "out"
    result = run_cli(
        "search",
        space,
        "--eval",
        work.qa,
        "--out",
        out,
        "--trials",
        "5",
        "--sampler",
        "cmaes",
        "--seed",
        "3",
        "--objective",
        "accuracy:qa",
    )
    assert result.exit_code == 0, result.output
    rows = read_leaderboard(out)
    assert list(rows[0])[:3] == ["trial", "state", "accuracy:qa"]  # one objective: the flag's
    for row in rows:
        assert (row["state"] == "FAIL") == (row["models[1].model"] == str(missing)), row
        if row["state"] == "FAIL":
            assert str(missing) in row["error"] and row["accuracy:qa"] == ""
    failed = [int(r["trial"]) for r in rows if r["state"] == "FAIL"]
    complete = [int(r["trial"]) for r in rows if r["state"] == "COMPLETE"]
    assert failed and complete and max(complete) > min(failed), rows  # trials after a failure still ran
    assert "FAIL" in result.output and not (out / "scratch").exists()
    assert str(missing) in (out / "report.html").read_text()  # the error is in the report's leaderboard


def test_every_trial_failing_is_an_error_with_the_first_message(work, local_ray, tmp_path):
    space = write_space(
        tmp_path / "space.yaml",
        f"merge_method: linear\nmodels:\n  - {{model: {work.root / 'nope'}, parameters: {{weight: {{min: 0.1, max: 1}}}}}}\n",
    )
    result = run_cli("search", space, "--eval", work.qa, "--out", tmp_path / "out", "--trials", "2")
    line = assert_clean_failure(result, "no trial completed (2 failed); trial 0:", "nope")
    assert result.exit_code == CheckpointError.exit_code, line
    assert [r["state"] for r in read_leaderboard(tmp_path / "out")] == ["FAIL", "FAIL"]


def test_resume_after_a_kill_marks_unfinished_trials_failed(work, local_ray, tmp_path):
    import optuna

    space = write_space(
        tmp_path / "space.yaml",
        f"merge_method: linear\nmodels:\n  - {{model: {work.models[0]}, parameters: {{weight: {{min: 0.1, max: 1}}}}}}\n",
    )
    out = tmp_path / "out"
    args = ["search", space, "--eval", work.qa, "--out", out, "--sampler", "random"]
    assert run_cli(*args, "--trials", "1").exit_code == 0
    study = optuna.load_study(study_name="mergebench-search", storage=f"sqlite:///{out / 'study.db'}")
    study.ask()  # what a killed driver leaves behind: a trial RUNNING forever
    (out / "scratch" / "trial-1").mkdir(parents=True)  # and its half-written merge
    result = run_cli(*args, "--trials", "3", "--resume")
    assert result.exit_code == 0, result.output
    assert "marked 1 unfinished trial(s) of the earlier run as FAIL" in result.output
    rows = {r["trial"]: r for r in read_leaderboard(out)}
    assert rows["1"]["state"] == "FAIL" and "interrupted" in rows["1"]["error"]
    assert rows["0"]["state"] == rows["2"]["state"] == "COMPLETE"
    assert not (out / "scratch").exists()


def test_user_errors_come_before_any_trial(work, tmp_path):
    space = write_space(
        tmp_path / "space.yaml",
        f"merge_method: linear\nmodels:\n  - {{model: {work.models[0]}, parameters: {{weight: {{min: 0.1, max: 1}}}}}}\n",
    )
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"prompt": "a"}\n')
    result = run_cli("search", space, "--eval", bad, "--out", out, "--trials", "2")
    assert_clean_failure(result, f"{bad}:2: missing 'answer'")
    assert result.exit_code == EvalError.exit_code
    result = run_cli(
        "search", space, "--eval", work.qa, "--out", out, "--trials", "2", "--objective", "accuracy:text"
    )
    assert_clean_failure(result, "--objective accuracy:text: no --eval file has the stem 'text'")
    assert result.exit_code == ConfigError.exit_code
    result = run_cli(
        "search",
        space,
        "--eval",
        work.qa,
        "--eval",
        work.text,
        "--out",
        out,
        "--trials",
        "2",
        "--sampler",
        "cmaes",
    )
    assert_clean_failure(result, "--sampler cmaes optimises one objective")
    result = run_cli("search", space, "--eval", work.qa, "--out", out, "--trials", "2", "--device", "cuda")
    assert_clean_failure(result, "--device cuda: give --gpus-per-trial")
    bad_space = write_space(
        tmp_path / "bad.yaml",
        "merge_method: linear\nmodels:\n  - {model: a, parameters: {weight: {min: 1}}}\n",
    )
    result = run_cli("search", bad_space, "--eval", work.qa, "--out", out, "--trials", "2")
    assert_clean_failure(result, "models[0].parameters.weight: a range needs both min and max")
    assert not out.exists()  # nothing was created by any of these


def test_default_objectives_and_best_score():
    qa = [{"prompt": "a", "answer": "b"}]
    text = [{"text": "abc"}]
    mixed = qa + text
    assert [o.name for o in parse_objectives(None, {"x": qa, "y": mixed})] == ["mean-accuracy"]
    objectives = parse_objectives(None, {"x": qa, "t": text})
    assert [(o.name, o.direction) for o in objectives] == [
        ("accuracy:x", "maximize"),
        ("perplexity:t", "minimize"),
    ]
    assert [o.name for o in parse_objectives("perplexity:y, mean-accuracy", {"x": qa, "y": mixed})] == [
        "perplexity:y",
        "mean-accuracy",
    ]
    with pytest.raises(ConfigError, match="given twice"):
        parse_objectives("accuracy:x,accuracy:x", {"x": qa})
    with pytest.raises(ConfigError, match="has no text lines"):
        parse_objectives("perplexity:x", {"x": qa})
    with pytest.raises(ConfigError, match="use accuracy:<stem>"):
        parse_objectives("bleu:x", {"x": qa})
    # several accuracies: their plain mean; mixed directions: min-max normalised mean, 1 = best seen
    both = [Objective("accuracy:a", "accuracy", ("a",)), Objective("accuracy:b", "accuracy", ("b",))]
    assert best_score([[0.5, 1.0], [1.0, 0.0]], both) == [0.75, 0.5]
    assert best_score([[0.5, 10.0], [1.0, 30.0], [0.0, 20.0]], objectives) == [0.75, 0.5, 0.25]
    assert best_score([[3.0]], [objectives[1]]) == [-3.0]


def test_the_command_module_imports_neither_ray_nor_optuna():
    import subprocess
    import sys

    code = "import sys, mergebench.cli; print(sorted(m for m in ('ray', 'optuna', 'matplotlib') if m in sys.modules))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        == "[]\n"
    )


def test_a_sampled_config_out_of_range_fails_before_a_task_starts():
    from mergebench.search import _config_problem

    config = {
        "merge_method": "ties",
        "base_model": "b",
        "models": [{"model": "a", "parameters": {"weight": 1.0}}],
    }
    assert _config_problem(config) is None
    config["models"][0]["parameters"]["density"] = 0.0  # a step range {min: 0, max: 1, step: 0.5} can draw it
    assert (
        _config_problem(config) == "sampled config: models[0].parameters.density: must be in (0, 1], got 0.0"
    )
