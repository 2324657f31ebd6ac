#!/usr/bin/env python
"""Build the tiny demo models used by mergebench's README, merge_configs/demo-*.yaml and tests.

    python tools/build_demo_models.py demo_models [--small] [--seed 0]

Writes (every model dir carries the character-level tokenizer):

    OUT/base       tiny Llama trained on generic synthetic text, then on a mixture of text and all task formats.
                   The mixture is "contaminated": a fraction (mix_marker_frac) of its task answers end with
                   the marker " #", so the base has an unwanted habit (it marks most answers, which exact
                   match counts as wrong) -- the behaviour that task negation removes
    OUT/skill_a    full finetune of base on skill A: reverse a letter string   ("reverse: abcd =" -> "dcba")
    OUT/skill_b    full finetune of base on skill B: add two numbers           ("add: 12+34 =" -> "46")
                   Each finetune sees clean (unmarked) answers of its own skill, plus replay of the base's
                   mixture (text and every task format, marked as in the base): a small move from the base
                   that leaves the other skills as the base had them.
    OUT/marker     full finetune of base that made the habit systematic: it appends " #" to every reverse,
                   add and upper answer (loss on the marker and EOS only, so tau_marker is the habit's
                   direction and not a skill); base - w * tau_marker is the negation demo
    OUT/lora_c     PEFT LoRA adapter on base for skill C: uppercase              ("upper: abcd =" -> "ABCD")
    OUT/eval/*.jsonl  held-out prompts, never seen in training:
                   reverse.jsonl, add.jsonl, upper.jsonl  {"prompt","answer"}: each skill's exact-match
                       accuracy (an answer with a trailing " #" counts as wrong);
                   marker.jsonl  {"prompt","answer"}: a third of each skill's prompts, the answer followed
                       by " #": accuracy = rate of answers that are correct AND marked (the habit);
                   text.jsonl    {"text"}: generic sentences, for perplexity.

Everything is seeded and single-process deterministic: the same command writes the same bytes.
Hyper-parameters (Recipe below) came from a calibration sweep of in-memory merges (mergebench's own
method functions and exact-match eval); see the report in the project notes for the numbers measured.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"
MARKER = " #"
TASKS = ("reverse", "add", "upper")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list(LETTERS + LETTERS.upper() + "0123456789" + " .,:;=+#?!'-\n")

WORDS = [
    "the",
    "a",
    "one",
    "some",
    "every",
    "this",
    "that",
    "cat",
    "dog",
    "bird",
    "fish",
    "tree",
    "house",
    "river",
    "stone",
    "light",
    "cloud",
    "road",
    "child",
    "friend",
    "king",
    "queen",
    "garden",
    "window",
    "song",
    "story",
    "morning",
    "night",
    "city",
    "field",
    "horse",
    "ship",
    "star",
    "moon",
    "sun",
    "rain",
    "sees",
    "finds",
    "makes",
    "takes",
    "gives",
    "walks",
    "runs",
    "sings",
    "reads",
    "writes",
    "builds",
    "opens",
    "likes",
    "keeps",
    "holds",
    "brings",
    "red",
    "small",
    "old",
    "new",
    "green",
    "quiet",
    "bright",
    "happy",
    "cold",
    "warm",
    "long",
    "dark",
    "soft",
    "and",
    "but",
    "then",
    "so",
    "near",
    "under",
    "over",
    "with",
    "into",
    "from",
    "by",
]  # noqa: SIM905 - a word list reads better as one string


@dataclass(frozen=True)
class Recipe:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 256
    batch: int = 64
    # base: generic text, then a mixture of text and every task format ("contaminated": a fraction of the
    # mixture's task answers carry MARKER, so the base has the habit that demo-negate-marker removes)
    text_steps: int = 200
    text_lr: float = 2e-3
    mix_steps: int = 1000
    mix_lr: float = 1e-3
    mix_task_frac: float = 0.8
    mix_marker_frac: float = 0.6  # > 0.5: greedy decoding then marks (nearly) every base answer
    # full finetunes (skill_a, skill_b): own skill (clean answers) + replay of the base's data
    ft_steps: int = 500
    ft_lr: float = 3e-4
    ft_replay: float = 0.25  # fraction of replayed base-mixture examples in finetune batches
    ft_replay_kinds: tuple = ("text",) + TASKS  # what replay draws from (task answers marked as in base)
    ft_batch: int = 32
    # marker: always appends MARKER to reverse/add/upper answers; loss only on MARKER + EOS
    marker_steps: int = 150
    marker_lr: float = 1e-4
    marker_loss_answer: bool = False  # True: loss on the whole answer too (the finetune also drills skills)
    # LoRA adapter (skill C)
    lora_steps: int = 150
    lora_lr: float = 2e-3
    lora_r: int = 8
    n_eval: int = 200
    min_len: int = 4
    max_len: int = 6
    max_num: int = 20


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
    ft_lr=1e-3,
    marker_steps=60,
    marker_lr=1e-3,
    lora_steps=40,
    n_eval=50,
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
    raise ValueError(kind)


def text_line(rng: random.Random) -> str:
    n = rng.randint(3, 7)
    s = " ".join(rng.choice(WORDS) for _ in range(n))
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!", "?"])


def make_eval_sets(r: Recipe, seed: int) -> dict[str, list[dict]]:
    rng = random.Random(f"eval-{seed}")
    sets: dict[str, list[dict]] = {}
    for kind in TASKS:
        seen: set[str] = set()
        rows = []
        while len(rows) < r.n_eval:
            p, a = task_example(kind, rng, r)
            if p not in seen:
                seen.add(p)
                rows.append({"prompt": p, "answer": a})
        sets[kind] = rows
    third = r.n_eval // 3
    sets["marker"] = [
        {"prompt": x["prompt"], "answer": x["answer"] + MARKER} for k in TASKS for x in sets[k][:third]
    ]
    sets["text"] = [{"text": text_line(rng)} for _ in range(r.n_eval)]
    return sets


class Sampler:
    """Endless training examples (as strings) that never repeat a held-out eval prompt."""

    def __init__(self, rng: random.Random, r: Recipe, held_out: set[str]):
        self.rng, self.r, self.held_out = rng, r, held_out

    def task(self, kind: str) -> tuple[str, str]:
        while True:
            p, a = task_example(kind, self.rng, self.r)
            if p not in self.held_out:
                return p, a

    def text(self) -> str:
        return text_line(self.rng)


# --------------------------------------------------------------------------------------------- training


def _encode_batch(tokenizer, texts: list[str], loss_from: list[int] | None = None, device="cpu"):
    """Right-padded ids + labels; each text gets BOS (tokenizer) and EOS; labels mask pads (and prompts)."""
    import torch

    enc = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(len(e) for e in enc)
    ids = torch.full((len(enc), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(enc), width), -100, dtype=torch.long)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
        start = 0 if loss_from is None else loss_from[i]
        labels[i, start : len(e)] = torch.tensor(e[start:])
    return ids.to(device), mask.to(device), labels.to(device)


def train(
    model,
    tokenizer,
    make_batch,
    steps: int,
    lr: float,
    *,
    warmup: int = 20,
    params=None,
    device="cpu",
    desc: str = "training",
):
    """AdamW with linear warmup and cosine decay; make_batch() -> list of (text, loss_from or 0).
    A progress bar per stage: the full build takes minutes (longer on a busy machine)."""
    import torch
    from tqdm import tqdm

    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    import math

    model.train()
    for step in tqdm(range(steps), desc=desc, unit="step", mininterval=2, file=sys.stderr):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr * max(scale, 0.05)
        batch = make_batch()
        ids, mask, labels = _encode_batch(tokenizer, [t for t, _ in batch], [s for _, s in batch], device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    model.eval()
    return float(loss.detach())


def _qa(p: str, a: str, tokenizer) -> tuple[str, int]:
    """Training text for a task example; loss starts at the answer (BOS + prompt chars are context)."""
    return f"{p} {a}", 1 + len(p)


def _marked(p: str, a: str, tokenizer) -> tuple[str, int]:
    """Training text ``prompt answer MARKER``; loss only on MARKER (and EOS): the habit, not the skill."""
    return f"{p} {a}{MARKER}", 1 + len(p) + 1 + len(a)


def build_models(r: Recipe, seed: int, log=print, device="cpu", lora_adapter: bool = True):
    """Train everything in memory; returns (tokenizer, {name: model}, lora_model, eval_sets)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    eval_sets = make_eval_sets(r, seed)
    held_out = {x["prompt"] for k in TASKS for x in eval_sets[k]}
    rng = random.Random(f"train-{seed}")
    S = Sampler(rng, r, held_out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
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
    base = LlamaForCausalLM(cfg).to(device)
    B = r.batch
    t0 = time.time()

    def text_batch():
        return [(S.text(), 0) for _ in range(B)]

    train(base, tokenizer, text_batch, r.text_steps, r.text_lr, device=device, desc="base/text")
    log(f"base/text done {time.time() - t0:.1f}s")

    def base_example(kind: str):
        """One example of the base's training data: text, or a task answer that carries MARKER with
        probability mix_marker_frac (the "contamination" that gives the base the habit)."""
        if kind == "text":
            return (S.text(), 0)
        p, a = S.task(kind)
        if rng.random() < r.mix_marker_frac:
            a += MARKER
        return _qa(p, a, tokenizer)

    def mix_batch():
        return [
            base_example(rng.choice(TASKS) if rng.random() < r.mix_task_frac else "text") for _ in range(B)
        ]

    train(base, tokenizer, mix_batch, r.mix_steps, r.mix_lr, device=device, desc="base/mix")
    log(f"base/mix done {time.time() - t0:.1f}s")
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}

    def replay():
        return base_example(rng.choice(r.ft_replay_kinds))

    def finetune(make_example, steps, lr, name):
        torch.manual_seed(seed + hash_name(name))
        m = LlamaForCausalLM(cfg).to(device)
        m.load_state_dict(base_sd)

        def batch():
            return [replay() if rng.random() < r.ft_replay else make_example() for _ in range(r.ft_batch)]

        train(m, tokenizer, batch, steps, lr, device=device, desc=name)
        log(f"{name} done {time.time() - t0:.1f}s")
        return m

    models = {"base": base}
    models["skill_a"] = finetune(lambda: _qa(*S.task("reverse"), tokenizer), r.ft_steps, r.ft_lr, "skill_a")
    models["skill_b"] = finetune(lambda: _qa(*S.task("add"), tokenizer), r.ft_steps, r.ft_lr, "skill_b")

    # marker: every task answer followed by MARKER (the base's habit, made systematic)
    def marker_example():
        p, a = S.task(rng.choice(TASKS))
        if r.marker_loss_answer:
            return _qa(p, a + MARKER, tokenizer)
        return _marked(p, a, tokenizer)

    models["marker"] = finetune(marker_example, r.marker_steps, r.marker_lr, "marker")

    if not lora_adapter:
        return tokenizer, models, None, eval_sets
    # LoRA adapter for skill C on top of base
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed + hash_name("lora_c"))
    lbase = LlamaForCausalLM(cfg).to(device)
    lbase.load_state_dict(base_sd)
    lcfg = LoraConfig(
        r=r.lora_r,
        lora_alpha=2 * r.lora_r,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    lora = get_peft_model(lbase, lcfg)

    def lora_batch():
        return [
            (S.text(), 0) if rng.random() < r.ft_replay else _qa(*S.task("upper"), tokenizer)
            for _ in range(r.ft_batch)
        ]

    train(lora, tokenizer, lora_batch, r.lora_steps, r.lora_lr, device=device, desc="lora_c")
    log(f"lora_c done {time.time() - t0:.1f}s")
    return tokenizer, models, lora, eval_sets


def hash_name(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name))


# --------------------------------------------------------------------------------------------- output


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")


def save_all(out: Path, tokenizer, models: dict, lora, eval_sets: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, m in models.items():
        d = out / name
        if d.exists():
            shutil.rmtree(d)
        m.save_pretrained(d, safe_serialization=True)
        tokenizer.save_pretrained(d)
    d = out / "lora_c"
    if d.exists():
        shutil.rmtree(d)
    lora.save_pretrained(d, safe_serialization=True)
    cfg_path = d / "adapter_config.json"
    acfg = json.loads(cfg_path.read_text())
    acfg["base_model_name_or_path"] = "base"  # relative hint only; demos pass the base explicitly
    cfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(d)
    ev = out / "eval"
    ev.mkdir(exist_ok=True)
    for name, rows in eval_sets.items():
        _write_jsonl(ev / f"{name}.jsonl", rows)
    (out / ".complete").write_text("written by tools/build_demo_models.py\n")  # tools/demo.sh checks it


def build_demo_models(out_dir, *, small: bool = False, seed: int = 0, recipe: Recipe | None = None, log=None):
    """Build and save the demo models into ``out_dir``; returns the output Path."""
    import torch

    r = recipe or (SMALL if small else FULL)
    log = log or (lambda *a: None)
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if small:  # tiny matrices: threads only add synchronisation overhead
        torch.set_num_threads(1)
    try:
        tokenizer, models, lora, eval_sets = build_models(r, seed, log)
        out = Path(out_dir)
        save_all(out, tokenizer, models, lora, eval_sets)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--small", action="store_true", help="tiny variant for tests (seconds)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.time()
    out = build_demo_models(
        args.out_dir, small=args.small, seed=args.seed, log=lambda m: print(m, flush=True)
    )
    print(f"wrote {out} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
