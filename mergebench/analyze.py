"""``mergebench analyze``: see what a merge will do before running it.

A merge of finetunes is arithmetic on their task vectors τ_i = θ_i − θ_base. Whether it works depends on
quantities nobody looks at before merging: how large each τ_i is next to θ_base, how aligned the task
vectors are, how often they disagree in sign (what TIES' sign election throws away), how much of each
τ_i survives TIES/DARE-style magnitude trimming at a given density, and how far apart two models are
for SLERP. This module computes them exactly, streaming the checkpoints the way a merge does: one
tensor name at a time, that tensor read from every model (``sources.open_source`` → ``Source.input``,
LoRA folds included), reduced in float64 slices of ``CHUNK`` entries and dropped — memory is bounded by
one tensor per model, never a whole model.

Every reported number of a group of tensors (a layer, a module type, the whole model) is a function of
additive sums over its entries (``Sums``), so aggregates are exact combinations, never averages of
per-tensor ratios: a layer's cosine is Σ⟨a, b⟩ / √(Σ‖a‖² · Σ‖b‖²) over its tensors, a layer's energy
kept is Σ kept / Σ ‖τ‖², i.e. tensors weigh by their energy.

Definitions (K models, task vectors τ_1…τ_K; "entries" are the scalar weights of a tensor):

- ``task_norm`` ‖τ_i‖ (L2 over the group's entries); ``task_relative_norm`` ‖τ_i‖ / ‖θ_base‖.
- ``task_cosine`` ⟨τ_i, τ_j⟩ / (‖τ_i‖ ‖τ_j‖) per pair; null where a task vector is zero.
- ``sign_conflict.pairs``: among entries where τ_i and τ_j are both non-zero, the fraction where their
  signs differ (τ_i · τ_j < 0). ``sign_conflict.all``: among entries where at least two of the K task
  vectors are non-zero, the fraction where the non-zero ones do not all share one sign — exactly the
  entries where TIES' sign election (before trimming) discards a contribution. With K = 2 both are the
  same number. Entries where a task vector is exactly zero (a finetune that left the weight bit-equal)
  count as no opinion, as in TIES. Null when no entry qualifies.
- ``energy_kept[i][d]``: the share of ‖τ_i‖² carried by the k = max(1, ⌊density_d · n⌋) entries of
  largest |τ_i| of each tensor (n = its entry count; TIES' ``keep_count``), i.e. what magnitude trimming
  at that density keeps. Exact: one sort of |τ_i| per tensor (float32 magnitudes, squares summed in
  float64), ties at the threshold included up to k. Aggregates are Σ kept / Σ ‖τ_i‖², so tensors weigh
  by their energy.
- ``weight_norm`` ‖θ_i‖, ``base_norm`` ‖θ_base‖, ``weight_cosine`` ⟨θ_i, θ_j⟩ / (‖θ_i‖ ‖θ_j‖).
- ``slerp_angle_deg`` (two models only): the angle between the two flattened weight tensors,
  arccos(weight_cosine) in degrees — the Ω a SLERP of the two interpolates along (per tensor; a group's
  angle is that of its concatenated tensors). ``task_angle_deg``: the same between τ_1 and τ_2.

Without ``base`` there are no task vectors: only weight norms, pairwise weight cosines and (two models)
the SLERP angle are reported. Non-floating-point tensors (integer buffers) are listed in ``skipped``.

analysis.json schema (``SCHEMA``; every ratio is a float or null, never NaN)::

    {
      "schema": "mergebench.analyze/1", "mergebench_version": str,
      "base": str | null, "base_label": str | null,
      "models": [str, ...], "labels": [str, ...],          # model strings and short display names
      "task_vectors": bool,                                  # true when a base was given
      "densities": [float, ...],
      "pairs": [{"a": int, "b": int, "label": str}, ...],    # indexes into models; lists "per pair" below
      "overall": GROUP,
      "layers":  [GROUP + {"group": "embed" | "layer N" | "head" | "other", "layer": int | null}, ...],
      "modules": [GROUP + {"module": str}, ...],             # tensor name with "…layers.N." removed
      "tensors": [GROUP + {"name": str, "group": str, "layer": int | null, "module": str,
                           "shape": [int, ...]}, ...],
      "skipped": [{"name": str, "reason": str}, ...]
    }

    GROUP = {
      "tensors": int, "numel": int,                            # entries per model
      "weight_norm": [per model], "weight_cosine": [per pair],
      "slerp_angle_deg": float | null,                         # two models only
      # with a base:
      "base_norm": float, "task_norm": [per model], "task_relative_norm": [per model],
      "task_cosine": [per pair], "task_angle_deg": float | null,   # the angle: two models only
      "sign_conflict": {"pairs": [per pair], "all": float | null,
                        "pair_entries": [per pair], "all_entries": int,   # the denominators
                        "all_conflicts": int},
      "energy_kept": [[per density] per model]
    }

Layer groups come from ``architecture.layer_index``; tensors outside the layers are "embed" (before
the layers) or "head" (after them) by the model family's layout, else "other".
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mergebench.architecture import LAYER_PATTERN, Family, detect_family, layer_index
from mergebench.errors import ConfigError, OutputError, PlanError
from mergebench.methods.sparsify import keep_count
from mergebench.sources import Source, open_source, split_adapter
from mergebench.version import __version__

SCHEMA = "mergebench.analyze/1"
DEFAULT_DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
# Entries per float64 slice: keeps the float64 working set at a few MB per model whatever the tensor.
CHUNK = 1 << 20

GROUP_RANK = {"embed": 0, "layer": 1, "head": 2, "other": 3}
# Used only when the model family is unknown: outputs before embeddings (embed_out is an output head).
HEAD_NAME = re.compile(r"(^|\.)(lm_head|embed_out|score|classifier|ln_f|final_layer_norm|norm)\.")
EMBED_NAME = re.compile(r"(^|\.)(embed[^.]*|wte|wpe|word_embeddings|embeddings)\.")


@dataclass
class Sums:
    """Additive statistics of a group of tensors. Every reported number is a function of these, which
    is what makes a layer's (or the model's) numbers exact combinations of its tensors'.

    Weight rows are ``[base, model_1 … model_K]`` with a base, ``[model_1 … model_K]`` without.
    """

    tensors: int
    numel: int
    weight_gram: np.ndarray  # Σ ⟨θ_a, θ_b⟩ (float64)
    task_gram: np.ndarray  # Σ ⟨τ_i, τ_j⟩ (K×K)
    both: np.ndarray  # entries where τ_i and τ_j are both non-zero (K×K)
    disagree: np.ndarray  # entries where τ_i · τ_j < 0 (K×K)
    multi: int  # entries where ≥ 2 task vectors are non-zero
    conflict: int  # … and the non-zero ones do not share one sign
    energy: np.ndarray  # Σ τ_i² as the trim sees it (float32 magnitudes, squared in float64) (K)
    kept: np.ndarray  # Σ of τ_i² over the top-k entries per tensor (K × densities)

    @classmethod
    def zeros(cls, models: int, has_base: bool, densities: int) -> Sums:
        rows = models + (1 if has_base else 0)
        square = np.zeros((models, models))
        return cls(
            0,
            0,
            np.zeros((rows, rows)),
            square.copy(),
            square.copy(),
            square.copy(),
            0,
            0,
            np.zeros(models),
            np.zeros((models, densities)),
        )

    def add(self, other: Sums) -> None:
        self.tensors += other.tensors
        self.numel += other.numel
        self.weight_gram += other.weight_gram
        self.task_gram += other.task_gram
        self.both += other.both
        self.disagree += other.disagree
        self.multi += other.multi
        self.conflict += other.conflict
        self.energy += other.energy
        self.kept += other.kept


@dataclass(frozen=True)
class TensorPlace:
    """Where a tensor sits in the report: its layer group and its module type."""

    group: str  # "embed" | "layer N" | "head" | "other"
    layer: int | None
    module: str

    @property
    def rank(self) -> tuple[int, int]:
        kind = "layer" if self.layer is not None else self.group
        return GROUP_RANK[kind], self.layer if self.layer is not None else 0


def place_of(name: str, family: Family | None) -> TensorPlace:
    """Layer by ``architecture.layer_index``; module type = the name after "<blocks>.N."; a non-layer
    tensor is its own module type, grouped as embed/head by the family's layout (a name heuristic
    only when the family is unknown)."""
    index = layer_index(name)
    if index is not None:
        match = LAYER_PATTERN.search(name)
        assert match is not None
        return TensorPlace(f"layer {index}", index, name[match.end() :])
    position = family.position(name) if family is not None else None
    if position is None and family is None:
        position = "after" if HEAD_NAME.search(name) else "before" if EMBED_NAME.search(name) else None
    group = {"before": "embed", "after": "head"}.get(position or "", "other")
    return TensorPlace(group, None, name)


def model_labels(specs: Sequence[str]) -> list[str]:
    """Short display names: the directory names (``base+adapter`` as both), full strings if ambiguous."""

    def short(spec: str) -> str:
        parts = split_adapter(spec) or (spec,)
        return "+".join(Path(part.rstrip("/")).name or part for part in parts)

    labels = [short(spec) for spec in specs]
    return labels if len(set(labels)) == len(labels) else list(specs)


def check_densities(densities: Iterable[float]) -> tuple[float, ...]:
    """Sorted, de-duplicated densities in (0, 1]."""
    values = sorted(set(densities))
    if not values:
        raise ConfigError("--densities: give at least one density")
    for value in values:
        if not (0.0 < value <= 1.0) or math.isnan(value):
            raise ConfigError(f"--densities: {value:g} is outside (0, 1]")
    return tuple(values)


def _float64(values: Sequence[torch.Tensor], start: int, stop: int) -> np.ndarray:
    """Rows ``values[r][start:stop]`` as a float64 array (models × entries), exact for every float dtype.

    Through float32 (exact for bf16/fp16/fp32, and twice as fast as torch's direct bf16 → float64),
    through float64 only when a model stores float64.
    """
    pieces = [v[start:stop] for v in values]
    if any(piece.dtype == torch.float64 for piece in pieces):
        return torch.stack([piece.double() for piece in pieces]).numpy()
    return torch.stack([piece.float() for piece in pieces]).numpy().astype(np.float64)


def _sum_of_squares(values: np.ndarray, start: int, stop: int) -> float:
    total = 0.0
    for begin in range(start, stop, CHUNK):
        piece = values[begin : min(begin + CHUNK, stop)].astype(np.float64)
        total += float(piece @ piece)
    return total


def trimmed_energy(magnitude: np.ndarray, densities: Sequence[float]) -> tuple[float, list[float]]:
    """(‖τ‖², [energy of the k = keep_count(n, density) largest |τ| entries, per density]) of one tensor.

    ``magnitude`` (float32, 1-D) is a scratch buffer: it is sorted in place. One sort serves every
    density, and the kept energy is a suffix sum of the sorted squares — exact, ties included (tied
    entries have the same square, so which of them a trim keeps does not change the sum). numpy's
    vectorised sort is several times faster than a selection per density (torch.kthvalue) here.
    """
    n = magnitude.size
    magnitude.sort()
    counts = [keep_count(n, density) for density in densities]
    suffix: dict[int, float] = {}
    accumulated, previous = 0.0, n
    for position in sorted({n - k for k in counts} | {0}, reverse=True):
        accumulated += _sum_of_squares(magnitude, position, previous)
        suffix[position], previous = accumulated, position
    return suffix[0], [suffix[n - k] for k in counts]


def tensor_sums(values: Sequence[torch.Tensor], has_base: bool, densities: Sequence[float]) -> Sums:
    """The statistics of one tensor from its flat values in every model (base first when given).

    Gram matrices and sign counts are accumulated over float64 slices of ``CHUNK`` entries (task
    vectors are differences taken in float64, exact for any stored dtype) with numpy, whose small
    matrix products stay fast on a busy CPU. The trim needs whole-tensor magnitudes: built one model at
    a time in float32, so at most one extra full-size buffer is alive.
    """
    models = len(values) - (1 if has_base else 0)
    sums = Sums.zeros(models, has_base, len(densities))
    n = values[0].numel()
    sums.tensors, sums.numel = 1, n
    for start in range(0, n, CHUNK):
        weights = _float64(values, start, start + CHUNK)
        sums.weight_gram += weights @ weights.T
        if not has_base:
            continue
        task = weights[1:] - weights[0]
        sums.task_gram += task @ task.T
        # 0/1 indicators in float32: the products count ≤ CHUNK < 2**24 entries, exact in float32
        positive, negative = (task > 0).astype(np.float32), (task < 0).astype(np.float32)
        nonzero = positive + negative
        sums.both += nonzero @ nonzero.T
        sums.disagree += positive @ negative.T + negative @ positive.T
        n_positive, n_negative = positive.sum(0), negative.sum(0)
        sums.multi += int(np.count_nonzero(n_positive + n_negative >= 2))
        sums.conflict += int(np.count_nonzero((n_positive > 0) & (n_negative > 0)))
    if has_base:
        for i in range(models):
            magnitude = np.empty(n, dtype=np.float32)
            for start in range(0, n, CHUNK):
                pair = _float64([values[0], values[i + 1]], start, start + CHUNK)
                magnitude[start : start + CHUNK] = np.abs(pair[1] - pair[0])
            sums.energy[i], sums.kept[i] = trimmed_energy(magnitude, densities)
            del magnitude
    return sums


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator > 0 else None


def _cosine(gram: np.ndarray, a: int, b: int) -> float | None:
    denominator = math.sqrt(gram[a, a] * gram[b, b])
    if denominator <= 0:
        return None
    return max(-1.0, min(1.0, float(gram[a, b] / denominator)))


def _angle(cosine: float | None) -> float | None:
    return None if cosine is None else math.degrees(math.acos(cosine))


def summarize(sums: Sums, pairs: Sequence[tuple[int, int]], has_base: bool) -> dict:
    """The reported numbers of a group (see the module docstring) from its sums."""
    models = len(sums.energy)
    offset = 1 if has_base else 0
    weight_norm = np.sqrt(np.diag(sums.weight_gram))
    out: dict = {"tensors": sums.tensors, "numel": sums.numel}
    out["weight_norm"] = [float(weight_norm[offset + i]) for i in range(models)]
    out["weight_cosine"] = [_cosine(sums.weight_gram, offset + a, offset + b) for a, b in pairs]
    if models == 2:
        out["slerp_angle_deg"] = _angle(out["weight_cosine"][0])
    if not has_base:
        return out
    base_norm = float(weight_norm[0])
    task_norm = np.sqrt(np.diag(sums.task_gram))
    out["base_norm"] = base_norm
    out["task_norm"] = [float(x) for x in task_norm]
    out["task_relative_norm"] = [_ratio(float(x), base_norm) for x in task_norm]
    out["task_cosine"] = [_cosine(sums.task_gram, a, b) for a, b in pairs]
    if models == 2:
        out["task_angle_deg"] = _angle(out["task_cosine"][0])
    out["sign_conflict"] = {
        "pairs": [_ratio(sums.disagree[a, b], sums.both[a, b]) for a, b in pairs],
        "all": _ratio(sums.conflict, sums.multi),
        "pair_entries": [int(sums.both[a, b]) for a, b in pairs],
        "all_entries": sums.multi,
        "all_conflicts": sums.conflict,
    }
    out["energy_kept"] = [[_ratio(kept, sums.energy[i]) for kept in sums.kept[i]] for i in range(models)]
    return out


def _family(source: Source) -> Family | None:
    try:
        return detect_family(source.spec, source.config, source.tensors)[0]
    except PlanError:
        return None


def _check_inputs(reference: Source, others: Sequence[Source]) -> tuple[list[str], list[dict]]:
    """The floating-point tensors of ``reference`` to analyze, and what is skipped; every model must
    hold each of them with the same shape (headers only, before any tensor is read)."""
    names: list[str] = []
    skipped: list[dict] = []
    problems: list[str] = []
    for name, info in reference.tensors.items():
        if not info.dtype.is_floating_point:
            skipped.append({"name": name, "reason": f"not floating point ({str(info.dtype).split('.')[-1]})"})
            continue
        for source in others:
            other = source.tensors.get(name)
            if other is None:
                problems.append(f"{source.spec}: no tensor {name!r} (present in {reference.spec})")
            elif other.shape != info.shape:
                problems.append(
                    f"tensor {name!r}: shape {list(other.shape)} in {source.spec} but "
                    f"{list(info.shape)} in {reference.spec}"
                )
            elif not other.dtype.is_floating_point:
                problems.append(f"tensor {name!r}: not floating point in {source.spec}")
        names.append(name)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise PlanError(problems[0] + more)
    for source in others:
        for name in source.tensors:
            if name not in reference.tensors:
                skipped.append({"name": name, "reason": f"only in {source.spec}, not in {reference.spec}"})
    return names, skipped


def read_flat(source: Source, name: str) -> torch.Tensor:
    """One tensor of one model as a merge would see it (adapters folded in), flattened."""
    item = source.input(name)
    return item.build([ref.read() for ref in item.refs]).reshape(-1)


def analyze(
    models: Sequence[str],
    base: str | None = None,
    densities: Sequence[float] = DEFAULT_DENSITIES,
    *,
    allow_pickle: bool = False,
    progress: bool = False,
) -> dict:
    """Stream the checkpoints tensor by tensor and return the analysis (the analysis.json object).

    Everything that can be checked from headers (model strings, tensor sets, shapes) is checked before
    any tensor is read, so a mistake costs seconds, not a pass over the checkpoints.
    """
    models = list(models)
    if not models:
        raise ConfigError("analyze: give at least one MODEL")
    if base is None and len(models) < 2:
        raise ConfigError(
            f"analyze: without --base there are no task vectors; give at least two models to compare "
            f"(got 1: {models[0]})"
        )
    has_base = base is not None
    densities = check_densities(densities) if has_base else ()  # trimming needs task vectors
    sources = [open_source(spec, allow_pickle=allow_pickle) for spec in ([base] if has_base else []) + models]
    reference = sources[0]
    names, skipped = _check_inputs(reference, sources[1:])
    family = _family(reference)
    places = {name: place_of(name, family) for name in names}
    order = {name: i for i, name in enumerate(names)}
    names.sort(key=lambda name: (places[name].rank, order[name]))

    pairs = list(combinations(range(len(models)), 2))
    count = len(models)
    overall = Sums.zeros(count, has_base, len(densities))
    layers: dict[str, Sums] = {}
    modules: dict[str, Sums] = {}
    tensors: list[dict] = []
    # disable=None: a bar on a terminal only, never carriage-return noise in a log file
    bar = tqdm(names, desc="analyze", unit="tensor", disable=None if progress else True, dynamic_ncols=True)
    for name in bar:
        values = [read_flat(source, name) for source in sources]
        sums = tensor_sums(values, has_base, densities)
        del values
        place = places[name]
        entry = {
            "name": name,
            "group": place.group,
            "layer": place.layer,
            "module": place.module,
            "shape": list(reference.tensors[name].shape),
        }
        entry.update(summarize(sums, pairs, has_base))
        tensors.append(entry)
        overall.add(sums)
        layers.setdefault(place.group, Sums.zeros(count, has_base, len(densities))).add(sums)
        modules.setdefault(place.module, Sums.zeros(count, has_base, len(densities))).add(sums)

    group_layer = {places[name].group: places[name].layer for name in names}
    labels = model_labels(models)
    return {
        "schema": SCHEMA,
        "mergebench_version": __version__,
        "base": base,
        "base_label": model_labels([base])[0] if has_base else None,
        "models": models,
        "labels": labels,
        "task_vectors": has_base,
        "densities": list(densities) if has_base else [],
        "pairs": [{"a": a, "b": b, "label": f"{labels[a]} ~ {labels[b]}"} for a, b in pairs],
        "overall": summarize(overall, pairs, has_base),
        "layers": [
            {"group": group, "layer": group_layer[group], **summarize(sums, pairs, has_base)}
            for group, sums in layers.items()
        ],
        "modules": [
            {"module": module, **summarize(sums, pairs, has_base)} for module, sums in modules.items()
        ],
        "tensors": tensors,
        "skipped": skipped,
    }


def similarity_key(analysis: dict) -> tuple[str, str]:
    """Which cosine ranks layers: task vectors' with a base, the weights' without."""
    return ("task_cosine", "task vectors") if analysis["task_vectors"] else ("weight_cosine", "weights")


def mean_similarity(group: dict, key: str) -> float | None:
    """Mean cosine over model pairs — only to rank groups; each pair's cosine is itself exact."""
    values = [v for v in group.get(key, []) if v is not None]
    return sum(values) / len(values) if values else None


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_summary(analysis: dict) -> list[str]:
    """The terminal summary: overall cosines, conflicts, energy kept, the most and least similar layers."""
    labels = analysis["labels"]
    overall = analysis["overall"]
    pairs = analysis["pairs"]
    params = overall["numel"]
    skipped = f", {len(analysis['skipped'])} skipped" if analysis["skipped"] else ""
    lines = []
    if analysis["task_vectors"]:
        lines.append(
            f"analyzed {len(labels)} model{'s' if len(labels) > 1 else ''} against base {analysis['base_label']}: "
            f"{overall['tensors']} tensors{skipped}, {params:,} parameters each"
        )
        norms = ", ".join(
            f"{label} {norm:.4g} ({_percent(rel)})"
            for label, norm, rel in zip(
                labels, overall["task_norm"], overall["task_relative_norm"], strict=True
            )
        )
        lines.append(f"task vector norm ‖τ‖ (relative to ‖θ_base‖): {norms}")
    else:
        lines.append(
            f"analyzed {len(labels)} models without a base: {overall['tensors']} tensors{skipped}, "
            f"{params:,} parameters each"
        )
        lines.append(
            "no --base: no task vectors, so no task-vector cosines, sign conflicts or trimming; "
            "reporting weight norms, weight cosines and the SLERP angle"
        )
        norms = ", ".join(
            f"{label} {norm:.4g}" for label, norm in zip(labels, overall["weight_norm"], strict=True)
        )
        lines.append(f"weight norm ‖θ‖: {norms}")
    key, what = similarity_key(analysis)
    digits = 3 if analysis["task_vectors"] else 5  # the weights of finetunes have cosines near 1
    if pairs:
        cosines = ", ".join(
            f"{p['label']} {_number(c, digits)}" for p, c in zip(pairs, overall[key], strict=True)
        )
        lines.append(f"cosine of {what}: {cosines}")
    if "slerp_angle_deg" in overall:
        angle = f"SLERP angle: weights {_number(overall['slerp_angle_deg'], 2)}°"
        if "task_angle_deg" in overall:
            angle += f", task vectors {_number(overall['task_angle_deg'], 2)}°"
        lines.append(angle)
    if analysis["task_vectors"]:
        if pairs:
            conflict = overall["sign_conflict"]
            parts = [f"{p['label']} {_percent(c)}" for p, c in zip(pairs, conflict["pairs"], strict=True)]
            if len(labels) > 2:
                parts.append(f"all models {_percent(conflict['all'])}")
            lines.append(f"sign conflicts (where ≥2 task vectors are non-zero): {', '.join(parts)}")
        densities = analysis["densities"]
        shown = [d for d in densities if d in (0.2, 0.5)] or sorted({densities[0], densities[-1]})
        for d in shown:
            column = densities.index(d)
            kept = ", ".join(
                f"{label} {_percent(row[column])}"
                for label, row in zip(labels, overall["energy_kept"], strict=True)
            )
            lines.append(f"energy kept by top-k at density {d:g}: {kept}")
    ranked = [
        (value, group["group"])
        for group in analysis["layers"]
        if (value := mean_similarity(group, key)) is not None
    ]
    if len(ranked) >= 2 and pairs:
        ranked.sort(reverse=True)
        top = min(3, len(ranked) // 2)
        most = ", ".join(f"{name} ({value:.{digits}f})" for value, name in ranked[:top])
        least = ", ".join(f"{name} ({value:.{digits}f})" for value, name in reversed(ranked[-top:]))
        over = " (mean over pairs)" if len(pairs) > 1 else ""
        lines.append(f"most similar layers{over}: {most}; least similar: {least}")
    return lines


def write_analysis(analysis: dict, path: Path) -> None:
    """analysis.json, strict JSON (no NaN), written through a temporary file so it is never half-written."""
    import json

    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(json.dumps(analysis, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the analysis ({exc.strerror or exc})") from None
