"""report.html for ``mergebench analyze``: one self-contained page, readable offline.

The page is made from the analysis.json object alone (so it can be rebuilt from a saved analysis),
with per-layer aggregates only — per-tensor numbers stay in the JSON, which keeps the page small
for models of any size. Plots are PNGs drawn with matplotlib's Agg renderer through ``Figure``
(no pyplot: no global figure state, no display needed) and embedded as base64 data URIs; styles are
inline; there is no JavaScript and no external asset, so the file can be mailed or archived as is.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from mergebench.analyze import mean_similarity, similarity_key
from mergebench.errors import OutputError

DPI = 90
MAX_PAIR_COLUMNS = 6  # tables and line plots show each pair up to this many pairs, else their mean
ANNOTATE_CELLS = 300
MAX_MODULE_COLUMNS = 24  # one pair: a layer × module-type heatmap up to this many module types (MoE: more)  # heatmaps print values in the cells up to this many cells

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
.note { background: #fff6dd; border-left: 4px solid #e0b000; padding: 0.5em 0.8em; }
.meta { color: #555; } code { background: #f3f3f3; padding: 0 0.25em; }
dl dt { font-weight: 600; margin-top: 0.5em; } dl dd { margin-left: 1.2em; }
"""


def _png(figure: Figure) -> str:
    """A figure as a ``data:image/png;base64,…`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _value(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _layer_axis(figure_axis, groups: Sequence[str]) -> None:
    """Categorical x axis of layer groups, thinned so labels stay readable for deep models."""
    step = max(1, math.ceil(len(groups) / 40))
    ticks = list(range(0, len(groups), step))
    figure_axis.set_xticks(ticks)
    figure_axis.set_xticklabels([groups[i].replace("layer ", "") for i in ticks], rotation=90, fontsize=8)
    figure_axis.set_xlabel("layer (embed/head/other: tensors outside the layers)")
    figure_axis.grid(alpha=0.3)


def heatmap(
    rows: Sequence[str], columns: Sequence[str], values: list[list[float]], title: str, *, diverging: bool
) -> str:
    """Cosine heatmap; missing cells (no such tensor, or a zero vector) are grey."""
    data = np.ma.masked_invalid(np.array(values, dtype=float).reshape(len(rows), len(columns)))
    height = min(30.0, 1.6 + 0.28 * len(rows))
    width = min(16.0, 3.0 + 0.9 * len(columns))
    figure = Figure(figsize=(width, height))
    axis = figure.add_subplot()
    finite = data.compressed()
    if diverging:
        limit = float(np.abs(finite).max()) if finite.size else 1.0
        limit = limit or 1.0
        vmin, vmax, cmap = -limit, limit, "RdBu_r"
    else:
        vmin = float(finite.min()) if finite.size else 0.0
        vmax = float(finite.max()) if finite.size else 1.0
        vmax = vmax if vmax > vmin else vmin + 1e-12
        cmap = "viridis"
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="#dddddd")
    image = axis.imshow(data, aspect="auto", cmap=colormap, vmin=vmin, vmax=vmax, interpolation="nearest")
    axis.set_yticks(range(len(rows)))
    axis.set_yticklabels(rows, fontsize=8)
    axis.set_xticks(range(len(columns)))
    axis.set_xticklabels(columns, rotation=30, ha="right", fontsize=8)
    if len(rows) * len(columns) <= ANNOTATE_CELLS:
        missing = np.ma.getmaskarray(data)
        for r in range(len(rows)):
            for c in range(len(columns)):
                if not missing[r, c]:
                    shade = (float(data[r, c]) - vmin) / (vmax - vmin)
                    dark = shade > 0.8 or shade < 0.2 if diverging else shade < 0.35
                    color = "white" if dark else "black"
                    axis.text(c, r, f"{data[r, c]:.3f}", ha="center", va="center", fontsize=7, color=color)
    figure.colorbar(image, ax=axis, fraction=0.04, pad=0.02)
    axis.set_title(title, fontsize=10)
    return _png(figure)


def cosine_heatmap(analysis: dict) -> tuple[str, str]:
    """(image, caption): rows are layers; columns are model pairs, or module types for a single pair."""
    key, what = similarity_key(analysis)
    pairs = analysis["pairs"]
    layer_tensors = [t for t in analysis["tensors"] if t["layer"] is not None]
    modules = list(dict.fromkeys(t["module"] for t in layer_tensors))
    if len(pairs) == 1 and 0 < len(modules) <= MAX_MODULE_COLUMNS:
        rows = sorted({t["layer"] for t in layer_tensors})
        cell = {(t["layer"], t["module"]): t[key][0] for t in layer_tensors}
        values = [[_value(cell.get((r, m))) for m in modules] for r in rows]
        uri = heatmap(
            [f"layer {r}" for r in rows],
            modules,
            values,
            f"cosine of {what}, {pairs[0]['label']}, per layer and module type",
            diverging=analysis["task_vectors"],
        )
        caption = (
            f"Cosine of the {what} of {html.escape(pairs[0]['label'])} per tensor (layer × module type); "
            "tensors outside the layers are in the tables below."
        )
        return uri, caption
    groups = analysis["layers"]
    values = [[_value(v) for v in group[key]] for group in groups]
    uri = heatmap(
        [g["group"] for g in groups],
        [p["label"] for p in pairs],
        values,
        f"cosine of {what} per layer and model pair",
        diverging=analysis["task_vectors"],
    )
    return (
        uri,
        f"Cosine of the {what} per layer (Σ⟨a,b⟩/√(Σ‖a‖²Σ‖b‖²) over the layer's tensors) and model pair.",
    )


def _pair_series(analysis: dict, values_of) -> list[tuple[str, list[float]]]:
    """(label, per-layer values) per pair, or one mean series when there are many pairs."""
    pairs = analysis["pairs"]
    groups = analysis["layers"]
    if len(pairs) <= MAX_PAIR_COLUMNS:
        return [(p["label"], [_value(values_of(g)[i]) for g in groups]) for i, p in enumerate(pairs)]
    means = []
    for g in groups:
        present = [v for v in values_of(g) if v is not None]
        means.append(sum(present) / len(present) if present else math.nan)
    return [(f"mean of {len(pairs)} pairs", means)]


def conflict_plot(analysis: dict) -> str:
    groups = [g["group"] for g in analysis["layers"]]
    figure = Figure(figsize=(9, 3.6))
    axis = figure.add_subplot()
    x = range(len(groups))
    for label, series in _pair_series(analysis, lambda g: g["sign_conflict"]["pairs"]):
        axis.plot(x, [100 * v for v in series], marker="o", markersize=3, label=label)
    if len(analysis["models"]) > 2:
        all_models = [100 * _value(g["sign_conflict"]["all"]) for g in analysis["layers"]]
        axis.plot(x, all_models, color="black", linewidth=2.2, marker="s", markersize=3, label="all models")
    axis.axhline(50, color="grey", linestyle="--", linewidth=1, label="50% (independent signs, 2 models)")
    axis.set_ylabel("sign conflicts (%)")
    axis.set_ylim(bottom=0)
    _layer_axis(axis, groups)
    axis.legend(fontsize=8, loc="best")
    axis.set_title("sign conflicts by layer (entries where ≥2 task vectors are non-zero)", fontsize=10)
    return _png(figure)


def energy_plot(analysis: dict) -> str:
    densities = analysis["densities"]
    figure = Figure(figsize=(6, 4))
    axis = figure.add_subplot()
    for label, row in zip(analysis["labels"], analysis["overall"]["energy_kept"], strict=True):
        axis.plot(densities, [100 * _value(v) for v in row], marker="o", label=label)
    axis.plot([0, 1], [0, 100], color="grey", linestyle="--", linewidth=1, label="random trim (= density)")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 102)
    axis.set_xlabel("density (share of entries kept per tensor)")
    axis.set_ylabel("energy ‖τ‖² kept (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title("energy kept by top-k magnitude trimming", fontsize=10)
    return _png(figure)


def norm_plot(analysis: dict) -> str:
    groups = analysis["layers"]
    figure = Figure(figsize=(9, 3.6))
    axis = figure.add_subplot()
    x = range(len(groups))
    task = analysis["task_vectors"]
    for i, label in enumerate(analysis["labels"]):
        if task:
            series = [100 * _value(g["task_relative_norm"][i]) for g in groups]
        else:
            series = [_value(g["weight_norm"][i]) for g in groups]
        axis.plot(x, series, marker="o", markersize=3, label=label)
    if task:
        axis.set_ylabel("‖τ‖ / ‖θ_base‖ (%)")
        title = "task vector norm relative to the base, by layer"
    else:
        axis.set_ylabel("‖θ‖")
        title = "weight norm by layer"
    _layer_axis(axis, [g["group"] for g in groups])
    axis.legend(fontsize=8)
    axis.set_title(title, fontsize=10)
    return _png(figure)


def angle_plot(analysis: dict) -> str:
    """SLERP angles by layer (two models): weights, and task vectors beside them when there is a base."""
    groups = analysis["layers"]
    task = analysis["task_vectors"]
    figure = Figure(figsize=(10 if task else 6, 3.6))
    keys = [("slerp_angle_deg", "weights")] + ([("task_angle_deg", "task vectors")] if task else [])
    for index, (key, what) in enumerate(keys):
        axis = figure.add_subplot(1, len(keys), index + 1)
        axis.plot(range(len(groups)), [_value(g[key]) for g in groups], marker="o", markersize=3)
        axis.set_ylabel("angle (degrees)")
        axis.set_title(f"angle between the two {what}", fontsize=10)
        _layer_axis(axis, [g["group"] for g in groups])
    figure.tight_layout()
    return _png(figure)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def model_table(analysis: dict) -> str:
    overall = analysis["overall"]
    densities = analysis["densities"]
    if analysis["task_vectors"]:
        header = ["model", "‖θ‖", "‖τ‖", "‖τ‖/‖θ_base‖", *(f"kept @ {d:g}" for d in densities)]
        rows = [
            [
                label,
                _fmt(overall["weight_norm"][i], ".4g"),
                _fmt(overall["task_norm"][i], ".4g"),
                _pct(overall["task_relative_norm"][i]),
                *(_pct(v) for v in overall["energy_kept"][i]),
            ]
            for i, label in enumerate(analysis["labels"])
        ]
    else:
        header = ["model", "‖θ‖"]
        rows = [[label, _fmt(overall["weight_norm"][i], ".4g")] for i, label in enumerate(analysis["labels"])]
    return _table(header, rows)


def pair_table(analysis: dict) -> str:
    overall = analysis["overall"]
    task = analysis["task_vectors"]
    header = ["pair", "cosine (weights)"]
    if task:
        header += ["cosine (task vectors)", "sign conflicts"]
    rows = []
    for i, pair in enumerate(analysis["pairs"]):
        row = [pair["label"], _fmt(overall["weight_cosine"][i], ".5f")]
        if task:
            row += [_fmt(overall["task_cosine"][i]), _pct(overall["sign_conflict"]["pairs"][i])]
        rows.append(row)
    if task and len(analysis["models"]) > 2:
        rows.append(["all models", "", "", _pct(overall["sign_conflict"]["all"])])
    return _table(header, rows)


def layer_table(analysis: dict) -> str:
    key, what = similarity_key(analysis)
    pairs = analysis["pairs"]
    task = analysis["task_vectors"]
    each_pair = len(pairs) <= MAX_PAIR_COLUMNS
    digits = ".3f" if task else ".5f"  # finetunes' weights have cosines near 1: show the digits that differ
    header = ["layer", "parameters"]
    header += [f"cos {p['label']}" for p in pairs] if each_pair else [f"mean cos ({what})"]
    if task and pairs:
        header += ["sign conflicts (all)"]
    if task:
        header += [f"‖τ‖/‖θ_base‖ {label}" for label in analysis["labels"]]
    if len(analysis["models"]) == 2:
        header += ["SLERP angle (weights)"]
    rows = []
    for group in analysis["layers"]:
        row = [group["group"], f"{group['numel']:,}"]
        row += (
            [_fmt(v, digits) for v in group[key]]
            if each_pair
            else [_fmt(mean_similarity(group, key), digits)]
        )
        if task and pairs:
            row += [_pct(group["sign_conflict"]["all"])]
        if task:
            row += [_pct(v) for v in group["task_relative_norm"]]
        if len(analysis["models"]) == 2:
            row += [
                _fmt(group["slerp_angle_deg"], ".2f") + "°" if group["slerp_angle_deg"] is not None else "–"
            ]
        rows.append(row)
    return _table(header, rows)


DEFINITIONS = """
<dl>
<dt>task vector τ<sub>i</sub></dt><dd>θ<sub>i</sub> − θ<sub>base</sub>: what a finetune changed; merges
add (weighted, trimmed) task vectors to the base.</dd>
<dt>cosine</dt><dd>⟨a, b⟩ / (‖a‖‖b‖) over all entries of a tensor; for a layer or the whole model the
dot products and squared norms are summed over its tensors first (exact, not an average of cosines).
Near 0: the finetunes changed unrelated directions (they add up without interfering); negative: they
pull against each other.</dd>
<dt>sign conflicts</dt><dd>Among entries where at least two task vectors are non-zero, the share where the
non-zero ones disagree in sign (for a pair: among entries where both are non-zero). This is what TIES'
sign election resolves; two independent task vectors give about 50%.</dd>
<dt>energy kept</dt><dd>Share of ‖τ‖² carried by the ⌊density·n⌋ largest-magnitude entries of each tensor
(TIES' magnitude trim); the dashed line is what a random trim keeps on average. High at low density:
trimming is cheap.</dd>
<dt>SLERP angle</dt><dd>Angle between the two flattened weight tensors (and task vectors), in degrees.
A small angle makes SLERP almost a linear interpolation.</dd>
</dl>
"""


def render_report(analysis: dict) -> str:
    """The whole page as a string (see the module docstring)."""
    labels = analysis["labels"]
    models = ", ".join(f"<code>{html.escape(m)}</code>" for m in analysis["models"])
    overall = analysis["overall"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request: the page loads nothing but itself
        f"<title>mergebench analyze: {html.escape(', '.join(labels))}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>What a merge of these models will do</h1>",
        f'<p class="meta">models: {models}<br>',
    ]
    if analysis["task_vectors"]:
        parts.append(f"base: <code>{html.escape(analysis['base'])}</code><br>")
    skipped = len(analysis["skipped"])
    parts.append(
        f"{overall['tensors']} tensors, {overall['numel']:,} parameters per model"
        + (f", {skipped} tensor(s) skipped (listed in analysis.json)" if skipped else "")
        + f"; mergebench {html.escape(analysis['mergebench_version'])}</p>"
    )
    if not analysis["task_vectors"]:
        parts.append(
            '<p class="note">No base model was given (<code>--base</code>), so there are no task vectors: '
            "this report shows weight norms, cosines between the weights and the SLERP angle only.</p>"
        )
    parts += ["<h2>Models</h2>", model_table(analysis)]
    if analysis["pairs"]:
        uri, caption = cosine_heatmap(analysis)
        parts += ["<h2>Pairs</h2>", pair_table(analysis), "<h2>Similarity by layer</h2>", f"<p>{caption}</p>"]
        parts.append(_img(uri, "cosine heatmap by layer"))
    if analysis["task_vectors"]:
        if analysis["pairs"]:
            parts += [
                "<h2>Sign conflicts by layer</h2>",
                _img(conflict_plot(analysis), "sign conflicts by layer"),
            ]
        parts += [
            "<h2>Energy kept by trimming</h2>",
            _img(energy_plot(analysis), "energy kept versus density"),
        ]
    parts += ["<h2>Norms by layer</h2>", _img(norm_plot(analysis), "norms by layer")]
    if len(analysis["models"]) == 2:
        parts += ["<h2>SLERP angle by layer</h2>", _img(angle_plot(analysis), "SLERP angle by layer")]
    parts += ["<h2>Per layer</h2>", layer_table(analysis), "<h2>Definitions</h2>", DEFINITIONS]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(analysis: dict, path: Path) -> None:
    """report.html, written through a temporary file so a failed run never leaves half a page."""
    page = render_report(analysis)
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(page, encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the report ({exc.strerror or exc})") from None
