"""``lora concat``: one PEFT adapter whose update is exactly Σ w_i s_i B_i A_i, by stacking ranks.

Per module: A' = [w_1 s_1 A_1; w_2 s_2 A_2; …], B' = [B_1, B_2, …], so B'A' = Σ w_i s_i B_i A_i, written
with α = r (scale 1, no rsLoRA). A module present in only some adapters gets only their ranks (exact:
the others contribute nothing there). Ranks differing between modules are written as exact
``rank_pattern`` / ``alpha_pattern`` entries.

With ``rank`` R, each module's summed update is compressed to rank R by a truncated SVD computed from
the factors (QR of B' and A'ᵀ, SVD of the small k × k core) — the dense out × in update is never
formed. The Frobenius error is exactly √(Σ of the discarded σ²); the retained energy is reported.

Refused (AdapterError): DoRA adapters (the norm of W + ΔW needs the base, so the sum is not low-rank),
and full saved tensors (``modules_to_save``) that differ between adapters or carry a weight ≠ 1 —
combining those needs the base; use ``lora merge`` instead. Identical copies are kept once. The
embedding base layer PEFT saves alongside embedding targets (``….base_layer.weight``, a copy of the
base's embedding, not trained) is kept as it is whatever the weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mergebench.errors import AdapterError
from mergebench.io.adapter import KEY_PREFIX, Adapter, LoraModule
from mergebench.io.model_files import has_tokenizer
from mergebench.io.writer import check_output_target
from mergebench.lora.save import adapter_config, rank_config, write_adapter
from mergebench.sources import open_adapter


@dataclass(frozen=True)
class ModuleReport:
    path: str
    rank_in: int  # Σ r_i of the adapters that have this module
    rank_out: int
    energy: float  # retained fraction of ‖ΔW‖²_F (1.0 when not compressed)
    error: float  # Frobenius norm of what was discarded


def low_rank_svd(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of B·A (out × k · k × in) from the factors: (U, S, Vh) with B·A = U diag(S) Vh."""
    qb, rb = torch.linalg.qr(b.to(torch.float64))  # out × k, k × k
    qa, ra = torch.linalg.qr(a.to(torch.float64).T)  # in × k, k × k
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    return qb @ u, s, vh @ qa.T


def truncate(b: torch.Tensor, a: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Best rank-``rank`` factors of B·A, with retained energy and the Frobenius error."""
    u, s, vh = low_rank_svd(b, a)
    keep = min(rank, int(s.numel()))
    total = float((s**2).sum())
    dropped = float((s[keep:] ** 2).sum())
    root = s[:keep].sqrt()
    new_b = (u[:, :keep] * root).to(torch.float32)
    new_a = (root.unsqueeze(1) * vh[:keep]).to(torch.float32)
    return new_b, new_a, (1.0 - dropped / total) if total > 0 else 1.0, math.sqrt(dropped)


def run_lora_concat(
    adapter_specs: Sequence[str],
    out: str | Path,
    *,
    weights: Sequence[float] | None = None,
    rank: int | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> list[ModuleReport]:
    out = Path(out)
    if rank is not None and rank < 1:
        raise AdapterError(f"--rank must be at least 1, got {rank}")
    weights = list(weights) if weights is not None else [1.0] * len(adapter_specs)
    local = [Path(spec) for spec in adapter_specs if Path(spec).exists()]
    check_output_target(out, overwrite=overwrite, inputs=local)
    adapters = [open_adapter(spec, allow_pickle=allow_pickle) for spec in adapter_specs]
    modules = _check_compatible(adapters)
    first_index, first_module = next(iter(modules.values()))[0]  # adapters[0] may hold saved tensors only
    out_dtype = dtype or adapters[first_index].weights.tensors[first_module.a_key].dtype
    use_bias = any(adapter.uses_bias for adapter in adapters)

    tensors: dict[str, torch.Tensor] = _saved_tensors(adapters, weights)
    ranks: dict[str, int] = {}
    reports: list[ModuleReport] = []
    for path, members in modules.items():
        a_parts, b_parts, bias = [], [], None
        for index, module in members:
            adapter, factor = adapters[index], weights[index] * module.scale
            a_parts.append(adapter.read(module.a_key).to(torch.float32) * factor)
            b_parts.append(adapter.read(module.b_key).to(torch.float32))
            finite = bool(torch.isfinite(a_parts[-1]).all()) and bool(torch.isfinite(b_parts[-1]).all())
            if rank is not None and not finite:
                raise AdapterError(
                    f"{adapter.spec}: module {path!r} holds NaN or Inf values in its factors; "
                    "--rank compresses by SVD, which needs finite values"
                )
            if module.bias_key:
                term = adapter.read(module.bias_key).to(torch.float32) * factor
                bias = term if bias is None else bias + term
        a, b = torch.cat(a_parts, dim=0), torch.cat(b_parts, dim=1)
        k = a.shape[0]
        if rank is not None and k > rank:
            b, a, energy, error = truncate(b, a, rank)
        else:
            energy, error = 1.0, 0.0
        ranks[path] = a.shape[0]
        reports.append(ModuleReport(path, k, a.shape[0], energy, error))
        module = members[0][1]
        a_name, b_name = (
            ("lora_embedding_A", "lora_embedding_B")
            if module.embedding
            else ("lora_A.weight", "lora_B.weight")
        )
        tensors[f"{KEY_PREFIX}{path}.{a_name}"] = a.to(out_dtype)
        tensors[f"{KEY_PREFIX}{path}.{b_name}"] = b.to(out_dtype)
        if use_bias and not module.embedding:
            if bias is None:
                bias = torch.zeros(module.out_features)
            tensors[f"{KEY_PREFIX}{path}.lora_B.bias"] = bias.to(out_dtype)

    first = adapters[0].config
    saved_modules = list(dict.fromkeys(m for a in adapters for m in (a.config.get("modules_to_save") or [])))
    config = adapter_config(
        first,
        {
            **rank_config(ranks),
            "target_modules": sorted(modules),
            "modules_to_save": saved_modules or None,
            "lora_bias": use_bias,
            "fan_in_fan_out": bool(first.get("fan_in_fan_out")),
        },
    )
    readme = _readme(adapter_specs, weights, rank, reports)
    tokenizer_dir = next((a.path for a in adapters if has_tokenizer(a.path)), None)
    write_adapter(
        out,
        tensors,
        config,
        overwrite=overwrite,
        inputs=[a.path for a in adapters],
        readme=readme,
        tokenizer_dir=tokenizer_dir,
    )
    return reports


def _check_compatible(adapters: Sequence[Adapter]) -> dict[str, list[tuple[int, LoraModule]]]:
    modules: dict[str, list[tuple[int, LoraModule]]] = {}
    fifo = {
        bool(a.config.get("fan_in_fan_out"))
        for a in adapters
        if any(not m.embedding for m in a.modules.values())
    }
    if len(fifo) > 1:
        flagged = [a.spec for a in adapters if a.config.get("fan_in_fan_out")]
        raise AdapterError(
            f"adapters disagree on fan_in_fan_out (set only in {', '.join(flagged)}); "
            "they were not made for the same base"
        )
    for index, adapter in enumerate(adapters):
        if adapter.uses_dora:
            dora = next(m.path for m in adapter.modules.values() if m.dora)
            raise AdapterError(
                f"{adapter.spec}: DoRA module {dora!r} cannot be concatenated exactly "
                "(its update depends on the base weights); use 'lora merge' instead"
            )
        for path, module in adapter.modules.items():
            members = modules.setdefault(path, [])
            if members:
                other = members[0][1]
                if (other.out_features, other.in_features, other.embedding) != (
                    module.out_features,
                    module.in_features,
                    module.embedding,
                ):
                    raise AdapterError(
                        f"module {path!r}: {adapter.spec} has a {module.out_features}×{module.in_features} update, "
                        f"{adapters[members[0][0]].spec} a {other.out_features}×{other.in_features} one"
                    )
            members.append((index, module))
    if not modules:
        raise AdapterError("no LoRA modules to concatenate")
    if any(m.bias_key for ms in modules.values() for _, m in ms) and any(
        m.embedding for ms in modules.values() for _, m in ms
    ):
        raise AdapterError("lora_bias cannot be combined with embedding LoRA modules in one adapter")
    return modules


def _saved_tensors(adapters: Sequence[Adapter], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Full saved tensors (modules_to_save, embedding base layers): kept when unambiguous, else refused."""
    saved: dict[str, tuple[int, torch.Tensor]] = {}
    for index, adapter in enumerate(adapters):
        for param, key in adapter.replacements.items():
            tensor = adapter.read(key)
            if param in saved:
                first, kept = saved[param]
                if kept.shape != tensor.shape or not torch.equal(kept, tensor):
                    raise AdapterError(
                        f"saved tensor {param!r} differs between {adapters[first].spec} and {adapter.spec}; "
                        "combining full tensors needs the base: use 'lora merge'"
                    )
                continue
            if weights[index] != 1 and ".base_layer." not in key:
                raise AdapterError(
                    f"{adapter.spec}: saved tensor {param!r} cannot be weighted ({weights[index]}) without "
                    "the base: use 'lora merge'"
                )
            saved[param] = (index, tensor)
    return {
        f"{KEY_PREFIX}{_original_name(adapters[i], param)}": tensor for param, (i, tensor) in saved.items()
    }


def _original_name(adapter: Adapter, param: str) -> str:
    key = adapter.replacements[param]
    return key[len(KEY_PREFIX) :] if key.startswith(KEY_PREFIX) else key


def _readme(specs, weights, rank, reports: Sequence[ModuleReport]) -> str:
    lines = ["# LoRA concat", "", "Inputs (adapter, weight):", ""]
    lines += [f"- `{spec}` × {weight}" for spec, weight in zip(specs, weights, strict=True)]
    lines += [
        "",
        "B'A' = Σ w_i s_i B_i A_i" + (f", compressed to rank {rank} by SVD" if rank else " (exact)"),
        "",
    ]
    if rank:
        lines += ["| module | rank in | rank out | retained energy |", "|---|---|---|---|"]
        lines += [f"| {r.path} | {r.rank_in} | {r.rank_out} | {r.energy:.6f} |" for r in reports]
    return "\n".join(lines)
