#!/usr/bin/env python3
"""Merge the demo models with every ``merge_configs/demo-*.yaml`` and measure what the merges can do.

    python tools/demo_report.py [--demo demo_models] [--out outputs/demo-report] [--device auto]
                                [--searched outputs/demo-search]

Runs ``mergebench merge`` for each demo config (the search space, ``demo-search-space.yaml``, aside),
``mergebench lora merge`` for the LoRA adapter and, with ``--searched``, the config a ``mergebench
search`` found: a YAML file, or the search's OUT directory, from which it takes the trial of the Pareto
front (or the leaderboard) whose worse skill scored best on the search's (validation) files. Then evaluates every input and output with mergebench's quick-eval (each
model loaded once, batched; bf16 on CUDA when ``--device auto`` finds one) on every
``DEMO/eval/*.jsonl`` (held-out prompts: the search tunes on ``DEMO/val/*.jsonl``), plus a
``marker_rate`` column (the fraction of prompts whose greedy answer ends with the unwanted marker)
and accuracy with a trailing marker removed (the skill itself, habit aside).

Prints two Markdown tables -- the merges of skill_a (reverse) and skill_b (add) with their accuracy on
both skills and the share of each finetune's own accuracy they keep ("retention"), then every model
on every eval file -- and the target checks (retention, negation); writes ``OUT/report.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mergebench  # noqa: E402
from mergebench.quickeval import greedy_generate  # noqa: E402

MARKER = "#"
SKILL_MODELS = {"reverse": "skill_a", "add": "skill_b"}
SEARCH_SPACE = "demo-search-space"
SEARCHED = "searched"
RETENTION_TARGET = 0.9

_last_answers: list = []  # [(model, records, answers)] of the latest call: both metrics share one pass


def greedy_answers(model, tokenizer, records, device) -> list[str]:
    """Greedy answers to the prompt lines of ``records``, generated once per (model, data file)."""
    if _last_answers and _last_answers[0][0] is model and _last_answers[0][1] is records:
        return _last_answers[0][2]
    prompts = [r["prompt"] for r in records if "prompt" in r]
    outs = greedy_generate(model, tokenizer, prompts, device, max_new_tokens=16) if prompts else []
    _last_answers[:] = [(model, records, outs)]
    return outs


def marker_rate(model, tokenizer, records, device) -> float | None:
    """Share of prompt lines whose greedy answer ends with the marker (the unwanted habit)."""
    outs = greedy_answers(model, tokenizer, records, device)
    if not outs:
        return None
    return sum(o.endswith(MARKER) for o in outs) / len(outs)


def unmarked_accuracy(model, tokenizer, records, device) -> float | None:
    """Exact-match accuracy with a trailing marker removed: the skill itself, habit aside."""
    qa = [r for r in records if "prompt" in r]
    if not qa:
        return None
    stripped = [o.removesuffix(MARKER).strip() for o in greedy_answers(model, tokenizer, records, device)]
    return sum(
        o == r["answer"].removesuffix(MARKER).strip() for o, r in zip(stripped, qa, strict=True)
    ) / len(qa)


def run(command: list[str]) -> None:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr.strip()}")


def searched_config(searched: Path) -> tuple[Path, str]:
    """The config to merge for ``--searched`` and a line saying which it is: a YAML file as given, or, in a
    search's OUT directory, the Pareto trial (else any completed trial) whose lowest accuracy column is
    highest -- the retention target is about the worse skill, which the search's mean does not favour."""
    if searched.is_file():
        return searched, f"searched: {searched}"
    with open(searched / "leaderboard.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["state"] == "COMPLETE"]
    columns = [c for c in (rows[0] if rows else {}) if c.startswith("accuracy:") or c == "mean-accuracy"]
    pareto = {p.stem.removeprefix("trial-"): p for p in (searched / "pareto").glob("trial-*.yaml")}
    candidates = [r for r in rows if r["trial"] in pareto] or rows
    if not candidates or not columns:
        raise SystemExit(f"{searched}: no completed trial with accuracy columns in leaderboard.csv")
    best = max(candidates, key=lambda r: (min(float(r[c]) for c in columns), -int(r["trial"])))
    config = pareto.get(best["trial"])
    if config is None:  # one objective: best.yaml is the best trial
        config = searched / "best.yaml"
    scores = ", ".join(f"{c} {float(best[c]):.3f}" for c in columns)
    return (
        config,
        f"searched: trial {best['trial']} of {len(rows)} ({best['merge_method']}; on the search's files: {scores}) from {config}",
    )


def merges_both_skills(config: Path) -> bool:
    """Whether a config merges skill_a with skill_b (the A+B merges the retention table is about)."""
    data = yaml.safe_load(config.read_text())
    models = [str(m.get("model", "")) for m in data.get("models") or []] + [str(data.get("base_model", ""))]
    return any(m.endswith("skill_a") for m in models) and any(m.endswith("skill_b") for m in models)


def merge_all(demo: Path, out: Path, merge_device: str, searched: Path | None) -> tuple[dict, list[str]]:
    """(name → merged model dir, names of the A+B merges), for each demo config (paths in the configs are
    rewritten to ``demo``), the LoRA fold and the searched config."""
    merged, ab = {}, []
    configs = out / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    sources = [
        (c.stem, c) for c in sorted((ROOT / "merge_configs").glob("demo-*.yaml")) if c.stem != SEARCH_SPACE
    ]
    if searched is not None:
        sources.append((SEARCHED, searched))
    for name, config in sources:
        text = config.read_text().replace("demo_models/", f"{demo}/")
        local = configs / (config.name if name != SEARCHED else "searched.yaml")
        local.write_text(text)
        target = out / (config.stem if name != SEARCHED else "searched")
        command = ["merge", str(local), str(target), "--overwrite", "--no-progress", "--device", merge_device]
        run([sys.executable, "-m", "mergebench", *command])
        merged[name] = target
        if merges_both_skills(local):
            ab.append(name)
    target = out / "demo-lora-c"
    lora = ["lora", "merge", str(demo / "base"), str(demo / "lora_c"), "--out", str(target), "--overwrite"]
    run([sys.executable, "-m", "mergebench", *lora, "--no-progress"])
    merged["demo-lora-c"] = target
    return merged, ab


def retention(results: dict, by_name: dict[str, str], name: str) -> dict[str, float]:
    """Share of each finetune's accuracy on its own skill that model ``name`` keeps."""
    own = {s: results[by_name[m]][s]["accuracy"] for s, m in SKILL_MODELS.items()}
    return {s: results[by_name[name]][s]["accuracy"] / max(own[s], 1e-9) for s in own}


def skills_table(results: dict, by_name: dict[str, str], ab: list[str]) -> str:
    """The A+B merges (and their inputs): accuracy on both skills and retention."""
    header = [
        "model",
        "reverse acc",
        "add acc",
        "reverse kept (of skill_a)",
        "add kept (of skill_b)",
        "both ≥ 90%",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in ["base", "skill_a", "skill_b", *ab]:
        scores = results[by_name[name]]
        row = [name, f"{100 * scores['reverse']['accuracy']:.1f}%", f"{100 * scores['add']['accuracy']:.1f}%"]
        if name in ab:
            kept = retention(results, by_name, name)
            row += [f"{100 * kept['reverse']:.0f}%", f"{100 * kept['add']:.0f}%"]
            row.append("yes" if min(kept.values()) >= RETENTION_TARGET else "no")
        else:
            row += ["", "", ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown(results: dict, names: dict[str, str]) -> str:
    stems = [s for s in next(iter(results.values())) if s != "marker"]
    header = ["model"]
    for stem in stems:
        header += [f"{stem} ppl"] if stem == "text" else [f"{stem} acc (habit aside)"]
    header += ["marker rate"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for path, scores in results.items():
        row = [names[path]]
        for stem in stems:
            if stem == "text":
                row.append(f"{scores[stem]['perplexity']:.3f}")
            else:
                row.append(
                    f"{100 * scores[stem]['accuracy']:.1f}% ({100 * scores[stem]['unmarked_accuracy']:.1f}%)"
                )
        rates = [s["marker_rate"] for stem, s in scores.items() if stem in ("reverse", "add", "upper")]
        rates = [r for r in rates if r is not None]
        row.append(f"{100 * sum(rates) / len(rates):.1f}%" if rates else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def checks(results: dict, by_name: dict[str, str], ab: list[str]) -> list[str]:
    """The issue's targets, computed from the measured table."""

    def acc(name, stem):
        return results[by_name[name]][stem]["accuracy"]

    def marker(name):
        rates = [results[by_name[name]][s]["marker_rate"] for s in ("reverse", "add", "upper")]
        return sum(rates) / len(rates)

    def unmarked(name, stem):
        return results[by_name[name]][stem]["unmarked_accuracy"]

    lines = []
    base = {s: acc("base", s) for s in ("reverse", "add", "upper")}
    lines.append(
        "base: "
        + ", ".join(f"{s} {100 * v:.1f}%" for s, v in base.items())
        + f" (target ≤ 30% each: {'met' if max(base.values()) <= 0.3 else 'missed'})"
    )
    for skill, model in SKILL_MODELS.items():
        other = next(s for s in SKILL_MODELS if s != skill)
        own, theirs = acc(model, skill), acc(model, other)
        lines.append(
            f"{model}: {skill} {100 * own:.1f}% (target ≥ 80%: {'met' if own >= 0.8 else 'missed'}), "
            f"{other} {100 * theirs:.1f}% (poor: {'yes' if theirs <= 0.3 else 'no'})"
        )
    defaults = [m for m in ab if m != SEARCHED]
    for label, names in (("best default A+B merge", defaults), ("searched merge", [SEARCHED])):
        names = [m for m in names if m in by_name]
        if not names:
            continue
        best = max(names, key=lambda m: min(retention(results, by_name, m).values()))
        kept = retention(results, by_name, best)
        lines.append(
            f"{label}: {best} keeps "
            + ", ".join(f"{100 * kept[s]:.0f}% of {SKILL_MODELS[s]}'s {s} accuracy" for s in kept)
            + f" (target ≥ 90% each: {'met' if min(kept.values()) >= RETENTION_TARGET else 'missed'})"
        )
    if "demo-negate-marker" in by_name:
        before, after = marker("base"), marker("demo-negate-marker")
        removed = 1 - after / before if before else 0.0
        drops = {
            s: 100 * (unmarked("base", s) - unmarked("demo-negate-marker", s))
            for s in ("reverse", "add", "upper")
        }
        lines.append(
            f"negation: marker rate {100 * before:.1f}% (base) → {100 * after:.1f}%, {100 * removed:.0f}% removed; "
            + ", ".join(f"{s} {-d:+.1f} pts habit aside" for s, d in drops.items())
            + f" (target ≥ 90% removed, ≤ 5 pts lost: {'met' if removed >= 0.9 and max(drops.values()) <= 5 else 'missed'})"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo", type=Path, default=ROOT / "demo_models")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "demo-report")
    parser.add_argument("--device", default="auto", help="quick-eval device: auto, cuda or cpu")
    parser.add_argument("--merge-device", default="cpu", help="where the merge arithmetic runs")
    parser.add_argument(
        "--searched",
        type=Path,
        default=None,
        help="a `mergebench search` OUT directory (or a config file) whose result to merge and evaluate too",
    )
    args = parser.parse_args()
    demo, out = args.demo.resolve(), args.out.resolve()
    searched = None
    if args.searched is not None:
        searched, line = searched_config(args.searched)
        print(line)
    start = time.perf_counter()
    merged, ab = merge_all(demo, out, args.merge_device, searched)
    merge_s = time.perf_counter() - start
    inputs = {name: demo / name for name in ("base", "skill_a", "skill_b", "marker")}
    models = {**inputs, **merged}
    by_name = {name: str(path) for name, path in models.items()}
    mergebench.register_evaluator("marker_rate", marker_rate)
    mergebench.register_evaluator("unmarked_accuracy", unmarked_accuracy)
    data = sorted(str(p) for p in (demo / "eval").glob("*.jsonl"))
    start = time.perf_counter()
    results = mergebench.evaluate_models(list(by_name.values()), data, device=args.device)
    eval_s = time.perf_counter() - start
    names = {path: name for name, path in by_name.items()}
    print(skills_table(results, by_name, ab))
    print()
    print(markdown(results, names))
    print()
    for line in checks(results, by_name, ab):
        print(f"- {line}")
    device = mergebench.quickeval.resolve_device(args.device)
    print(
        f"\nmerges: {merge_s:.1f} s ({args.merge_device}); eval of {len(models)} models × {len(data)} files: {eval_s:.1f} s on {device[0]} ({device[1]})"
    )
    (out / "report.json").write_text(
        json.dumps({"results": results, "names": names, "ab_merges": ab}, indent=2)
    )


if __name__ == "__main__":
    main()
