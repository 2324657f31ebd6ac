#!/usr/bin/env python3
"""Merge the demo models with every ``merge_configs/demo-*.yaml`` and measure what the merges can do.

    python tools/demo_report.py [--demo demo_models] [--out outputs/demo-report] [--device auto]

Runs ``mergebench merge`` for each demo config and ``mergebench lora merge`` for the LoRA adapter,
then evaluates every input and output with mergebench's quick-eval (each model loaded once,
batched; bf16 on CUDA when ``--device auto`` finds one) on every ``DEMO/eval/*.jsonl``, plus a
``marker_rate`` column (the fraction of prompts whose greedy answer ends with the unwanted marker)
and accuracy with a trailing marker removed (the skill itself, habit aside).
Prints a Markdown table and the target checks (merge retention, negation), and writes
``OUT/report.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mergebench  # noqa: E402
from mergebench.quickeval import greedy_generate  # noqa: E402

MARKER = "#"
SKILL_MODELS = {"reverse": "skill_a", "add": "skill_b"}
AB_MERGES = ["demo-linear", "demo-task-arithmetic", "demo-ties", "demo-dare-ties", "demo-slerp"]


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


def merge_all(demo: Path, out: Path, merge_device: str) -> dict[str, Path]:
    """name → merged model dir, for each demo config (paths in the configs are rewritten to ``demo``)."""
    merged = {}
    configs = out / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    for config in sorted((ROOT / "merge_configs").glob("demo-*.yaml")):
        text = config.read_text().replace("demo_models/", f"{demo}/")
        local = configs / config.name
        local.write_text(text)
        target = out / config.stem
        command = ["merge", str(local), str(target), "--overwrite", "--no-progress", "--device", merge_device]
        run([sys.executable, "-m", "mergebench", *command])
        merged[config.stem] = target
    target = out / "demo-lora-c"
    lora = ["lora", "merge", str(demo / "base"), str(demo / "lora_c"), "--out", str(target), "--overwrite"]
    run([sys.executable, "-m", "mergebench", *lora, "--no-progress"])
    merged["demo-lora-c"] = target
    return merged


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


def checks(results: dict, by_name: dict[str, str]) -> list[str]:
    """The issue's targets, computed from the measured table."""

    def acc(name, stem):
        return results[by_name[name]][stem]["accuracy"]

    def marker(name):
        rates = [results[by_name[name]][s]["marker_rate"] for s in ("reverse", "add", "upper")]
        return sum(rates) / len(rates)

    def unmarked(name, stem):
        return results[by_name[name]][stem]["unmarked_accuracy"]

    lines = []
    own = {skill: acc(model, skill) for skill, model in SKILL_MODELS.items()}
    best = max(
        (m for m in AB_MERGES if m in by_name),
        key=lambda m: min(acc(m, s) / max(own[s], 1e-9) for s in own),
    )
    kept = {s: acc(best, s) / max(own[s], 1e-9) for s in own}
    lines.append(
        f"best A+B merge: {best} keeps "
        + ", ".join(f"{100 * kept[s]:.0f}% of {SKILL_MODELS[s]}'s {s} accuracy" for s in own)
        + f" (target ≥ 90% each: {'met' if min(kept.values()) >= 0.9 else 'missed'})"
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
    args = parser.parse_args()
    demo, out = args.demo.resolve(), args.out.resolve()
    start = time.perf_counter()
    merged = merge_all(demo, out, args.merge_device)
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
    print(markdown(results, names))
    print()
    for line in checks(results, by_name):
        print(f"- {line}")
    device = mergebench.quickeval.resolve_device(args.device)
    print(
        f"\nmerges: {merge_s:.1f} s ({args.merge_device}); eval of {len(models)} models × {len(data)} files: {eval_s:.1f} s on {device[0]} ({device[1]})"
    )
    (out / "report.json").write_text(json.dumps({"results": results, "names": names}, indent=2))


if __name__ == "__main__":
    main()
