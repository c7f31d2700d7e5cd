"""Evaluation over a folder of images: do the chosen children really matter, and do the heatmaps point at evidence?

Per image, the parents are the root (top class) and the first ``parents`` children of the default
tree. For each parent N with objective ``J = delta(path) . a_N`` (see analysis.interventions):

- top-k drop: zero the k children each rule picks, jointly, and measure the drop of J (as a share
  of J); baselines: k random channels (mean over draws) and the k most active channels;
- rank correlation (Spearman) of each rule's scores with the measured single-channel drops
  (trivially 1 for ``ablation``, which is that measurement);
- deletion / insertion curves of N's picture in each view: pixels in decreasing order of the view's
  map are set to the baseline (the preprocessing mean, i.e. zero model input), or restored from it;
  y = J(x') / J(x); area under the curve against a random pixel order (one order per node, shared by
  the views). Lower deletion AUC and higher insertion AUC mean the view found the evidence. The orders:
  ``heatmap``, gradient x input, and ``contribution``, the node's own a x delta upsampled to the input,
  by signed value (they are contributions: most positive first); ``gradient`` and ``guided``, sensitivities
  whose sign per pixel means little, by magnitude (summed over colours).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path as FsPath

import numpy as np
import torch
from matplotlib.figure import Figure

from ..analysis.interventions import ablation, objective
from ..capture.forward import resolve_modules
from ..capture.hooks import watching
from ..core.errors import ImageInputError, OptionError, check_choice
from ..core.images import load_image
from ..core.units import Unit, path_id
from ..explainer import Analysis, Explainer
from ..render.export import write_report
from ..render.pictures import upsampled_contribution
from ..rules import rule_names
from ..tree.expansion import check_rerank, rerank_candidates
from .charts import evaluation_figure, figure_png
from .similarity import spearman

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class ChildRow:
    image: str
    parent: str
    pair: str  # "child layer -> parent layer"
    rule: str
    k: int
    parent_value: float
    drop: float  # share of J removed by zeroing this rule's top-k
    random_drop: float  # mean over random k-sets
    active_drop: float  # k most active channels
    spearman: float  # scores vs measured single-channel drops
    top: str  # the rule's top-k channels, best first


CURVE_VIEWS: tuple[str, ...] = ("heatmap", "contribution", "guided", "gradient")


@dataclass
class CurveRow:
    image: str
    node: str
    view: str
    layer: str
    deletion_auc: float
    insertion_auc: float
    random_deletion_auc: float
    random_insertion_auc: float


@dataclass
class Evaluation:
    model: str
    k: int
    images: list[str]
    children: list[ChildRow] = field(default_factory=list)
    curves: list[CurveRow] = field(default_factory=list)
    # "VIEW:deletion", "VIEW:insertion", "random:deletion", "random:insertion" -> mean curve over nodes
    mean_curves: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> list[dict[str, object]]:
        """One row per (layer pair, rule) and per rule overall."""
        groups: dict[tuple[str, str], list[ChildRow]] = defaultdict(list)
        for row in self.children:
            groups[(row.pair, row.rule)].append(row)
            groups[("all", row.rule)].append(row)
        out = []
        for (pair, rule), rows in groups.items():
            drop = float(np.mean([r.drop for r in rows]))
            rand = float(np.mean([r.random_drop for r in rows]))
            active = float(np.mean([r.active_drop for r in rows]))
            out.append(
                {
                    "pair": pair,
                    "rule": rule,
                    "parents": len(rows),
                    "topk_drop": drop,
                    "random_drop": rand,
                    "active_drop": active,
                    "vs_random": _ratio(drop, rand),
                    "vs_active": _ratio(drop, active),
                    "spearman": float(np.mean([r.spearman for r in rows])),
                }
            )
        out.sort(
            key=lambda r: (r["pair"] == "all", str(r["pair"]), rule_names().index(str(r["rule"])) if r["rule"] in rule_names() else 99)
        )
        return out

    def curve_summary(self) -> list[dict[str, object]]:
        """One row per (view, node layer) and per view overall ("all"), views in ``CURVE_VIEWS`` order."""
        groups: dict[tuple[str, str], list[CurveRow]] = defaultdict(list)
        for row in self.curves:
            groups[(row.view, row.layer)].append(row)
            groups[(row.view, "all")].append(row)
        order = {view: i for i, view in enumerate(CURVE_VIEWS)}
        return [
            {
                "view": view,
                "layer": layer,
                "nodes": len(rows),
                "deletion_auc": float(np.mean([r.deletion_auc for r in rows])),
                "random_deletion_auc": float(np.mean([r.random_deletion_auc for r in rows])),
                "insertion_auc": float(np.mean([r.insertion_auc for r in rows])),
                "random_insertion_auc": float(np.mean([r.random_insertion_auc for r in rows])),
            }
            for (view, layer), rows in sorted(groups.items(), key=lambda item: (order.get(item[0][0], 99), item[0][1] == "all", item[0][1]))
        ]

    def to_markdown(self) -> str:
        lines = [
            f"Evaluation of {self.model} on {len(self.images)} image(s), k={self.k}.",
            "",
            f"Drop of the parent's objective when its top-{self.k} children are zeroed together (share of the objective), "
            f"against {self.k} random and the {self.k} most active channels of the same layer; Spearman = rank correlation "
            "of the rule's scores with measured single-channel drops.",
            "",
            "| layer pair | rule | parents | top-k drop | random-k drop | active-k drop | x random | x active | Spearman |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.summary():
            lines.append(
                f"| {r['pair']} | {r['rule']} | {r['parents']} | {_pct(r['topk_drop'])} | {_pct(r['random_drop'])} | "
                f"{_pct(r['active_drop'])} | {_x(r['vs_random'])} | {_x(r['vs_active'])} | {r['spearman']:.2f} |"
            )
        lines += [
            "",
            "Deletion / insertion of each view's node maps (pixels in the map's order set to the baseline, or restored from it); "
            "y = objective / its value on the photo; lower deletion and higher insertion AUC are better.",
            "",
            "| view | node layer | nodes | deletion AUC | random deletion | insertion AUC | random insertion |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in self.curve_summary():
            lines.append(
                f"| {r['view']} | {r['layer']} | {r['nodes']} | {r['deletion_auc']:.3f} | {r['random_deletion_auc']:.3f} | "
                f"{r['insertion_auc']:.3f} | {r['random_insertion_auc']:.3f} |"
            )
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        rows = [{"kind": "children", **asdict(r)} for r in self.children] + [{"kind": "curves", **asdict(r)} for r in self.curves]
        fields = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()


def _ratio(a: float, b: float) -> float:
    """a / b; nan when the baseline drop is not positive (the ratio would mean nothing)."""
    return a / b if b > 0 else math.nan


def _pct(x: object) -> str:
    return f"{100 * float(x):.1f}%"  # type: ignore[arg-type]


def _x(x: object) -> str:
    return "n/a" if not math.isfinite(float(x)) else f"{float(x):.1f}x"  # type: ignore[arg-type]


def list_images(folder: str | os.PathLike[str], limit: int | None = None) -> list[FsPath]:
    root = FsPath(folder)
    if not root.is_dir():
        raise ImageInputError(f"{root} is not a folder", "pass a folder of images to evaluate")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ImageInputError(f"no images in {root}", f"put {', '.join(IMAGE_SUFFIXES)} files there")
    return files[:limit] if limit else files


def evaluate_children(
    analysis: Analysis,
    path: Sequence[Unit],
    k: int,
    rules: Sequence[str],
    random_draws: int,
    generator: torch.Generator,
    image: str = "",
    rerank: int | None = None,
) -> list[ChildRow]:
    """Top-k ablation drop of each rule's children of ``path[-1]`` against random and most-active k-sets.

    With ``rerank`` N, also the row ``gradient+rerankN``: the top N*k by gradient x activation, reordered by
    their measured drops (as ``explain --rerank``); its ranking for the Spearman is the candidates in that
    order above every other channel in gradient order."""
    path = tuple(path)
    index = analysis.layers.index(path[-1].layer)
    child_layer = analysis.layers[index - 1]
    channels = analysis.layer_info(child_layer).channels
    k = min(k, channels)
    measured = analysis.contributions(path, "ablation")  # single-channel drops of J
    scores = {rule: analysis.contributions(path, rule) for rule in rules}
    tops = {rule: [int(i) for i in s.topk(k).indices] for rule, s in scores.items()}
    if rerank is not None:
        gradient = analysis.contributions(path, "gradient")
        picked = rerank_candidates(analysis, path, gradient, rerank * k, "sum")
        ranking = gradient.clone() - gradient.max() - 1.0  # below every candidate
        for place, channel in enumerate(picked):
            ranking[channel] = float(len(picked) - place)
        name = f"gradient+rerank{rerank}"
        rules = [*rules, name]
        # Fewer than k candidates lowered the parent: fill up in gradient order, so every row zeroes k channels.
        filler = [int(i) for i in gradient.argsort(descending=True) if int(i) not in picked]
        scores[name], tops[name] = ranking, (picked + filler)[:k]
    strength = analysis.layer_info(child_layer).layout.channel_totals(analysis.activation(child_layer).double())[0]
    active = [int(i) for i in strength.topk(k).indices]
    randoms = [torch.randperm(channels, generator=generator)[:k].tolist() for _ in range(random_draws)]
    sets = [tops[r] for r in rules] + [active] + randoms
    zeroed = ablation(analysis, path, sets)
    drops, value = zeroed.parent_drop, zeroed.parent_value
    scale = abs(value) if value else 1.0
    rel = (drops / scale).tolist()
    n = len(rules)
    random_drop = float(np.mean(rel[n + 1 :])) if random_draws else float("nan")
    measured_np = measured.numpy()
    return [
        ChildRow(
            image=image,
            parent=path_id(path),
            pair=f"{child_layer} -> {path[-1].layer}",
            rule=rule,
            k=k,
            parent_value=value,
            drop=rel[i],
            random_drop=random_drop,
            active_drop=rel[n],
            spearman=spearman(scores[rule].numpy(), measured_np),
            top=" ".join(str(c) for c in tops[rule]),
        )
        for i, rule in enumerate(rules)
    ]


def _curve(analysis: Analysis, path: Sequence[Unit], order: torch.Tensor, steps: int, insertion: bool) -> np.ndarray:
    """J(x') / J(x) as the first fractions of ``order`` (flat pixel indices) are deleted or inserted."""
    x = analysis.record.input.detach()
    baseline = torch.zeros_like(x)
    height, width = x.shape[-2:]
    fractions = torch.linspace(0, 1, steps + 1)
    rank = torch.empty(height * width, dtype=torch.long)
    rank[order] = torch.arange(height * width)
    batch = []
    for f in fractions.tolist():
        keep = (rank < round(f * height * width)).view(1, 1, height, width).to(x.dtype)  # 1 = changed pixel
        batch.append(x * keep + baseline * (1 - keep) if insertion else baseline * keep + x * (1 - keep))
    stacked = torch.cat(batch)
    unit = path[-1]
    weight = analysis.delta(path, "gradient")
    store: dict[str, torch.Tensor] = {}
    module = resolve_modules(analysis.explainer.model, [unit.layer])
    with torch.no_grad(), watching(module, store, stop=True):
        analysis.explainer.model(stacked)
    values = objective(store[unit.layer], weight).cpu().numpy()
    reference = float(objective(analysis.activation(unit.layer), weight)[0])
    return values / reference if reference else values


def pixel_orders(analysis: Analysis, path: Sequence[Unit], views: Sequence[str]) -> dict[str, torch.Tensor]:
    """Flat pixel indices of the input, strongest evidence first, in each view's map (see the module notes);
    the guided view is left out where guided backprop is undefined for the model."""
    kinds = {"heatmap": "heat", "gradient": "gradient", "guided": "guided", "contribution": "contribution"}
    (ev,) = analysis.evidence_many([tuple(path)], "gradient", "sum", [kinds[v] for v in views])
    height, width = analysis.record.input.shape[-2:]
    maps = {
        "heatmap": ev.heat,
        "gradient": None if ev.gradient is None else np.abs(ev.gradient).sum(0),
        "guided": None if ev.guided is None else np.abs(ev.guided).sum(0),
        "contribution": None if ev.contribution is None else upsampled_contribution(ev, (int(width), int(height))),
    }
    return {
        view: torch.argsort(torch.from_numpy(np.ascontiguousarray(maps[view], dtype=np.float64)).flatten(), descending=True, stable=True)
        for view in views
        if maps[view] is not None
    }


def _auc(curve: np.ndarray) -> float:
    return float((curve[:-1] + curve[1:]).sum() / (2 * (len(curve) - 1)))  # trapezoid rule


def evaluate_curves(
    analysis: Analysis, path: Sequence[Unit], steps: int, generator: torch.Generator, image: str = "", views: Sequence[str] = CURVE_VIEWS
) -> tuple[list[CurveRow], dict[str, np.ndarray]]:
    """Deletion and insertion curves of each view's pixel order and of one random order, with their AUCs."""
    path = tuple(path)
    height, width = analysis.record.input.shape[-2:]
    random_order = torch.randperm(int(height * width), generator=generator)
    curves = {
        "random:deletion": _curve(analysis, path, random_order, steps, False),
        "random:insertion": _curve(analysis, path, random_order, steps, True),
    }
    rows = []
    for view, order in pixel_orders(analysis, path, views).items():
        curves[f"{view}:deletion"] = _curve(analysis, path, order, steps, False)
        curves[f"{view}:insertion"] = _curve(analysis, path, order, steps, True)
        rows.append(
            CurveRow(
                image,
                path_id(path),
                view,
                path[-1].layer,
                _auc(curves[f"{view}:deletion"]),
                _auc(curves[f"{view}:insertion"]),
                _auc(curves["random:deletion"]),
                _auc(curves["random:insertion"]),
            )
        )
    return rows, curves


def evaluate_folder(
    explainer: Explainer,
    images_dir: str | os.PathLike[str],
    *,
    k: int = 5,
    rules: Sequence[str] | None = None,
    parents: int = 3,
    random_draws: int = 10,
    curve_steps: int = 16,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = False,
    views: Sequence[str] = CURVE_VIEWS,
    rerank: int | None = None,
) -> Evaluation:
    from tqdm.auto import tqdm

    if k < 1:
        raise OptionError(f"k must be at least 1, got {k}", "use --k 1 or more")
    if rules is None:
        rules = rule_names()
    if not rules:
        raise OptionError("no rules to evaluate", f"use --rules with some of {', '.join(rule_names())}")
    for rule in rules:
        check_choice(rule, rule_names(), "rule")
    check_rerank(rerank)
    for view in views:
        check_choice(view, CURVE_VIEWS, "view")
    if curve_steps < 1:
        raise OptionError(f"curve steps must be at least 1, got {curve_steps}", "use --curve-steps 16")
    files = list_images(images_dir, limit)
    result = Evaluation(explainer.name, k, [f.name for f in files])
    generator = torch.Generator().manual_seed(seed)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = defaultdict(int)
    for file in tqdm(files, desc="evaluating", unit="image", disable=not progress, leave=False):
        analysis = explainer.analyze(load_image(file))
        root = analysis.resolve_root()
        paths = [(root,)]
        if analysis.layers.index(root.layer) >= 2 and parents > 0:
            paths += [(root, c.unit) for c in analysis.expand((root,), k=parents).children]
        for path in paths:
            result.children.extend(evaluate_children(analysis, path, k, rules, random_draws, generator, file.name, rerank))
            rows, curves = evaluate_curves(analysis, path, curve_steps, generator, file.name, views)
            result.curves.extend(rows)
            for name, c in curves.items():
                sums[name] = sums.get(name, 0) + c
                counts[name] += 1
    result.mean_curves = {name: (s / counts[name]).tolist() for name, s in sums.items()}
    return result


def plot(result: Evaluation) -> Figure:
    """The report's chart (see reports.charts.evaluation_figure)."""
    return evaluation_figure(result)


def save_evaluation(result: Evaluation, out_dir: str | os.PathLike[str]) -> FsPath:
    return write_report(out_dir, "evaluate", result.to_markdown(), result.to_csv(), figure_png(plot(result)))
