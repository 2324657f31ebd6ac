"""Multi-stage recipes: stages build in order, reuse what did not change, and errors name the stage."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from tests.conftest import assert_clean_failure, run_cli, write_config


def recipe(family, b_weight: float = 0.7) -> list[dict]:
    base, ft1, ft2 = str(family.base), str(family.ft1), str(family.ft2)
    return [
        {
            "name": "avg",
            "merge_method": "linear",
            "models": [
                {"model": ft1, "parameters": {"weight": 0.5}},
                {"model": ft2, "parameters": {"weight": 0.5}},
            ],
        },
        {
            "name": "boosted",
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [{"model": "avg", "parameters": {"weight": b_weight}}],
        },
        {
            "name": "final",
            "merge_method": "slerp",
            "base_model": base,
            "models": [{"model": base}, {"model": "boosted"}],
            "parameters": {"t": 0.3},
        },
    ]


def write_recipe(path: Path, documents: list[dict]) -> Path:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.safetensors"))
    }


def log_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("stage ")]


def test_three_stage_recipe_builds_reuses_and_rebuilds_only_what_changed(llama_family, tmp_path):
    path = write_recipe(tmp_path / "recipe.yaml", recipe(llama_family))
    out = tmp_path / "out"
    first = run_cli("merge", path, out, "--no-progress")
    assert first.exit_code == 0, first.output
    stages = tmp_path / "out-stages"
    assert [line.split(":")[0] for line in log_lines(first)] == [
        "stage 'avg'",
        "stage 'boosted'",
        "stage 'final'",
    ]
    assert all("merged into" in line for line in log_lines(first))

    # the same chain run as three separate merges gives the same bytes
    steps = tmp_path / "steps"
    documents = recipe(llama_family)
    for document, target in zip(documents, ["avg", "boosted", "final"], strict=True):
        data = {k: v for k, v in document.items() if k != "name"}
        text = yaml.safe_dump(data).replace("model: avg", f"model: {steps / 'avg'}")
        text = text.replace("model: boosted", f"model: {steps / 'boosted'}")
        (tmp_path / f"{target}.yaml").write_text(text)
        assert run_cli("merge", tmp_path / f"{target}.yaml", steps / target, "--no-progress").exit_code == 0
    assert digests(out) == digests(steps / "final")
    assert digests(stages / "avg") == digests(steps / "avg")

    # unchanged: earlier stages reused, the last rebuilt into OUT
    again = run_cli("merge", path, out, "--no-progress", "--overwrite")
    assert again.exit_code == 0, again.output
    lines = log_lines(again)
    assert "unchanged, reusing" in lines[0] and "unchanged, reusing" in lines[1] and "merged into" in lines[2]
    assert digests(out) == digests(steps / "final")

    # one stage changed: it and the stage after it are rebuilt, the one before is reused
    avg_bytes = digests(stages / "avg")
    write_recipe(path, recipe(llama_family, b_weight=0.2))
    changed = run_cli("merge", path, out, "--no-progress", "--overwrite")
    assert changed.exit_code == 0, changed.output
    lines = log_lines(changed)
    assert "unchanged, reusing" in lines[0] and "merged into" in lines[1] and "merged into" in lines[2]
    assert digests(stages / "avg") == avg_bytes and digests(out) != digests(steps / "final")


def test_stage_option_builds_only_what_the_stage_needs(llama_family, tmp_path):
    path = write_recipe(tmp_path / "recipe.yaml", recipe(llama_family))
    out = tmp_path / "out"
    result = run_cli("merge", path, out, "--no-progress", "--stage", "boosted")
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in log_lines(result)] == ["stage 'avg'", "stage 'boosted'"]
    assert not out.exists() and (tmp_path / "out-stages" / "boosted" / "config.json").is_file()
    missing = run_cli("merge", path, out, "--stage", "nope")
    assert_clean_failure(missing, "--stage", "'nope'")


def test_recipe_errors_name_the_stage(llama_family, tmp_path):
    documents = recipe(llama_family)
    documents[1]["parameters"] = {"lamda": 1.0}
    bad = write_recipe(tmp_path / "bad.yaml", documents)
    assert_clean_failure(run_cli("merge", bad, tmp_path / "o"), "stage 'boosted'", "lamda")

    documents = recipe(llama_family)
    documents[0]["models"][0]["model"] = "final"  # a stage that comes later
    forward = write_recipe(tmp_path / "forward.yaml", documents)
    assert_clean_failure(
        run_cli("merge", forward, tmp_path / "o"), "stage 'avg'", "'final'", "not built before"
    )

    documents = recipe(llama_family)
    del documents[0]["name"]
    unnamed = write_recipe(tmp_path / "unnamed.yaml", documents)
    assert_clean_failure(run_cli("merge", unnamed, tmp_path / "o"), "document 1", "needs a 'name'")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o-stages").exists()


def test_single_config_rejects_stage_option(llama_family, tmp_path):
    cfg = write_config(
        tmp_path / "cfg.yaml", {k: v for k, v in recipe(llama_family)[0].items() if k != "name"}
    )
    assert_clean_failure(
        run_cli("merge", cfg, tmp_path / "o", "--stage", "avg"), "--stage", "not a multi-stage"
    )
