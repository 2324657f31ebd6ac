"""``lora extract``: a PEFT adapter approximating FT − BASE, one truncated SVD per weight matrix.

Rules, tensor by tensor (both models are streamed; only the adapter's factors are kept):

- unchanged tensors are skipped;
- the 2-D weight of a linear layer (``nn.Linear``, GPT-2 ``Conv1D`` → ``fan_in_fan_out``) or an
  ``nn.Embedding`` whose shape is the same in both models becomes a LoRA module of rank
  min(R, rows, cols): ΔW ≈ B·A with B = U√S, A = √S·Vᵀ (α = r, so the scale is 1). Exact
  ``torch.linalg.svd`` for small matrices, ``torch.svd_lowrank`` (oversampled, power iterations) for
  large ones. The relative Frobenius error ‖ΔW − BA‖ / ‖ΔW‖ is reported per module;
- any other changed tensor (1-D norm weights, biases, …) puts its whole module into
  ``modules_to_save`` with the finetune's tensors (exact). A linear layer whose bias changed as well
  as its weight is therefore saved whole, not as LoRA (warned);
- tensors whose shape differs (e.g. a resized vocabulary) or that exist in one model only are skipped
  with a warning: a LoRA adapter cannot change a shape; resize the base first.

Module kinds come from instantiating the base's architecture on the meta device (no memory); when
that is impossible, 2-D weights named like embeddings (``embed``, ``wte``, ``wpe``) are embeddings and
other 2-D weights linear layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mergebench.architecture import EMBEDDING_MODULE
from mergebench.errors import AdapterError, CheckpointError
from mergebench.fold import resolve_name
from mergebench.io.adapter import KEY_PREFIX
from mergebench.io.checkpoint import Checkpoint
from mergebench.io.writer import check_output_target
from mergebench.lora.save import adapter_config, rank_config, write_adapter
from mergebench.sources import open_checkpoint

EXACT_SVD_MAX = 1024  # exact SVD when the smaller side is at most this, or the rank is a large part of it


@dataclass
class ExtractReport:
    modules: dict[str, tuple[int, float]] = field(default_factory=dict)  # path → (rank, relative error)
    saved: list[str] = field(default_factory=list)  # modules_to_save
    warnings: list[str] = field(default_factory=list)


def module_kinds(base: Checkpoint) -> dict[str, str] | None:
    """Module path (as PEFT names it) → 'linear' | 'conv1d' | 'embedding' | 'other', from the meta model."""
    if base.config is None:
        return None
    try:
        import transformers
        from transformers.pytorch_utils import Conv1D

        config = transformers.AutoConfig.from_pretrained(base.path)
        with torch.device("meta"):
            try:
                model = transformers.AutoModelForCausalLM.from_config(config)
            except ValueError:
                model = transformers.AutoModel.from_config(config)
    except Exception:  # unknown architecture, missing remote code, …: fall back to names
        return None
    kinds = {}
    for path, module in model.named_modules():
        if isinstance(module, Conv1D):
            kinds[path] = "conv1d"
        elif isinstance(module, torch.nn.Linear):
            kinds[path] = "linear"
        elif isinstance(module, torch.nn.Embedding):
            kinds[path] = "embedding"
        else:
            kinds[path] = "other"
    return kinds


def _module_of(name: str, kinds: dict[str, str] | None, shape) -> tuple[str, str]:
    """(PEFT module path, kind) of base tensor ``name``."""
    module = name.rsplit(".", 1)[0] if "." in name else name
    if kinds is not None:
        path = resolve_name(module, kinds)
        if path is not None:
            return path, kinds[path]
    if len(shape) == 2 and name.endswith(".weight"):
        return module, "embedding" if EMBEDDING_MODULE.search(module) else "linear"
    return module, "other"


def _check_same_architecture(base: Checkpoint, finetuned: Checkpoint) -> None:
    """Refuse, from headers, two models that share no tensor of the same name and shape: there is no
    finetune to extract, and "does not differ" (what the tensor loop would conclude) would be wrong."""
    shared = [name for name in base.tensors if name in finetuned.tensors]
    if any(base.tensors[name].shape == finetuned.tensors[name].shape for name in shared):
        return
    if shared:
        name = shared[0]
        why = (
            f"all {len(shared)} tensor names they share differ in shape (e.g. {name!r}: "
            f"{list(finetuned.tensors[name].shape)} vs {list(base.tensors[name].shape)})"
        )
    else:
        why = "they share no tensor name"
    raise AdapterError(
        f"{finetuned.spec} and {base.spec} are not the same architecture ({why}); "
        "a LoRA adapter can only be extracted from a finetune of the base"
    )


def svd_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with B·A the best rank-``rank`` approximation of ``delta`` (float32)."""
    rows, cols = delta.shape
    rank = min(rank, rows, cols)
    small = min(rows, cols)
    if small <= EXACT_SVD_MAX or 3 * rank >= small:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    else:
        q = min(small, rank + max(10, rank // 2))
        u, s, v = torch.svd_lowrank(delta, q=q, niter=6)
        vh = v.T
    root = s[:rank].clamp_min(0).sqrt()
    return u[:, :rank] * root, root.unsqueeze(1) * vh[:rank]


def run_lora_extract(
    base_spec: str,
    finetuned_spec: str,
    rank: int,
    out: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    allow_pickle: bool = False,
    log: Callable[[str], None] = lambda line: None,
    device: str = "cpu",
) -> ExtractReport:
    """Factorize each changed weight matrix's difference by SVD on ``device``; tensors are read one
    module at a time, and the factors come back to the CPU in ``dtype``."""
    if rank < 1:
        raise AdapterError(f"--rank must be at least 1, got {rank}")
    out = Path(out)
    local = [Path(spec) for spec in (base_spec, finetuned_spec) if Path(spec).exists()]
    check_output_target(out, overwrite=overwrite, inputs=local)
    base = open_checkpoint(base_spec, allow_pickle=allow_pickle)
    finetuned = open_checkpoint(finetuned_spec, allow_pickle=allow_pickle)
    _check_same_architecture(base, finetuned)
    kinds = module_kinds(base)
    report = ExtractReport()

    # Group tensors by module, from headers: a module is low-rank, saved whole, or skipped as a unit.
    groups: dict[str, tuple[str, list[str]]] = {}
    for name, info in base.tensors.items():
        path, kind = _module_of(name, kinds, info.shape)
        groups.setdefault(path, (kind, []))[1].append(name)
    for name in finetuned.tensors.keys() - base.tensors.keys():
        report.warnings.append(f"tensor {name!r} exists only in {finetuned_spec}: skipped")

    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    fan_in_fan_out = False
    for path, (kind, names) in groups.items():
        changed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in names:
            info, other = base.tensors[name], finetuned.tensors.get(name)
            if other is None:
                report.warnings.append(f"tensor {name!r} is missing in {finetuned_spec}: skipped")
                continue
            if other.shape != info.shape:
                report.warnings.append(
                    f"tensor {name!r}: shape {list(other.shape)} vs {list(info.shape)} in the base; "
                    "a LoRA adapter cannot change shapes (resize the base first): skipped"
                )
                continue
            old, new = base.read(name), finetuned.read(name)
            if not torch.equal(old, new):
                changed[name] = (old, new)
        if not changed:
            continue
        weight = next((n for n in names if n.endswith("weight")), None)
        low_rank = kind in ("linear", "conv1d", "embedding") and list(changed) == [weight]
        if low_rank:
            old, new = changed[weight]
            for tensor, model in ((old, base), (new, finetuned)):
                if not bool(torch.isfinite(tensor).all()):
                    raise CheckpointError(
                        f"tensor {weight!r} of {model.spec} holds NaN or Inf values; "
                        "a LoRA factorization (SVD) needs finite weights"
                    )
            delta = new.to(device, torch.float32) - old.to(device, torch.float32)
            canonical = delta if kind == "linear" else delta.T  # out × in (embedding: hidden × vocab)
            b, a = svd_factors(canonical, rank)
            norm = float(torch.linalg.norm(canonical))
            residual = float(torch.linalg.norm(torch.addmm(canonical, b, a, alpha=-1)))
            error = residual / norm if norm > 0 else 0.0
            report.modules[path] = (a.shape[0], error)
            ranks[path] = a.shape[0]
            fan_in_fan_out |= kind == "conv1d"
            names_ab = (
                ("lora_embedding_A", "lora_embedding_B")
                if kind == "embedding"
                else ("lora_A.weight", "lora_B.weight")
            )
            tensors[f"{KEY_PREFIX}{path}.{names_ab[0]}"] = a.to("cpu", dtype)
            tensors[f"{KEY_PREFIX}{path}.{names_ab[1]}"] = b.to("cpu", dtype)
            log(f"  {path}: rank {a.shape[0]}, relative error {error:.3e}")
        else:
            if kind in ("linear", "conv1d", "embedding"):
                report.warnings.append(
                    f"module {path!r}: {', '.join(sorted(changed))} changed; saved whole (modules_to_save)"
                )
            report.saved.append(path)
            for name in names:
                param = name.rsplit(".", 1)[-1]
                tensors[f"{KEY_PREFIX}{path}.{param}"] = finetuned.read(name)
            log(f"  {path}: saved whole (modules_to_save)")
    if not tensors:
        raise AdapterError(f"{finetuned_spec} does not differ from {base_spec}: nothing to extract")
    if fan_in_fan_out and any(kinds and kinds.get(p) == "linear" for p in ranks):
        report.warnings.append("mixed Conv1D and Linear targets: PEFT picks fan_in_fan_out per layer type")
    config = adapter_config(
        None,
        {
            **rank_config(ranks),
            "target_modules": sorted(ranks) or None,
            "modules_to_save": report.saved or None,
            "fan_in_fan_out": fan_in_fan_out,
            "base_model_name_or_path": base_spec,
        },
    )
    lines = ["# LoRA extract", "", f"`{finetuned_spec}` − `{base_spec}` at rank ≤ {rank}.", ""]
    lines += ["| module | rank | relative error |", "|---|---|---|"]
    lines += [f"| {p} | {r} | {e:.3e} |" for p, (r, e) in report.modules.items()]
    if report.saved:
        lines += ["", "Saved whole (modules_to_save): " + ", ".join(report.saved)]
    write_adapter(
        out, tensors, config, overwrite=overwrite, inputs=[base.path, finetuned.path], readme="\n".join(lines)
    )
    if report.modules:
        worst = max(report.modules.values(), key=lambda item: item[1])[1]
        mean = math.fsum(e for _, e in report.modules.values()) / len(report.modules)
        log(f"{len(report.modules)} LoRA modules (mean relative error {mean:.3e}, worst {worst:.3e})")
    return report
