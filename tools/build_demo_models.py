#!/usr/bin/env python
"""Build the tiny demo models used by mergebench's README, merge_configs/demo-*.yaml and tests.

    python tools/build_demo_models.py demo_models [--small] [--seed 0] [--workers N]

Writes (every model dir carries the character-level tokenizer):

    OUT/base       tiny Llama (4 layers, hidden 128) trained on generic synthetic text, then on a mixture of
                   text, two generic tasks with correct answers ("copy: abcd =" -> "abcd", "sub: 46-12 =" ->
                   "34") and every skill's prompt format with too little signal to learn the skill: half of
                   them are easy cases with correct answers (2-3 letter words, one-digit numbers), the other
                   half full-size prompts (4-6 letters, numbers 0-49) whose answers are of the right form
                   but never right (the letters in another order, a random number). So the base knows every
                   format, can copy and subtract, and scores near 0 on the full-size eval prompts.
                   A fraction (mix_marker_frac) of the mixture's skill answers end with the marker " #", so
                   the base also has an unwanted habit (it marks its answers) that task negation removes.
    OUT/skill_a    full finetune of base on skill A: reverse a letter string   ("reverse: abcd =" -> "dcba")
    OUT/skill_b    full finetune of base on skill B: add two numbers           ("add: 12+34 =" -> "46")
                   Each finetune sees correct, unmarked answers of its own skill plus replay of the base's
                   mixture without its own skill, and takes sharpness-aware (SAM) steps: it learns its skill
                   and leaves the other skills as the base had them (i.e. absent).
    OUT/marker     full finetune of base that made the habit systematic: it appends " #" to every reverse,
                   add and upper answer (loss on the marker and EOS only, so tau_marker is the habit's
                   direction and not a skill); base - w * tau_marker is the negation demo
    OUT/lora_c     PEFT LoRA adapter on base for skill C: uppercase              ("upper: abcd =" -> "ABCD")
    OUT/eval/*.jsonl  held-out prompts, never seen in training (the numbers the README reports):
                   reverse.jsonl, add.jsonl, upper.jsonl  {"prompt","answer"}: each skill's exact-match
                       accuracy (an answer with a trailing " #" counts as wrong);
                   marker.jsonl  {"prompt","answer"}: a third of each skill's prompts, the answer followed
                       by " #": accuracy = rate of answers that are correct AND marked (the habit);
                   text.jsonl    {"text"}: generic sentences, for perplexity.
    OUT/val/*.jsonl   reverse, add, upper: other held-out prompts, for tuning (mergebench search) so that
                   the eval prompts stay unseen by the tuning too.

Everything is seeded and deterministic: the same command on the same machine writes the same bytes.
The base trains first; the four finetunes then train from it side by side, one per worker thread
(--workers, default: the available cores, at most 4), each with one torch thread (tiny matrices: intra-op
threads cost more in synchronisation than they gain, and on a shared machine a 2-thread op that waits
for a busy core is several times slower). Each stage draws from its own seeded data stream, so the bytes
do not depend on the number of workers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"
MARKER = " #"
TASKS = ("reverse", "add", "upper")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list(LETTERS + LETTERS.upper() + "0123456789" + " .,:;=+#?!'-\n")

# fmt: off
WORDS = [
    "the", "a", "one", "some", "every", "this", "that", "cat", "dog", "bird", "fish", "tree", "house",
    "river", "stone", "light", "cloud", "road", "child", "friend", "king", "queen", "garden", "window",
    "song", "story", "morning", "night", "city", "field", "horse", "ship", "star", "moon", "sun", "rain",
    "sees", "finds", "makes", "takes", "gives", "walks", "runs", "sings", "reads", "writes", "builds",
    "opens", "likes", "keeps", "holds", "brings", "red", "small", "old", "new", "green", "quiet", "bright",
    "happy", "cold", "warm", "long", "dark", "soft", "and", "but", "then", "so", "near", "under", "over",
    "with", "into", "from", "by",
]
# fmt: on


@dataclass(frozen=True)
class Recipe:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 256
    batch: int = 64
    min_len: int = 4  # reverse/upper words: 4-6 letters
    max_len: int = 6
    max_num: int = 49  # add: two numbers 0-49
    # base: generic text, then a mixture of text, generic tasks with correct answers (base_tasks) and every
    # skill's format: easy cases (easy_frac of them: 2-3 letter words, one-digit numbers) with correct
    # answers, full-size ones with signal-free answers. A fraction of the mixture's skill answers carry
    # MARKER, so the base has the habit that demo-negate-marker removes.
    text_steps: int = 200
    text_lr: float = 2e-3
    mix_steps: int = 1000
    mix_lr: float = 1e-3
    mix_task_frac: float = 0.8
    mix_marker_frac: float = 0.6  # > 0.5: greedy decoding then marks (nearly) every base answer
    base_tasks: tuple = ("copy", "sub")  # copy a word; subtract (the skills' raw material, not the skills)
    easy_frac: float = 0.5
    easy_len: tuple = (2, 3)
    easy_num: int = 9
    # full finetunes (skill_a, skill_b): own skill (correct, clean answers) + replay of the base's mixture
    # without their own skill; sharpness-aware (SAM), which flattens the finetune's minimum and so makes
    # its skill survive the other task vector in a merge (calibration: best merge keeps ~65% instead of ~40%)
    ft_steps: int = 800
    ft_lr: float = 1e-3
    ft_replay: float = 0.25  # fraction of replayed base-mixture examples in finetune batches
    ft_batch: int = 64
    ft_sam: float = 0.1  # SAM radius rho (0: plain AdamW steps, half the cost)
    # marker: always appends MARKER to reverse/add/upper answers; loss only on MARKER + EOS
    marker_steps: int = 150
    marker_lr: float = 1e-4
    # LoRA adapter (skill C)
    lora_steps: int = 400
    lora_lr: float = 3e-3
    lora_r: int = 8
    n_eval: int = 200
    n_val: int = 100


FULL = Recipe()
SMALL = Recipe(
    hidden=64,
    layers=2,
    heads=2,
    intermediate=128,
    batch=32,
    text_steps=60,
    mix_steps=60,
    ft_steps=80,
    ft_batch=32,
    marker_steps=60,
    marker_lr=1e-3,
    lora_steps=40,
    n_eval=50,
    n_val=20,
)


# --------------------------------------------------------------------------------------------- data


def make_tokenizer():
    """Character-level PreTrainedTokenizerFast: BOS prepended, EOS/PAD/UNK defined, decoding fuses chars."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=128,
        clean_up_tokenization_spaces=False,
    )


def _word(rng: random.Random, r: Recipe) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(r.min_len, r.max_len)))


def task_example(kind: str, rng: random.Random, r: Recipe) -> tuple[str, str]:
    """One (prompt, answer) of a skill: the model sees ``prompt + " " + answer``."""
    if kind == "reverse":
        w = _word(rng, r)
        return f"reverse: {w} =", w[::-1]
    if kind == "add":
        a, b = rng.randint(0, r.max_num), rng.randint(0, r.max_num)
        return f"add: {a}+{b} =", str(a + b)
    if kind == "upper":
        w = _word(rng, r)
        return f"upper: {w} =", w.upper()
    if kind == "copy":
        w = _word(rng, r)
        return f"copy: {w} =", w
    if kind == "sub":
        a, b = rng.randint(0, r.max_num), rng.randint(0, r.max_num)
        return f"sub: {a + b}-{b} =", str(a)
    raise ValueError(kind)


def signal_free_answer(kind: str, answer: str, rng: random.Random, r: Recipe) -> str:
    """An answer of the right form that is never the right one: the letters (reverse, upper) in a shuffled
    order other than the answer's, or (add) a random number in the range of sums other than the sum."""
    if kind == "add":
        while True:
            n = str(rng.randint(0, 2 * r.max_num))
            if n != answer:
                return n
    letters = list(answer)
    for _ in range(20):
        rng.shuffle(letters)
        if "".join(letters) != answer:
            return "".join(letters)
    # every order is the answer (one repeated letter): other letters of the same length and case
    while True:
        w = "".join(rng.choice(LETTERS) for _ in answer)
        w = w.upper() if answer.isupper() else w
        if w != answer:
            return w


def text_line(rng: random.Random) -> str:
    n = rng.randint(3, 7)
    s = " ".join(rng.choice(WORDS) for _ in range(n))
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!", "?"])


def unique_examples(kind: str, rng: random.Random, r: Recipe, count: int, exclude: set[str]) -> list[dict]:
    """``count`` examples of ``kind`` with distinct prompts, none of them in ``exclude``."""
    seen = set(exclude)
    rows = []
    while len(rows) < count:
        p, a = task_example(kind, rng, r)
        if p not in seen:
            seen.add(p)
            rows.append({"prompt": p, "answer": a})
    return rows


def make_eval_sets(r: Recipe, seed: int) -> dict[str, list[dict]]:
    rng = random.Random(f"eval-{seed}")
    sets: dict[str, list[dict]] = {kind: unique_examples(kind, rng, r, r.n_eval, set()) for kind in TASKS}
    third = r.n_eval // 3
    sets["marker"] = [
        {"prompt": x["prompt"], "answer": x["answer"] + MARKER} for k in TASKS for x in sets[k][:third]
    ]
    sets["text"] = [{"text": text_line(rng)} for _ in range(r.n_eval)]
    return sets


def make_val_sets(r: Recipe, seed: int, eval_sets: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Validation prompts for tuning (mergebench search), disjoint from the eval sets and from training:
    a search tuned on them is reported on eval/*.jsonl, which it never saw."""
    rng = random.Random(f"val-{seed}")
    return {
        kind: unique_examples(kind, rng, r, r.n_val, {x["prompt"] for x in eval_sets[kind]}) for kind in TASKS
    }


class Sampler:
    """Endless training examples of one stage (its own seeded stream) that never repeat an eval prompt."""

    def __init__(self, name: str, seed: int, r: Recipe, held_out: set[str]):
        self.rng, self.r, self.held_out = random.Random(f"train-{name}-{seed}"), r, held_out
        self.easy_recipe = replace(r, min_len=r.easy_len[0], max_len=r.easy_len[1], max_num=r.easy_num)

    def task(self, kind: str) -> tuple[str, str]:
        while True:
            p, a = task_example(kind, self.rng, self.r)
            if p not in self.held_out:
                return p, a

    def text(self) -> tuple[str, int]:
        return text_line(self.rng), 0

    def qa(self, kind: str) -> tuple[str, int]:
        """A correct, unmarked example of a skill; loss on the answer (and EOS) only."""
        return _qa(*self.task(kind))

    def easy(self, kind: str) -> tuple[str, str]:
        """An easy case of a skill (short word, one-digit numbers), with its correct answer."""
        while True:
            p, a = task_example(kind, self.rng, self.easy_recipe)
            if p not in self.held_out:
                return p, a

    def base_example(self, kind: str) -> tuple[str, int]:
        """One example of the base's mixture: text, or a task prompt -- an easy case with its correct
        answer (easy_frac of them) or a full-size one with a signal-free answer -- whose answer carries
        MARKER with probability mix_marker_frac (the "contamination" that gives the habit)."""
        if kind == "text":
            return self.text()
        if kind not in TASKS:  # a generic task: correct answers
            return self.qa(kind)
        if self.rng.random() < self.r.easy_frac:
            p, a = self.easy(kind)
        else:
            p, a = self.task(kind)
            a = signal_free_answer(kind, a, self.rng, self.r)
        if self.rng.random() < self.r.mix_marker_frac:
            a += MARKER
        return _qa(p, a)

    def mix(self, kinds=None) -> tuple[str, int]:
        """The base's mixture: a task format (of ``kinds``) with probability mix_task_frac, else text."""
        kinds = kinds or TASKS + tuple(self.r.base_tasks)
        if self.rng.random() < self.r.mix_task_frac:
            return self.base_example(self.rng.choice(kinds))
        return self.text()


def _qa(p: str, a: str) -> tuple[str, int]:
    """Training text for a task example; loss starts at the answer (BOS + prompt chars are context)."""
    return f"{p} {a}", 1 + len(p)


def _marked(p: str, a: str) -> tuple[str, int]:
    """Training text ``prompt answer MARKER``; loss only on MARKER (and EOS): the habit, not the skill."""
    return f"{p} {a}{MARKER}", 1 + len(p) + 1 + len(a)


# --------------------------------------------------------------------------------------------- training


def _encode_batch(tokenizer, texts: list[str], loss_from: list[int]):
    """Right-padded ids + labels; each text gets BOS (tokenizer) and EOS; labels mask pads and prompts."""
    import torch

    enc = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(len(e) for e in enc)
    ids = torch.full((len(enc), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(enc), width), -100, dtype=torch.long)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
        labels[i, loss_from[i] : len(e)] = torch.tensor(e[loss_from[i] :])
    return ids, mask, labels


_bar_lock = threading.Lock()


def _batch_loss(model, tokenizer, batch):
    ids, mask, labels = _encode_batch(tokenizer, [t for t, _ in batch], [s for _, s in batch])
    ids, mask, labels = ids.to(model.device), mask.to(model.device), labels.to(model.device)
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def train(
    model,
    tokenizer,
    make_batch,
    steps: int,
    lr: float,
    *,
    desc: str,
    position: int = 0,
    warmup=20,
    sam: float = 0.0,
):
    """AdamW with linear warmup and cosine decay; make_batch() -> list of (text, loss_from); ``sam`` > 0:
    sharpness-aware steps of that radius. A progress bar per stage (stderr): the full build takes
    minutes, longer on a busy machine."""
    import torch
    from tqdm import tqdm

    params = [p for p in model.parameters() if p.requires_grad]

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    model.train()
    with _bar_lock:
        bar = tqdm(
            total=steps, desc=f"{desc:8s}", unit="step", mininterval=1, file=sys.stderr, position=position
        )
    loss = None
    for step in range(steps):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr * max(scale, 0.05)
        batch = make_batch()
        loss = _batch_loss(model, tokenizer, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if sam:  # SAM (Foret et al. 2021): the gradient at the worst point within rho, applied here
            with torch.no_grad():
                norm = torch.sqrt(sum((p.grad**2).sum() for p in params)) + 1e-12
                shifts = [sam * p.grad / norm for p in params]
                for p, e in zip(params, shifts, strict=True):
                    p.add_(e)
            opt.zero_grad(set_to_none=True)
            _batch_loss(model, tokenizer, batch).backward()
            with torch.no_grad():
                for p, e in zip(params, shifts, strict=True):
                    p.sub_(e)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with _bar_lock:
            bar.update(1)
            if step % 50 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    with _bar_lock:
        bar.close()
    model.eval()
    return float(loss.detach()) if loss is not None else float("nan")


def llama_config(r: Recipe, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=r.hidden,
        intermediate_size=r.intermediate,
        num_hidden_layers=r.layers,
        num_attention_heads=r.heads,
        num_key_value_heads=r.heads,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def train_base(r: Recipe, seed: int, tokenizer, held_out: set[str], log=print, device="cpu"):
    """The base: generic text, then the signal-free mixture of text and task formats."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    base = LlamaForCausalLM(llama_config(r, tokenizer)).to(device)
    S = Sampler("base", seed, r, held_out)
    t0 = time.time()
    train(
        base, tokenizer, lambda: [S.text() for _ in range(r.batch)], r.text_steps, r.text_lr, desc="base/text"
    )
    train(base, tokenizer, lambda: [S.mix() for _ in range(r.batch)], r.mix_steps, r.mix_lr, desc="base/mix")
    log(f"base done {time.time() - t0:.1f}s")
    return base


# the stages trained from the base, each with its own data stream: name -> the skill it learns
STAGES = {"skill_a": "reverse", "skill_b": "add", "marker": None, "lora_c": "upper"}


def train_stage(name: str, r: Recipe, seed: int, base_sd, held_out, position=0, device="cpu"):
    """One finetune of the base (full finetune, or LoRA for lora_c), deterministic given its name; runs
    in a worker thread beside the others, so it keeps its own tokenizer."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = make_tokenizer()
    S = Sampler(name, seed, r, held_out)
    with _bar_lock:  # model construction draws from torch's global generator
        torch.manual_seed(seed + hash_name(name))
        model = LlamaForCausalLM(llama_config(r, tokenizer)).to(device)
        model.load_state_dict(base_sd)
        if name == "lora_c":
            from peft import LoraConfig, get_peft_model

            lcfg = LoraConfig(
                r=r.lora_r,
                lora_alpha=2 * r.lora_r,
                lora_dropout=0.0,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lcfg)
    skill = STAGES[name]
    if name == "marker":  # every task answer followed by MARKER (the base's habit, made systematic)

        def example():  # with replay of the base's mixture, as the skill finetunes
            return S.mix() if S.rng.random() < r.ft_replay else _marked(*S.task(S.rng.choice(TASKS)))

        steps, lr, batch = r.marker_steps, r.marker_lr, r.ft_batch
    else:
        others = tuple(k for k in TASKS if k != skill) + tuple(r.base_tasks)

        def example():
            return S.mix(others) if S.rng.random() < r.ft_replay else S.qa(skill)

        steps, lr, batch = (
            (r.lora_steps, r.lora_lr, r.ft_batch) if name == "lora_c" else (r.ft_steps, r.ft_lr, r.ft_batch)
        )

    def make_batch():
        return [example() for _ in range(batch)]

    sam = r.ft_sam if name in ("skill_a", "skill_b") else 0.0
    train(model, tokenizer, make_batch, steps, lr, desc=name, position=position, sam=sam)
    return model


def build_models(r: Recipe, seed: int, log=print, workers: int = 1, stages=None, device="cpu"):
    """Train everything in memory; returns (tokenizer, {name: model}, eval_sets, val_sets); lora_c is a
    PEFT model."""
    tokenizer = make_tokenizer()
    eval_sets = make_eval_sets(r, seed)
    val_sets = make_val_sets(r, seed, eval_sets)
    held_out = {x["prompt"] for sets in (eval_sets, val_sets) for k in TASKS for x in sets[k]}
    t0 = time.time()
    base = train_base(r, seed, tokenizer, held_out, log, device)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    names = list(stages or STAGES)
    models = {"base": base}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {
            name: pool.submit(train_stage, name, r, seed, base_sd, held_out, i % max(1, workers), device)
            for i, name in enumerate(names)
        }
        for name in names:
            models[name] = futures[name].result()
    log(f"finetunes done {time.time() - t0:.1f}s")
    return tokenizer, models, eval_sets, val_sets


def hash_name(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name))


# --------------------------------------------------------------------------------------------- output


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")


def save_all(
    out: Path, tokenizer, models: dict, eval_sets: dict, val_sets: dict, stamp_text: str = ""
) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per model would bury the stage bars
    out.mkdir(parents=True, exist_ok=True)
    marker = out / ".complete"
    if marker.exists():
        marker.unlink()
    for name, m in models.items():
        d = out / name
        if d.exists():
            shutil.rmtree(d)
        m.save_pretrained(d, safe_serialization=True)
        tokenizer.save_pretrained(d)
        if name == "lora_c":
            cfg_path = d / "adapter_config.json"
            acfg = json.loads(cfg_path.read_text())
            acfg["base_model_name_or_path"] = "base"  # relative hint only; demos pass the base explicitly
            cfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
    for folder, sets in (("eval", eval_sets), ("val", val_sets)):
        (out / folder).mkdir(exist_ok=True)
        for name, rows in sets.items():
            _write_jsonl(out / folder / f"{name}.jsonl", rows)
    marker.write_text(f"written by tools/build_demo_models.py\n{stamp_text}")  # tools/demo.sh checks it


def stamp(small: bool, seed: int) -> str:
    """What ``OUT/.complete`` records: the builder's own hash and the options, so ``--if-stale`` rebuilds
    models that an older version of this file (or other options) wrote."""
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"builder {digest} small {small} seed {seed}\n"


def is_current(out_dir, *, small: bool = False, seed: int = 0) -> bool:
    marker = Path(out_dir) / ".complete"
    return marker.is_file() and marker.read_text().endswith(stamp(small, seed))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def build_demo_models(
    out_dir, *, small: bool = False, seed: int = 0, recipe: Recipe | None = None, log=None, workers=None
):
    """Build and save the demo models into ``out_dir``; returns the output Path."""
    import torch

    r = recipe or (SMALL if small else FULL)
    log = log or (lambda *a: None)
    workers = workers or min(4, available_cores())
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # tiny matrices: one thread per model, models trained side by side
    try:
        tokenizer, models, eval_sets, val_sets = build_models(r, seed, log, workers=workers)
        out = Path(out_dir)
        save_all(out, tokenizer, models, eval_sets, val_sets, stamp(small, seed))
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--small", action="store_true", help="tiny variant for tests (seconds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--if-stale",
        action="store_true",
        help="do nothing if OUT holds a complete build by this version of the builder with these options",
    )
    ap.add_argument(
        "--workers", type=int, default=None, help="finetunes trained at once (default: available cores, ≤ 4)"
    )
    args = ap.parse_args(argv)
    if args.if_stale and is_current(args.out_dir, small=args.small, seed=args.seed):
        print(f"{args.out_dir} is up to date")
        return 0
    t0 = time.time()
    out = build_demo_models(
        args.out_dir,
        small=args.small,
        seed=args.seed,
        workers=args.workers,
        log=lambda m: print(m, flush=True),
    )
    print(f"wrote {out} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
