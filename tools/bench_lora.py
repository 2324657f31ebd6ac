"""Benchmark ``mergebench lora merge`` against the I/O floor and against PEFT, side by side.

    python tools/bench_lora.py [WORKDIR] [--keep]

Builds (or reuses, in WORKDIR) a ~0.85B-parameter bf16 Llama-shaped base (hidden 2048, 16 layers,
intermediate 5632, 16 heads / 4 KV heads, vocab 32000; ~1 GB shards, written tensor by tensor) and a
rank-64 PEFT adapter on q,k,v,o,gate,up,down. Then, each in its own subprocess with a warm page cache:

- floor:  read every input byte once and write the output once (shard copy through one reused buffer,
          in tensor-sized writes) — what any streaming merge must at least do;
- mergebench: ``lora merge BASE ADAPTER --out …`` (same shard size);
- peft:   transformers ``from_pretrained`` + ``PeftModel.from_pretrained`` + ``merge_and_unload`` +
          ``save_pretrained``.

Wall time (median of --repeat runs, each after ``sync``, process start and imports included) and peak
RSS (read by bench_merge's launcher, so this process's own memory does not leak into it) are printed
with ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_merge import timed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HIDDEN, LAYERS, INTER, VOCAB, HEADS, KV_HEADS, RANK = 2048, 16, 5632, 32000, 16, 4, 64
SHARD = "1GB"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def llama_shapes() -> list[tuple[str, tuple[int, ...]]]:
    kv = HIDDEN // HEADS * KV_HEADS
    shapes = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.k_proj.weight", (kv, HIDDEN)),
            (p + "self_attn.v_proj.weight", (kv, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
            (p + "mlp.gate_proj.weight", (INTER, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTER, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTER)),
        ]
    return shapes + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def build(workdir: Path) -> tuple[Path, Path]:
    """The synthetic base (streamed with the core writer, never whole in memory) and its adapter."""
    from safetensors.torch import save_file

    from mergebench.io.writer import ShardedWriter, TensorSpec, parse_size

    base, adapter = workdir / "base", workdir / "adapter"
    if not (base / "model.safetensors.index.json").is_file():
        print("building the synthetic base …", flush=True)
        base.mkdir(parents=True, exist_ok=True)
        shapes = llama_shapes()
        writer = ShardedWriter(base, [TensorSpec(n, s, torch.bfloat16) for n, s in shapes], parse_size(SHARD))
        generator = torch.Generator().manual_seed(0)
        for name, shape in shapes:
            if len(shape) == 1:
                tensor = torch.ones(shape, dtype=torch.bfloat16)
            else:
                tensor = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
            writer.write(name, tensor)
        writer.close()
        config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": HIDDEN,
            "intermediate_size": INTER,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "vocab_size": VOCAB,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "hidden_act": "silu",
            "torch_dtype": "bfloat16",
        }
        (base / "config.json").write_text(json.dumps(config, indent=2))
    if not (adapter / "adapter_model.safetensors").is_file():
        print("building the rank-64 adapter …", flush=True)
        adapter.mkdir(parents=True, exist_ok=True)
        generator = torch.Generator().manual_seed(1)
        tensors = {}
        for name, shape in llama_shapes():
            module = name.removesuffix(".weight")
            if module.rsplit(".", 1)[-1] in TARGETS:
                out_f, in_f = shape
                prefix = f"base_model.model.{module}"
                tensors[f"{prefix}.lora_A.weight"] = (torch.randn(RANK, in_f, generator=generator) * 0.01).to(
                    torch.bfloat16
                )
                tensors[f"{prefix}.lora_B.weight"] = (
                    torch.randn(out_f, RANK, generator=generator) * 0.01
                ).to(torch.bfloat16)
        save_file(tensors, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": RANK,
            "lora_alpha": 2 * RANK,
            "target_modules": TARGETS,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "use_rslora": False,
            "use_dora": False,
            "base_model_name_or_path": str(base),
        }
        (adapter / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return base, adapter


FLOOR = r"""
import sys, json, os
from pathlib import Path
from mergebench.io.safetensors_header import read_header
src, dst, adapter = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
dst.mkdir()
buffer = bytearray(256 << 20)
view = memoryview(buffer)
with open(adapter, "rb", buffering=0) as f:  # the adapter is read once too
    while f.readinto(view):
        pass
for shard in sorted(src.glob("*.safetensors")):
    infos, _ = read_header(shard)
    start = min(i.offset for i in infos.values())
    with open(shard, "rb", buffering=0) as f, open(dst / shard.name, "wb") as g:
        g.write(f.read(start))
        for info in sorted(infos.values(), key=lambda i: i.offset):
            chunk = view[: info.nbytes]
            f.seek(info.offset)
            done = 0
            while done < info.nbytes:
                done += f.readinto(chunk[done:])
            g.write(chunk)
"""

OURS = r"""
import sys
from mergebench.cli import main
main(["lora", "merge", sys.argv[1], sys.argv[2], "--out", sys.argv[3], "--max-shard-size", sys.argv[4], "--no-progress"])
"""

PEFT = r"""
import sys, torch, transformers, peft
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
model = peft.PeftModel.from_pretrained(model, sys.argv[2]).merge_and_unload()
model.save_pretrained(sys.argv[3], max_shard_size=sys.argv[4])
"""


def run(script: str, *args: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one child process, measured as in bench_merge."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    wall, rss, code = timed([sys.executable, "-c", script, *map(str, args)], env)
    if code:
        raise SystemExit(f"benchmark step failed (exit {code}): {args}")
    return wall, rss


def warm(paths: list[Path]) -> None:
    for path in paths:
        for file in path.glob("*.safetensors"):
            with open(file, "rb") as handle:
                while handle.read(64 << 20):
                    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?", default="/tmp/mergebench-bench-lora", type=Path)
    parser.add_argument("--repeat", type=int, default=3, help="runs of floor and mergebench (median kept)")
    parser.add_argument("--skip-peft", action="store_true")
    args = parser.parse_args()
    base, adapter = build(args.workdir)
    outs = args.workdir / "outputs"
    shutil.rmtree(outs, ignore_errors=True)
    outs.mkdir()
    warm([base, adapter])
    size = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 1e9
    print(
        f"base: {size:.2f} GB in {len(list(base.glob('*.safetensors')))} shards; adapter rank {RANK}",
        flush=True,
    )

    results: dict[str, tuple[float, float]] = {}
    runs: dict[str, list[tuple[float, float]]] = {}
    steps = [
        ("I/O floor (copy)", FLOOR, (base, None, adapter / "adapter_model.safetensors")),
        ("mergebench lora merge", OURS, (base, adapter, None, SHARD)),
    ]
    for _ in range(args.repeat):
        for label, script, params in steps:
            out = outs / label.split()[0].replace("/", "")
            shutil.rmtree(out, ignore_errors=True)
            params = tuple(out if p is None else p for p in params)
            wall, rss = run(script, *params)
            runs.setdefault(label, []).append((wall, rss))
            shutil.rmtree(out, ignore_errors=True)
    for label, measured in runs.items():  # median wall time (this VM's disk writeback is noisy), max RSS
        walls = sorted(wall for wall, _ in measured)
        results[label] = (walls[len(walls) // 2], max(rss for _, rss in measured))
        print(f"{label}: runs {', '.join(f'{w:.2f}' for w, _ in measured)} s", flush=True)
    if not args.skip_peft:
        out = outs / "peft"
        results["peft merge_and_unload"] = run(PEFT, base, adapter, out, SHARD)
        shutil.rmtree(out, ignore_errors=True)

    floor_wall, _ = results["I/O floor (copy)"]
    ours_wall, ours_rss = results["mergebench lora merge"]
    print()
    print(f"{'':26s} {'wall s':>8s} {'× floor':>8s} {'peak RSS GB':>12s} {'RSS × ours':>11s}")
    for label, (wall, rss) in results.items():
        print(f"{label:26s} {wall:8.2f} {wall / floor_wall:8.2f} {rss:12.2f} {rss / ours_rss:11.2f}")
    if "peft merge_and_unload" in results:
        peft_wall, peft_rss = results["peft merge_and_unload"]
        print(
            f"\nmergebench vs peft: {peft_wall / ours_wall:.1f}× faster, {peft_rss / ours_rss:.1f}× less peak RSS"
        )


if __name__ == "__main__":
    main()
