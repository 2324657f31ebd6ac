#!/usr/bin/env python3
"""Peak RSS and wall time of a tokenizer-union merge vs a plain merge of the same-shaped models.

Builds bf16 Llama-shaped checkpoints (~0.85B parameters: hidden 2048, 14 layers, vocab 32000) tensor by
tensor, as tools/bench.py (formerly bench_merge.py) does — never a whole model in memory — with real tokenizers:
  * base: a 32000-token byte-level BPE tokenizer;
  * ft1, ft2: finetunes of it that keep its vocabulary (the plain merge);
  * ft1u, ft2u: the same finetunes, each with 1,000 tokens added (ft1u special ones, ft2u plain ones)
    and its embeddings and head grown to 33,000 rows: their union has 34,000 tokens.
Then for each method it runs ``mergebench merge`` on base + ft1 + ft2 (no tokenizer keys) and on
base + ft1u + ft2u with ``tokenizer_source: union``, each in its own process; peak RSS is read by a
launcher process (RUSAGE_CHILDREN), so this process's own memory never pollutes it.

    python tools/bench_vocab.py --work /tmp/bench-vocab [--methods task_arithmetic,ties] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mergebench.io.writer import ShardedWriter, TensorSpec  # noqa: E402
from mergebench.methods.sparsify import seeded_generator  # noqa: E402

HIDDEN, INTERMEDIATE, VOCAB, ADDED = 2048, 5632, 32000, 1000
VOCAB_NAMES = ("model.embed_tokens.weight", "lm_head.weight")


def llama_specs(layers: int, vocab: int) -> list[TensorSpec]:
    bf16 = torch.bfloat16
    specs = [TensorSpec("model.embed_tokens.weight", (vocab, HIDDEN), bf16)]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [
            TensorSpec(p + "input_layernorm.weight", (HIDDEN,), bf16),
            TensorSpec(p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN), bf16),
            TensorSpec(p + "self_attn.k_proj.weight", (HIDDEN, HIDDEN), bf16),
            TensorSpec(p + "self_attn.v_proj.weight", (HIDDEN, HIDDEN), bf16),
            TensorSpec(p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN), bf16),
            TensorSpec(p + "post_attention_layernorm.weight", (HIDDEN,), bf16),
            TensorSpec(p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN), bf16),
            TensorSpec(p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN), bf16),
            TensorSpec(p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE), bf16),
        ]
    specs += [
        TensorSpec("model.norm.weight", (HIDDEN,), bf16),
        TensorSpec("lm_head.weight", (vocab, HIDDEN), bf16),
    ]
    return specs


def synthetic_tensor(spec: TensorSpec, model_index: int, added: int) -> torch.Tensor:
    """Base weights from a per-tensor seed; a finetune adds a small per-model delta, and a finetune that
    added tokens appends ``added`` rows of its own to the vocabulary tensors."""
    shape = (spec.shape[0] - added, *spec.shape[1:])
    tensor = torch.randn(shape, generator=seeded_generator(0, spec.name)) * 0.02
    if spec.name.endswith("norm.weight"):
        tensor += 1.0
    if model_index:
        tensor += torch.randn(shape, generator=seeded_generator(model_index, spec.name)) * 0.002
    if added:
        extra = torch.randn(
            (added, *spec.shape[1:]), generator=seeded_generator(100 + model_index, spec.name)
        )
        tensor = torch.cat([tensor, extra * 0.02])
    return tensor.to(spec.dtype)


def base_tokenizer():
    """A 32000-token byte-level BPE tokenizer (byte alphabet + synthetic word tokens, no merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    while len(vocab) < VOCAB:
        vocab[f"Ġw{len(vocab)}"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")


def build_models(work: Path, layers: int) -> dict[str, Path]:
    from transformers import AutoTokenizer

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 0,
        "eos_token_id": 1,
    }
    plan = {"base": (0, 0), "ft1": (1, 0), "ft2": (2, 0), "ft1u": (1, ADDED), "ft2u": (2, ADDED)}
    paths = {}
    for name, (index, added) in plan.items():
        path = work / name
        paths[name] = path
        if (path / "config.json").is_file():
            continue
        tmp = work / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        specs = llama_specs(layers, VOCAB + added)
        writer = ShardedWriter(tmp, specs, 1_000_000_000)
        for spec in specs:
            writer.write(spec.name, synthetic_tensor(spec, index, added if spec.name in VOCAB_NAMES else 0))
        writer.close()
        tokenizer = base_tokenizer() if index == 0 else AutoTokenizer.from_pretrained(paths["base"])
        if name == "ft1u":
            tokenizer.add_special_tokens(
                {"additional_special_tokens": [f"<|ft1_{i}|>" for i in range(ADDED)]}
            )
        if name == "ft2u":
            tokenizer.add_tokens([f"<tool_{i}>" for i in range(ADDED)])
        assert len(tokenizer) == VOCAB + added, (name, len(tokenizer))
        tokenizer.save_pretrained(tmp)
        (tmp / "config.json").write_text(json.dumps({**config, "vocab_size": VOCAB + added}, indent=2))
        tmp.rename(path)
        print(f"built {path}", flush=True)
    return paths


def config_for(method: str, base: Path, ft1: Path, ft2: Path, union: bool) -> str:
    density = {"ties": ", density: 0.2", "dare_ties": ", density: 0.5"}.get(method, "")
    text = (
        f"merge_method: {method}\nbase_model: {base}\nmodels:\n"
        f"  - model: {ft1}\n    parameters: {{weight: 0.6{density}}}\n"
        f"  - model: {ft2}\n    parameters: {{weight: 0.4{density}}}\n"
        "dtype: bfloat16\n"
    )
    return text + ("tokenizer_source: union\n" if union else "")


# Peak RSS is read by a small launcher process: a child spawned straight from this process would
# inherit its resident-set high-water mark at exec (as in tools/bench.py).
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=open(sys.argv[1] + '.err', 'w'))
open(sys.argv[1], 'w').write(f"{code} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
"""


def timed(command: list[str]) -> tuple[float, float]:
    """Run a command; returns (wall seconds, its peak RSS in GB); exits on failure."""
    os.sync()
    report = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-vocab-{os.getpid()}.rss"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", LAUNCHER, str(report), *command], check=False)
    wall = time.perf_counter() - start
    code, peak_kb = (int(x) for x in report.read_text().split())
    errors = Path(f"{report}.err").read_text(errors="replace")
    report.unlink(missing_ok=True)
    Path(f"{report}.err").unlink(missing_ok=True)
    if code:
        raise SystemExit(f"failed ({code}): {' '.join(command)}\n{errors[-2000:]}")
    return wall, peak_kb / 1e6


def warm(paths: list[Path]) -> None:
    """Read every input shard once, so both runs start from the same warm page cache."""
    buffer = bytearray(64 << 20)
    for path in paths:
        for shard in sorted(path.glob("*.safetensors")):
            with open(shard, "rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass


def run(args: argparse.Namespace) -> dict:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    paths = build_models(work, args.layers)
    results: dict[str, dict] = {}
    for method in args.methods:
        row: dict[str, float] = {}
        for kind, (ft1, ft2) in {"plain": ("ft1", "ft2"), "union": ("ft1u", "ft2u")}.items():
            config = work / f"{method}-{kind}.yaml"
            config.write_text(config_for(method, paths["base"], paths[ft1], paths[ft2], kind == "union"))
            out = work / "out"
            walls, peaks = [], []
            for _ in range(args.repeat):
                shutil.rmtree(out, ignore_errors=True)
                warm([paths["base"], paths[ft1], paths[ft2]])
                wall, peak = timed(
                    [sys.executable, "-m", "mergebench", "merge", str(config), str(out), "--no-progress"]
                )
                walls.append(wall)
                peaks.append(peak)
            rows = json.loads((out / "config.json").read_text())["vocab_size"]
            shutil.rmtree(out, ignore_errors=True)
            row[f"{kind}_s"] = sorted(walls)[len(walls) // 2]
            row[f"{kind}_rss_gb"] = max(peaks)
            row[f"{kind}_rows"] = rows
        row["rss_ratio"] = row["union_rss_gb"] / row["plain_rss_gb"]
        results[method] = row
        print(method, json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    return results


def report(results: dict) -> str:
    lines = [
        "| method | plain s | union s | plain RSS GB | union RSS GB | union ÷ plain RSS | rows (plain → union) |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        lines.append(
            f"| {method} | {r['plain_s']:.1f} | {r['union_s']:.1f} | {r['plain_rss_gb']:.2f} | "
            f"{r['union_rss_gb']:.2f} | {r['rss_ratio']:.2f} | {r['plain_rows']} → {r['union_rows']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default=".bench-vocab", help="where checkpoints, configs and outputs go")
    parser.add_argument("--layers", type=int, default=14, help="decoder layers (14 → ~0.85B parameters)")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=["task_arithmetic", "ties"])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each merge (median time, max RSS)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = run(args)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
