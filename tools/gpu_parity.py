#!/usr/bin/env python3
"""Check on a CUDA machine that ``--device cuda`` gives the CPU's output for every merge method.

Builds a small bf16 Llama-shaped base and three finetunes (tensor by tensor, seeded), merges each
registered method on the CPU and with ``--device cuda`` through the real CLI, and prints, per method,
the entries that differ by more than one bf16 rounding step and the largest difference, plus the peak GPU memory the
CLI reported. Both paths compute in float32 and round once, so the expected difference is at most one
bf16 step (float32 sums taken in another order).

    python tools/gpu_parity.py --work /tmp/gpu-parity [--layers 4] [--methods ties,slerp]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mergebench.io.writer import ShardedWriter, TensorSpec  # noqa: E402
from mergebench.methods import all_methods  # noqa: E402
from mergebench.methods.sparsify import seeded_generator  # noqa: E402


def build(
    work: Path, layers: int, hidden: int = 512, intermediate: int = 1408, vocab: int = 8000
) -> list[Path]:
    specs = [TensorSpec("model.embed_tokens.weight", (vocab, hidden), torch.bfloat16)]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [TensorSpec(p + "input_layernorm.weight", (hidden,), torch.bfloat16)]
        specs += [
            TensorSpec(p + f"self_attn.{n}_proj.weight", (hidden, hidden), torch.bfloat16) for n in "qkvo"
        ]
        specs += [TensorSpec(p + "post_attention_layernorm.weight", (hidden,), torch.bfloat16)]
        specs += [
            TensorSpec(p + f"mlp.{n}_proj.weight", (intermediate, hidden), torch.bfloat16)
            for n in ("gate", "up")
        ]
        specs += [TensorSpec(p + "mlp.down_proj.weight", (hidden, intermediate), torch.bfloat16)]
    specs += [TensorSpec("model.norm.weight", (hidden,), torch.bfloat16)]
    specs += [TensorSpec("lm_head.weight", (vocab, hidden), torch.bfloat16)]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    paths = []
    for index in range(4):
        path = work / f"m{index}"
        paths.append(path)
        if (path / "config.json").is_file():
            continue
        path.mkdir(parents=True, exist_ok=True)
        writer = ShardedWriter(path, specs, 200_000_000)
        for spec in specs:
            base = torch.randn(spec.shape, generator=seeded_generator(0, spec.name)) * 0.02
            if index:
                base += torch.randn(spec.shape, generator=seeded_generator(index, spec.name)) * 0.004
            writer.write(spec.name, base.to(spec.dtype))
        writer.close()
        (path / "config.json").write_text(json.dumps(config))
    return paths


def config_for(name: str, paths: list[Path]) -> dict:
    method = all_methods()[name]
    base, *others = (str(p) for p in paths)
    count = method.model_count or 3
    models = [{"model": m, "parameters": {}} for m in others[:count]]
    params: dict = {}
    for p in method.params:
        if p.default is None:
            value = 0.5 if p.name != "weight" else 0.6
            if p.per_model:
                for entry in models:
                    entry["parameters"][p.name] = value
            else:
                params[p.name] = value
    if any(p.name == "density" for p in method.params):
        params["density"] = 0.4
    config = {"merge_method": name, "models": models, "parameters": params}
    if method.base != "unused":
        config["base_model"] = base
    return config


def mismatches(a: torch.Tensor, b: torch.Tensor) -> int:
    """Entries more than one bf16 rounding step apart (relative), beyond float32 cancellation noise."""
    x, y = a.double(), b.double()
    tolerance = 2.0**-7 * torch.maximum(x.abs(), y.abs()) + 2.0**-20 * float(y.abs().max())
    return int(((x - y).abs() > tolerance).sum())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="/tmp/gpu-parity")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--methods", type=lambda s: s.split(","), default=None)
    args = parser.parse_args()
    work = Path(args.work)
    paths = build(work, args.layers)
    failed = []
    for name in args.methods or sorted(all_methods()):
        if name == "passthrough":
            continue
        cfg = work / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(config_for(name, paths)))
        outs, seconds, memory = {}, {}, ""
        for device in ("cpu", "cuda"):
            out = work / f"out-{name}-{device}"
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "mergebench", "merge", str(cfg), str(out), "--no-progress", "--overwrite",
                 "--device", device],
                capture_output=True, text=True,
            )  # fmt: skip
            seconds[device] = time.perf_counter() - started
            if done.returncode:
                print(f"{name} {device}: FAILED\n{done.stderr[-1500:]}", flush=True)
                failed.append(name)
                break
            memory = next((line for line in done.stderr.splitlines() if "peak GPU" in line), memory)
            outs[device] = {k: v for p in sorted(out.glob("*.safetensors")) for k, v in load_file(p).items()}
        if len(outs) < 2:
            continue
        differing = sum(mismatches(outs["cpu"][k], outs["cuda"][k]) for k in outs["cpu"])
        worst = max(
            float((outs["cpu"][k].float() - outs["cuda"][k].float()).abs().max()) for k in outs["cpu"]
        )
        flag = "" if differing == 0 else "   <-- differs"
        print(
            f"{name:16s} entries beyond rounding {differing:6d}  max |diff| {worst:.3g}  cpu {seconds['cpu']:.1f}s "
            f"cuda {seconds['cuda']:.1f}s  {memory}{flag}",
            flush=True,
        )
        if differing:
            failed.append(name)
    print("all methods agree" if not failed else f"differences or failures: {', '.join(failed)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
