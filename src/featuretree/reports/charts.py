"""Report charts drawn with matplotlib's Agg backend: axes, ticks, labels, legends.

No pyplot: each chart is a ``matplotlib.figure.Figure`` with its own ``FigureCanvasAgg``, so
nothing touches matplotlib's global state and charts can be drawn from any thread. The chart
functions return the Figure (tests inspect its artists); ``figure_png`` encodes it at the
figure's own size (``figsize`` x ``dpi``, no tight cropping).
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MultipleLocator, PercentFormatter

from ..render.pictures import contribution_image, guided_image, heatmap_image

if TYPE_CHECKING:
    from .evaluate import Evaluation
    from .sanity import SanityReport

DPI = 100
# Colour-blind-safe (Okabe-Ito); one colour per rule, in the order rules appear.
RULE_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442")
RANDOM_COLOUR = "#9a9a9a"
# Deletion / insertion curves: one colour per view (the random order grey, dotted).
CURVE_COLOURS = {"heatmap": "#0072B2", "contribution": "#CC79A7", "guided": "#D55E00", "gradient": "#009E73", "random": RANDOM_COLOUR}
ACTIVE_COLOUR = "#4d4d4d"
SMALL = 8


def new_figure(width_px: int, height_px: int) -> Figure:
    """A Figure of exactly ``width_px`` x ``height_px`` when encoded, with an Agg canvas attached."""
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes at its own pixel size."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def _bar_labels(ax, bars, texts: list[str]) -> None:
    for bar, text in zip(bars, texts):
        height = bar.get_height()
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, height if math.isfinite(height) else 0.0),
            xytext=(0, 2 if height >= 0 else -2),
            textcoords="offset points",
            ha="center",
            va="bottom" if height >= 0 else "top",
            fontsize=SMALL - 1,
            rotation=90,
        )


def evaluation_figure(result: Evaluation) -> Figure:
    """Four panels: ablation drop per layer pair and rule against the random and most-active
    baselines; Spearman rank correlation with measured drops; mean deletion and insertion curves per view."""
    summary = result.summary()
    pairs = list(dict.fromkeys(str(r["pair"]) for r in summary))  # summary() puts "all" last
    rules = list(dict.fromkeys(str(r["rule"]) for r in summary))
    cell = {(str(r["pair"]), str(r["rule"])): r for r in summary}
    fig = new_figure(2000, 640)
    ax_drop, ax_rank, ax_del, ax_ins = fig.subplots(1, 4, width_ratios=[1.35, 1.0, 1.0, 1.0])
    fig.suptitle(
        f"Evaluation of {result.model} on {len(result.images)} image(s), k = {result.k}: do the chosen children matter?",
        fontsize=12,
    )

    # Panel 1: drop of the parent's objective (share), bars per rule plus the two baselines.
    series = [(rule, RULE_COLOURS[i % len(RULE_COLOURS)], "topk_drop") for i, rule in enumerate(rules)]
    series += [(f"random {result.k}", RANDOM_COLOUR, "random_drop"), (f"most active {result.k}", ACTIVE_COLOUR, "active_drop")]
    group = np.arange(len(pairs), dtype=float)
    width = 0.8 / len(series)
    for j, (label, colour, key) in enumerate(series):
        values = [100 * _value(cell, pair, rules, key, rule=label if key == "topk_drop" else None) for pair in pairs]
        bars = ax_drop.bar(group + (j - (len(series) - 1) / 2) * width, values, width, color=colour, label=label)
        _bar_labels(ax_drop, bars, [f"{v:.1f}" if math.isfinite(v) else "n/a" for v in values])
    ax_drop.axhline(0, color="black", linewidth=0.8)
    ax_drop.set_xticks(group, [_pair_label(p, cell, rules) for p in pairs], fontsize=SMALL)
    ax_drop.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax_drop.set_ylabel("drop of the parent's objective (% of its value)")
    ax_drop.set_xlabel("child layer → parent layer (number of parents)")
    ax_drop.set_title(f"Zeroing each rule's top {result.k} children together")
    ax_drop.margins(y=0.15)
    _legend_below(ax_drop, ncols=3, title="channels zeroed")
    ax_drop.grid(axis="y", alpha=0.3)

    # Panel 2: Spearman of each rule's scores with the measured single-channel drops.
    width = 0.8 / max(1, len(rules))
    for j, rule in enumerate(rules):
        values = [_value(cell, pair, rules, "spearman", rule=rule) for pair in pairs]
        bars = ax_rank.bar(group + (j - (len(rules) - 1) / 2) * width, values, width, color=RULE_COLOURS[j % len(RULE_COLOURS)], label=rule)
        _bar_labels(ax_rank, bars, [f"{v:.2f}" if math.isfinite(v) else "n/a" for v in values])
    ax_rank.axhline(0, color="black", linewidth=0.8)
    ax_rank.set_ylim(min(-0.1, _finite_min(cell, "spearman") - 0.15), 1.25)
    ax_rank.yaxis.set_major_locator(MultipleLocator(0.25))
    ax_rank.set_xticks(group, [_pair_label(p, cell, rules) for p in pairs], fontsize=SMALL)
    ax_rank.set_ylabel("Spearman rank correlation")
    ax_rank.set_xlabel("child layer → parent layer (number of parents)")
    ax_rank.set_title("Predicted vs measured single-channel drops")
    _legend_below(ax_rank, ncols=4, title="rule")
    ax_rank.grid(axis="y", alpha=0.3)

    # Panels 3 and 4: mean deletion and insertion curves of each view's node maps, against a random order.
    overall = {str(r["view"]): r for r in result.curve_summary() if r["layer"] == "all"}
    views = [v for v in CURVE_COLOURS if v != "random" and f"{v}:deletion" in result.mean_curves]
    for ax, kind, better in ((ax_del, "deletion", "lower"), (ax_ins, "insertion", "higher")):
        for view in [*views, "random"]:
            curve = result.mean_curves.get(f"{view}:{kind}")
            if not curve:
                continue
            row = overall.get(view) or next(iter(overall.values()), {})
            auc = row.get(f"random_{kind}_auc" if view == "random" else f"{kind}_auc")
            label = "random order" if view == "random" else f"{view} order"
            text = f"{label} (AUC {float(auc):.3f})" if auc is not None else label
            style = ":" if view == "random" else "-"
            x = np.linspace(0.0, 1.0, len(curve))
            ax.plot(x, curve, style, color=CURVE_COLOURS.get(view, RANDOM_COLOUR), linewidth=2, label=text, gid=f"{view}:{kind}")
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        ax.set_xlabel(f"pixels {'deleted' if kind == 'deletion' else 'inserted'} (share of the image)")
        ax.set_ylabel("objective / its value on the photo")
        nodes = int(overall[views[0]]["nodes"]) if views else 0
        ax.set_title(f"{kind.capitalize()}, {nodes} nodes ({better} is better)")
        _legend_below(ax, ncols=2, title="pixel order (area under the curve)")
        ax.grid(alpha=0.3)
    return fig


def _legend_below(ax, ncols: int, title: str) -> None:
    """A legend under the axes' x label, where it cannot hide data (constrained layout makes room)."""
    ax.legend(fontsize=SMALL + 1, title=title, title_fontsize=SMALL + 1, ncols=ncols, loc="upper center", bbox_to_anchor=(0.5, -0.2))


def _value(cell, pair: str, rules: list[str], key: str, rule: str | None) -> float:
    """``key`` of (pair, rule); the baselines are the same for every rule of a pair, so any rule's row serves."""
    for r in [rule] if rule is not None else rules:
        row = cell.get((pair, r))
        if row is not None:
            return float(row[key])
    return math.nan


def _finite_min(cell, key: str) -> float:
    values = [float(r[key]) for r in cell.values() if math.isfinite(float(r[key]))]
    return min(values, default=0.0)


def _pair_label(pair: str, cell, rules: list[str]) -> str:
    parents = int(_value(cell, pair, rules, "parents", rule=None))
    name = "all pairs" if pair == "all" else pair.replace(" -> ", " →\n")
    return f"{name}\n({parents})"


# One colour per sanity view; the root's maps solid, the mean over nodes dashed.
VIEW_COLOURS = {"guided": "#D55E00", "gradient": "#009E73", "heatmap": "#0072B2", "contribution": "#CC79A7"}


def sanity_figure(report: SanityReport, cell_px: int = 170) -> Figure:
    """Top: the paper's chart, one panel per measure and randomisation (cascading, independent): each
    view's similarity to the trained model against the layer randomised, root solid, node mean dashed.
    Below: one row per cascading step, the root's guided picture and heatmap and its children's
    contribution maps, as that step's model picks the children."""
    from .similarity import METRIC_LABELS, METRICS

    steps = report.steps
    modes = [("cascading", steps)] + ([("independent", [steps[0], *report.independent])] if report.independent else [])
    children = max((len(s.tree.root.children) for s in steps if s.tree is not None), default=0)
    columns = 2 + children
    label_px, panel_px, row_px = 110, 400, cell_px + 26
    width = max(label_px + columns * cell_px, 1700)
    chart_px = panel_px * len(modes) + 90
    grid_px = 40 + len(steps) * row_px
    fig = new_figure(width, chart_px + grid_px)
    top, bottom = fig.subfigures(2, 1, height_ratios=[chart_px, grid_px])
    axes = top.subplots(len(modes), len(METRICS), squeeze=False)
    for row, (mode, mode_steps) in enumerate(modes):
        for col, metric in enumerate(METRICS):
            _sanity_chart(axes[row][col], report, mode, mode_steps, metric, METRIC_LABELS[metric])
    handles = [Line2D([], [], color=VIEW_COLOURS.get(v, "black"), linewidth=2, label=v) for v in report.views]
    handles += [
        Line2D([], [], color="black", linewidth=2, marker="o", label="root's maps"),
        Line2D([], [], color="black", linewidth=1.5, linestyle="--", marker=".", label="mean over the tree's nodes"),
    ]
    top.legend(
        handles=handles, loc="outside lower center", ncols=len(handles), fontsize=SMALL + 2, title="view / maps", title_fontsize=SMALL + 2
    )
    top.suptitle(
        f"Sanity check for root {report.root}: similarity to the trained model's maps after randomising weights (1 = unchanged)",
        fontsize=12,
    )
    bottom.suptitle(
        "Cascading steps: the root's guided backprop and heatmap, and its top children's contribution maps as each step's model picks them",
        fontsize=SMALL + 3,
    )
    cells = bottom.subplots(len(steps), columns, squeeze=False, gridspec_kw={"wspace": 0.03, "hspace": 0.12})
    for row, s in enumerate(steps):
        for col, image_ax in enumerate(cells[row]):
            image_ax.set_xticks([])
            image_ax.set_yticks([])
            for spine in image_ax.spines.values():
                spine.set_visible(False)
            if col == 0:
                image_ax.set_ylabel(f"step {s.step}\n{s.label}", fontsize=SMALL + 2, rotation=0, ha="right", va="center")
            _sanity_cell(image_ax, s, col, cell_px)
    return fig


def _sanity_chart(ax, report: SanityReport, mode: str, steps, metric: str, label: str) -> None:
    x = np.arange(len(steps))
    low = 0.0
    for view in report.views:
        colour = VIEW_COLOURS.get(view, "black")
        for of, style, marker, width in (("root", "-", "o", 2.0), ("nodes", "--", ".", 1.5)):
            values = [float(getattr(s, of)[view][metric]) for s in steps]
            if all(math.isnan(v) for v in values):
                continue  # no such map (the contribution map of a logit root)
            ax.plot(x, values, linestyle=style, marker=marker, color=colour, linewidth=width, gid=f"{mode}:{metric}:{view}:{of}")
            low = min([low] + [v for v in values if math.isfinite(v)])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, [s.label for s in steps], rotation=45, ha="right", fontsize=SMALL)
    ax.set_xlim(-0.3, len(steps) - 0.7)
    ax.set_ylim(low - 0.08, 1.08)
    ax.yaxis.set_major_locator(MultipleLocator(0.25))
    ax.set_xlabel("randomised from the top down to" if mode == "cascading" else "layer randomised alone", fontsize=SMALL + 1)
    ax.set_ylabel(label, fontsize=SMALL + 1)
    ax.set_title(f"{label}, {mode}", fontsize=SMALL + 2)
    ax.grid(alpha=0.3)


def _sanity_cell(ax, step, col: int, cell_px: int) -> None:
    """Column 0: the root's guided picture; 1: its heatmap; 2...: child col-1's contribution map."""
    tree = step.tree
    if tree is None:
        return
    nodes = [tree.root, *tree.root.children]
    node = nodes[0] if col < 2 else (nodes[col - 1] if col - 1 < len(nodes) else None)
    ev = tree.evidence.get(node.id) if node is not None else None
    if ev is None:
        return
    role = "root" if col < 2 else f"{col - 1}."
    if col == 1:
        if ev.heat is None or tree.picture is None:
            return
        picture, what = heatmap_image(ev, tree.picture), "heatmap"
    elif col == 0:
        if ev.guided is None:
            return
        picture, what = guided_image(ev), "guided"
    else:
        if ev.contribution is None or tree.picture is None:
            return
        picture, what = contribution_image(ev, tree.picture), "contribution"
    # Small inputs (the toy net's 32 px) are shown as pixels, not blurred; photos are anti-aliased.
    smooth = "antialiased" if max(picture.size) >= cell_px else "nearest"
    ax.imshow(np.asarray(picture), interpolation=smooth, gid=f"{what}:{node.id}")
    ax.set_title(f"{role} {node.layer}:{node.unit} {what}" if col < 2 else f"{role} {node.layer}:{node.unit}", fontsize=SMALL)
    if what == "guided" and not np.any(ev.guided):
        ax.text(0.5, 0.5, "guided backprop\nall zero", transform=ax.transAxes, ha="center", va="center", fontsize=SMALL, color="black")
