"""Quick eval: exact-match accuracy and perplexity of causal LMs on small JSONL files.

Data files are JSONL; every non-blank line is one JSON object of one of two kinds:

* ``{"prompt": str, "answer": str}`` -- the prompt is fed as-is (the tokenizer adds its usual special
  tokens, e.g. BOS) and the model continues it by greedy decoding. Generation stops at the tokenizer's EOS
  token or after ``max_new_tokens`` (default: the longest answer's token count + 8). The generated text is
  decoded without special tokens, cut at its first newline, and stripped; the line counts as correct when
  that equals ``answer.strip()``. ``accuracy`` is the fraction of correct prompt lines.
* ``{"text": str}`` -- ``perplexity`` is ``exp`` of the mean next-token negative log-likelihood over every
  predicted token of every text line of the file (each token after the first of each encoded text).

A file may mix both kinds; a metric is ``None`` when the file has no line of its kind. ``n`` counts all
records of the file. Results are keyed by the data file's stem (``eval/add.jsonl`` -> ``"add"``).

Custom metrics: ``register_evaluator(name, fn)`` with
``fn(model, tokenizer, records, device) -> float | None``, where ``model`` is the loaded
``AutoModelForCausalLM`` (eval mode, on ``device``), ``tokenizer`` its ``AutoTokenizer``, ``records`` the
list of parsed JSON objects (dicts) of one data file, and ``device`` a ``torch.device``. The value appears
under ``name`` beside ``accuracy``/``perplexity`` for every (model, data file) pair, in the table and JSON.

transformers/torch are imported lazily so that ``import mergebench`` stays light.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mergebench.errors import EvalError

T = TypeVar("T")

ANSWER_MARGIN_TOKENS = 8
# Starting batch sizes when none is given. Small models are launch-bound on a GPU, so a large batch is what
# makes CUDA pay off (H100, demo model: 128 rows 3x faster than 32); a batch that does not fit is halved.
DEFAULT_BATCH_SIZE = {"cpu": 32, "cuda": 128}

Evaluator = Callable[[Any, Any, list, Any], "float | None"]
_EVALUATORS: dict[str, Evaluator] = {}
_BUILTIN_METRICS = ("accuracy", "perplexity")


def register_evaluator(name: str, fn: Evaluator) -> None:
    """Add a custom metric ``fn(model, tokenizer, records, device) -> float | None`` reported as ``name``."""
    if not isinstance(name, str) or not name or name in (*_BUILTIN_METRICS, "n"):
        raise ValueError(f"invalid evaluator name {name!r}")
    if not callable(fn):
        raise TypeError("evaluator must be callable")
    _EVALUATORS[name] = fn


def unregister_evaluator(name: str) -> None:
    """Remove a custom metric added with ``register_evaluator`` (no error when absent)."""
    _EVALUATORS.pop(name, None)


def registered_evaluators() -> dict[str, Evaluator]:
    return dict(_EVALUATORS)


# --------------------------------------------------------------------------------------------- data


def load_records(path: str | os.PathLike) -> list[dict]:
    """Parse and validate one JSONL data file; raise EvalError naming file and line on any problem."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalError(f"{p}: data file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EvalError(f"{p}: cannot read data file ({e})") from None
    records: list[dict] = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalError(f"{p}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise EvalError(f"{p}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        has_qa = "prompt" in rec or "answer" in rec
        has_text = "text" in rec
        if has_qa and has_text:
            raise EvalError(f"{p}:{lineno}: a line has either prompt/answer or text, not both")
        if has_qa:
            for key in ("prompt", "answer"):
                if key not in rec:
                    raise EvalError(f"{p}:{lineno}: missing {key!r} (prompt lines need prompt and answer)")
                if not isinstance(rec[key], str):
                    raise EvalError(f"{p}:{lineno}: {key!r} must be a string")
        elif has_text:
            if not isinstance(rec["text"], str):
                raise EvalError(f"{p}:{lineno}: 'text' must be a string")
            if not rec["text"]:
                raise EvalError(f"{p}:{lineno}: 'text' is empty")
        else:
            raise EvalError(f"{p}:{lineno}: line has neither prompt/answer nor text")
        records.append(rec)
    if not records:
        raise EvalError(f"{p}: data file is empty (no JSONL records)")
    return records


def _as_paths(data: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(data, (str, os.PathLike)):
        return [Path(data)]
    paths = [Path(d) for d in data]
    if not paths:
        raise EvalError("no data files given")
    return paths


def check_data(
    data_files: str | os.PathLike | Iterable[str | os.PathLike], device: str | None = "auto"
) -> None:
    """Everything about an evaluation that can fail before a model is loaded: the data files parse and
    the device exists. ``merge --eval`` calls it first, so a bad file is reported before merging."""
    _load_data(_as_paths(data_files))
    resolve_device(device)


def _load_data(paths: Sequence[Path]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in paths:
        if p.stem in out:
            raise EvalError(f"{p}: two data files share the stem {p.stem!r}; rename one")
        out[p.stem] = load_records(p)
    return out


# --------------------------------------------------------------------------------------------- model


def resolve_device(device: str | None = "auto"):
    """'auto' -> (cuda, bfloat16) when CUDA is available, else (cpu, float32); 'cuda'/'cpu' explicit."""
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EvalError(f"device {device!r} requested but CUDA is not available")
        return torch.device(name), torch.bfloat16
    if name == "cpu":
        return torch.device("cpu"), torch.float32
    raise EvalError(f"unknown device {device!r} (use auto, cuda or cpu)")


def load_model(model_dir: str | os.PathLike, device: str | None = "auto"):
    """Load ``(model, tokenizer, torch_device)`` from a Hugging Face model dir, ready for eval."""
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = Path(model_dir)
    if d.exists() and not d.is_dir():
        raise EvalError(f"{d}: expected a model directory, found a file")
    if not d.is_dir():
        raise EvalError(f"{d}: model directory not found")
    if not (d / "config.json").is_file():
        raise EvalError(f"{d}: not a model directory (no config.json)")
    from mergebench.io.model_files import has_tokenizer  # here: importing it loads torch

    if not has_tokenizer(d):
        raise EvalError(f"{d}: model directory has no tokenizer (tokenizer.json / tokenizer_config.json)")
    from transformers.utils import logging as hf_logging

    dev, dtype = resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(d))
    except Exception as e:  # noqa: BLE001 - any loader failure is a user-facing problem with the dir
        raise EvalError(f"{d}: cannot load tokenizer ({type(e).__name__}: {_one_line(e)})") from None
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar between the table lines
    try:
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype)
    except Exception as e:  # noqa: BLE001
        raise EvalError(f"{d}: cannot load model ({type(e).__name__}: {_one_line(e)})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.to(dev)
    model.eval()
    return model, tokenizer, dev


def _one_line(e: BaseException) -> str:
    s = " ".join(str(e).split())
    return s[:300]


def _padded(rows: Sequence[list[int]], pad: int, *, left: bool):
    """``(ids, attention_mask)`` of token rows padded to one width, on the left for generation."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols] = torch.tensor(r, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0


# --------------------------------------------------------------------------------------------- batching


def default_batch_size(device) -> int:
    """Starting batch size for a torch device when the caller gave none."""
    return DEFAULT_BATCH_SIZE.get(getattr(device, "type", str(device)), DEFAULT_BATCH_SIZE["cpu"])


def map_in_batches(
    lengths: Sequence[int],
    batch_size: int,
    run_batch: Callable[[list[int]], list[T]],
    *,
    shrink_on: tuple[type[BaseException], ...] = (),
    on_shrink: Callable[[], None] | None = None,
) -> list[T]:
    """Run ``run_batch(indices) -> one result per index`` over all items; results in the input order.

    Items go longest first, so rows of similar length share a batch (little padding) and the largest
    batch runs first: an out-of-memory error (``shrink_on``) shows at once, the batch is halved and
    retried, and the smaller size is kept for the rest. One item that still does not fit is an error.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    results: list[Any] = [None] * len(lengths)
    size = max(1, batch_size)
    pos = 0
    while pos < len(order):
        chunk = order[pos : pos + size]
        try:
            outs = run_batch(chunk)
        except shrink_on as e:
            if on_shrink is not None:
                on_shrink()
            if size == 1:
                raise EvalError(f"out of memory on a single row ({_one_line(e)})") from None
            size = max(1, len(chunk) // 2)
            continue
        for i, out in zip(chunk, outs, strict=True):
            results[i] = out
        pos += len(chunk)
    return results


def _map_token_rows(
    encoded: Sequence[list[int]], batch_size: int | None, device, run_batch: Callable[[list[int]], list[T]]
) -> list[T]:
    """``map_in_batches`` over tokenized rows, halving the batch on a torch out-of-memory error."""
    import torch

    def release_cached_memory() -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    return map_in_batches(
        [len(e) for e in encoded],
        batch_size or default_batch_size(device),
        run_batch,
        shrink_on=(torch.OutOfMemoryError,),
        on_shrink=release_cached_memory,
    )


# --------------------------------------------------------------------------------------------- metrics


def greedy_generate(
    model, tokenizer, prompts: Sequence[str], device, *, max_new_tokens: int, batch_size: int | None = None
) -> list[str]:
    """Greedy continuations of ``prompts`` (batched, left padded); decoded, cut at newline, stripped."""
    import torch

    pad = _pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    encoded = [tokenizer(p)["input_ids"] for p in prompts]

    def run_batch(indices: list[int]) -> list[str]:
        enc = [encoded[i] for i in indices]
        ids, mask = _padded(enc, pad, left=True)
        width = ids.shape[1]
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        outs = []
        for row in gen[:, width:].tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            text = tokenizer.decode(row, skip_special_tokens=True)
            outs.append(text.split("\n", 1)[0].strip())
        return outs

    return _map_token_rows(encoded, batch_size, device, run_batch)


def exact_match_accuracy(
    model,
    tokenizer,
    records: Sequence[dict],
    device,
    *,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
) -> float | None:
    qa = [r for r in records if "prompt" in r]
    if not qa:
        return None
    if max_new_tokens is None:
        longest = max(len(tokenizer(r["answer"], add_special_tokens=False)["input_ids"]) for r in qa)
        max_new_tokens = longest + ANSWER_MARGIN_TOKENS
    outs = greedy_generate(
        model,
        tokenizer,
        [r["prompt"] for r in qa],
        device,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    correct = sum(o == r["answer"].strip() for o, r in zip(outs, qa, strict=True))
    return correct / len(qa)


def perplexity(
    model, tokenizer, records: Sequence[dict], device, *, batch_size: int | None = None
) -> float | None:
    import torch

    texts = [r["text"] for r in records if "text" in r]
    if not texts:
        return None
    pad = _pad_id(tokenizer)
    encoded = [tokenizer(t)["input_ids"] for t in texts]

    def run_batch(indices: list[int]) -> list[tuple[float, int]]:
        enc = [encoded[i] for i in indices]
        ids, mask = _padded(enc, pad, left=False)
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        # one row at a time in float32: never a second (batch, length, vocab) tensor beside the logits
        sums = []
        for row, e in enumerate(enc):
            target = torch.tensor(e[1:], dtype=torch.long, device=logits.device)
            nll = torch.nn.functional.cross_entropy(
                logits[row, : len(e) - 1].float(), target, reduction="sum"
            )
            sums.append((float(nll.double()), len(e) - 1))
        return sums

    rows = _map_token_rows(encoded, batch_size, device, run_batch)
    total_tokens = sum(count for _, count in rows)
    if total_tokens == 0:
        return None
    return math.exp(sum(nll for nll, _ in rows) / total_tokens)


def evaluate_loaded(
    model,
    tokenizer,
    data: dict[str, list[dict]],
    device,
    *,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, dict]:
    """Evaluate an already loaded model on parsed data ``{stem: records}``."""
    results: dict[str, dict] = {}
    for stem, records in data.items():
        row: dict[str, Any] = {
            "accuracy": exact_match_accuracy(
                model, tokenizer, records, device, batch_size=batch_size, max_new_tokens=max_new_tokens
            ),
            "perplexity": perplexity(model, tokenizer, records, device, batch_size=batch_size),
            "n": len(records),
        }
        for name, fn in _EVALUATORS.items():
            value = fn(model, tokenizer, records, device)
            row[name] = None if value is None else float(value)
        results[stem] = row
    return results


def _evaluate_dir(model_dir, parsed: dict[str, list[dict]], device, **options) -> dict[str, dict]:
    """Load one model, evaluate it, let it go; an eval error names the model it happened on."""
    model, tokenizer, dev = load_model(model_dir, device)
    try:
        return evaluate_loaded(model, tokenizer, parsed, dev, **options)
    except EvalError as e:
        raise EvalError(f"{model_dir}: {e}") from None


def evaluate(
    model_dir: str | os.PathLike,
    data: str | os.PathLike | Iterable[str | os.PathLike],
    device: str | None = "auto",
    *,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, dict]:
    """Evaluate one model dir on one or several JSONL files -> ``{stem: {accuracy, perplexity, n, ...}}``."""
    parsed = _load_data(_as_paths(data))
    return _evaluate_dir(model_dir, parsed, device, batch_size=batch_size, max_new_tokens=max_new_tokens)


def evaluate_models(
    model_dirs: Iterable[str | os.PathLike],
    data_files: str | os.PathLike | Iterable[str | os.PathLike],
    device: str | None = "auto",
    *,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, dict[str, dict]]:
    """Evaluate several models (each loaded once) -> ``{model path: {stem: {...}}}``; data parsed once."""
    parsed = _load_data(_as_paths(data_files))
    dirs = [str(m) for m in model_dirs]
    if not dirs:
        raise EvalError("no model directories given")
    results: dict[str, dict[str, dict]] = {}
    for d in dirs:
        results[d] = _evaluate_dir(d, parsed, device, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return results


# --------------------------------------------------------------------------------------------- table


def _fmt(metric: str, value) -> str:
    if value is None:
        return "-"
    if metric == "accuracy":
        return f"{100 * value:.1f}%"
    if metric == "perplexity":
        return f"{value:.3f}"
    return f"{value:.4g}"


def format_table(results: dict[str, dict[str, dict]]) -> str:
    """Plain-text table: one row per model, one column per (data file, metric) present in the results."""
    columns: list[tuple[str, str]] = []
    for per_model in results.values():
        for stem, row in per_model.items():
            for metric in row:
                if metric == "n":
                    continue
                if (stem, metric) not in columns:
                    columns.append((stem, metric))
    # drop columns that are empty for every model (e.g. perplexity of a prompt-only file)
    columns = [
        c for c in columns if any(results[m].get(c[0], {}).get(c[1]) is not None for m in results)
    ] or columns
    short = {"accuracy": "acc", "perplexity": "ppl"}
    header = ["model"] + [f"{stem}:{short.get(metric, metric)}" for stem, metric in columns]
    rows = [header]
    for model, per_model in results.items():
        rows.append([model] + [_fmt(metric, per_model.get(stem, {}).get(metric)) for stem, metric in columns])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for k, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
