"""Model-randomisation sanity check (Adebayo et al., 2018): do the pictures depend on the weights?

The weights are re-drawn segment by segment. Cascading: step 1 randomises the parameters that compute
the top chain layer (the root's), step 2 also those of the layer below, and so on down to the first.
Independent: one segment at a time, the rest trained. Each parameter tensor is replaced by Gaussian
noise with its own mean and standard deviation (batch-norm running statistics are kept). After each
step the trained tree's paths are explained again and each view's maps compared with the trained
model's by the paper's measures (``reports.similarity``: Spearman of |map| and signed, SSIM, HOG):

- ``root``: the root's maps;
- ``nodes``: the mean over the trained tree's nodes that have the view (the contribution map has none
  at a vector layer such as the logits);
- ``children_kept``: the share of each expanded node's children that the randomised model still picks
  for the same path, averaged over expanded nodes.

Views: ``guided`` (path-conditioned guided backprop at the input), ``gradient`` (the rule's gradient at
the input), ``heatmap`` (gradient x input), ``contribution`` (the node's own a x delta at its layer,
upsampled to the input as the picture shows it).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ..capture.forward import resolve_modules
from ..capture.hooks import forward_hooks
from ..core.errors import OptionError
from ..core.units import Unit, parse_path
from ..explainer import Explainer
from ..render.export import write_report
from ..render.pictures import upsampled_contribution
from ..tree.model import FeatureTree
from .charts import figure_png, sanity_figure
from .similarity import METRICS, MapPair, similarities, spearman

SANITY_VIEWS: tuple[str, ...] = ("guided", "gradient", "heatmap", "contribution")
MODES: tuple[str, ...] = ("cascading", "independent")
Scores = dict[str, dict[str, float]]  # view -> metric -> value (nan: no such map)


@dataclass
class SanityStep:
    step: int
    mode: str  # "cascading" or "independent"
    randomised: list[str]  # chain layers whose computing parameters are random at this step
    root: Scores
    nodes: Scores
    node_counts: dict[str, int]  # per view, the nodes averaged in ``nodes``
    children_kept: float
    root_children: list[str]
    tree: FeatureTree | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """The layer randomised last (cascading) or alone (independent); "trained" for step 0."""
        return self.randomised[-1] if self.randomised else "trained"

    def to_dict(self) -> dict[str, object]:
        return {
            "step": self.step,
            "mode": self.mode,
            "randomised": list(self.randomised),
            "root": _finite(self.root),
            "nodes": _finite(self.nodes),
            "node_counts": dict(self.node_counts),
            "children_kept": self.children_kept,
            "root_children": list(self.root_children),
        }


def _finite(scores: Scores) -> dict[str, dict[str, float | None]]:
    """NaN (no such map) as None, so the JSON is standard."""
    return {view: {m: (None if math.isnan(v) else v) for m, v in values.items()} for view, values in scores.items()}


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


@dataclass
class SanityReport:
    root: str
    views: list[str]
    steps: list[SanityStep]  # cascading, step 0 = the trained model
    independent: list[SanityStep] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """What ``featuretree sanity --json`` prints."""
        return {
            "root": self.root,
            "views": list(self.views),
            "metrics": list(METRICS),
            "steps": [s.to_dict() for s in self.steps],
            "independent": [s.to_dict() for s in self.independent],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def to_markdown(self) -> str:
        nodes = max((n for s in self.steps for n in s.node_counts.values()), default=0)
        lines = [
            f"Sanity check for root {self.root}: the weights randomised from the top (cascading) and one layer at a time "
            "(independent); each view's maps compared with the trained model's (1 = unchanged). "
            "|ρ|: Spearman of |map|, ρ: signed Spearman, SSIM and HOG of |map|. Root: the root's maps; "
            f"nodes: the mean over the tree's nodes ({nodes} at most) that have the view.",
        ]
        for mode, steps in (("cascading", self.steps), ("independent", self.independent)):
            if not steps:
                continue
            head = "randomised up to" if mode == "cascading" else "randomised alone"
            lines += [
                "",
                f"{mode.capitalize()} randomisation:",
                "",
                f"| step | {head} | view | root \\|ρ\\| | root ρ | root SSIM | root HOG "
                "| nodes \\|ρ\\| | nodes ρ | nodes SSIM | nodes HOG | children kept |",
                "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for s in steps:
                for view in self.views:
                    root = " | ".join(_fmt(s.root[view][m]) for m in METRICS)
                    nodes_ = " | ".join(_fmt(s.nodes[view][m]) for m in METRICS)
                    lines.append(f"| {s.step} | {s.label} | {view} | {root} | {nodes_} | {100 * s.children_kept:.0f}% |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["mode", "step", "randomised", "view", "of", *METRICS, "nodes", "children_kept", "root_children"])
        for s in [*self.steps, *self.independent]:
            for view in self.views:
                for of, scores in (("root", s.root), ("nodes", s.nodes)):
                    count = 1 if of == "root" else s.node_counts[view]
                    writer.writerow(
                        [s.mode, s.step, "+".join(s.randomised) or "(none: trained)", view, of, *(scores[view][m] for m in METRICS)]
                        + [count, s.children_kept, " ".join(s.root_children)]
                    )
        return buf.getvalue()


def parameter_segments(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> list[list[nn.Module]]:
    """Modules that own parameters, grouped by the chain layer whose output they compute
    (segment i ends at chain layer i; anything after the last chain layer joins the last)."""
    chain = resolve_modules(model, layers)
    index = {id(m): i for i, m in enumerate(chain.values())}
    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    segments: list[list[nn.Module]] = [[] for _ in layers]
    seen: set[int] = set()
    state = {"current": 0}

    def hook(module: nn.Module, inputs, output) -> None:
        if id(module) not in seen and any(True for _ in module.parameters(recurse=False)):
            seen.add(id(module))
            segments[min(state["current"], len(layers) - 1)].append(module)
        if id(module) in index:
            state["current"] = index[id(module)] + 1

    with torch.no_grad(), forward_hooks((module, hook) for module in {id(m): m for m in [*owners, *chain.values()]}.values()):
        model(x)
    return segments


@torch.no_grad()
def randomise_(modules: Sequence[nn.Module], generator: torch.Generator) -> None:
    """Replace each parameter of ``modules`` by Gaussian noise with the parameter's mean and std."""
    for module in modules:
        for p in module.parameters(recurse=False):
            flat = p.detach().double()
            std = float(flat.std()) if p.numel() > 1 else float(flat.abs().mean())
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64) * std + float(flat.mean())
            p.copy_(noise.to(p.dtype))


def view_maps(ev, size: tuple[int, int]) -> dict[str, MapPair | None]:
    """Each sanity view's map of one node's evidence (None where the node or the model has none)."""
    return {
        "guided": MapPair.of(ev.guided) if ev.guided is not None else None,
        "gradient": MapPair.of(ev.gradient) if ev.gradient is not None else None,
        "heatmap": MapPair.of(ev.heat) if ev.heat is not None else None,
        "contribution": MapPair.of(upsampled_contribution(ev, size)) if ev.contribution is not None else None,
    }


_KINDS = ("guided", "heat", "gradient", "contribution")
Maps = list[dict[str, MapPair | None]]


def _all_maps(analysis, paths, rule: str, seed_mode: str) -> Maps:
    size = (int(analysis.record.input.shape[-1]), int(analysis.record.input.shape[-2]))
    return [view_maps(ev, size) for ev in analysis.evidence_many(paths, rule, seed_mode, _KINDS)]


def _compare(trained: Maps, other: Maps) -> tuple[Scores, Scores, dict[str, int]]:
    """Scores of the root (the first path's maps) and the mean over all paths, per view."""
    root: Scores = {}
    nodes: Scores = {}
    counts: dict[str, int] = {}
    for view in SANITY_VIEWS:
        pairs = [(a[view], b[view]) for a, b in zip(trained, other) if a[view] is not None and b[view] is not None]
        rows = [similarities(a, b) for a, b in pairs]
        first = trained[0][view] is not None and other[0][view] is not None
        root[view] = rows[0] if first else {m: math.nan for m in METRICS}
        nodes[view] = {m: _mean([r[m] for r in rows]) for m in METRICS}
        counts[view] = len(rows)
    return root, nodes, counts


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def sanity_check(
    explainer: Explainer,
    image,
    *,
    root: str | Unit | None = None,
    k: int = 3,
    depth: int = 2,
    rule: str = "gradient",
    seed_mode: str = "sum",
    seed: int = 0,
    steps: int | None = None,
    modes: Sequence[str] = MODES,
) -> SanityReport:
    """Cascading and independent randomisation from the top of the chain; ``steps`` limits how many layers
    are randomised (cascading: the top ``steps`` layers in turn; independent: each of them alone)."""
    for mode in modes:
        if mode not in MODES:
            raise OptionError(f"unknown randomisation {mode!r}", f"use {' or '.join(MODES)}")
    if steps is not None and steps < 0:
        raise OptionError(f"steps must be 0 or more, got {steps}", "use --steps 1 or more")
    analysis = explainer.analyze(image)
    root_unit = analysis.resolve_root(root)
    tree = analysis.tree(root=root_unit, k=k, depth=depth, rule=rule, seed_mode=seed_mode, images=False)
    paths = [parse_path(n.id) for n in tree.walk()]
    trained = _all_maps(analysis, paths, rule, seed_mode)
    top = explainer.layers.index(root_unit.layer)
    order = list(reversed(explainer.layers[: top + 1]))[:steps]  # from the root's layer down
    x = analysis.record.input.detach()
    same_root, same_nodes, counts = _compare(trained, trained)
    first = SanityStep(0, "cascading", [], same_root, same_nodes, counts, 1.0, [f"{c.layer}:{c.unit}" for c in tree.root.children])
    report = SanityReport(str(root_unit), list(SANITY_VIEWS), [first])
    generator = torch.Generator().manual_seed(seed)

    def measure(model: nn.Module, step: int, mode: str, randomised: list[str]) -> SanityStep:
        other = _explainer_like(explainer, model).analyze(image)
        root_scores, node_scores, node_counts = _compare(trained, _all_maps(other, paths, rule, seed_mode))
        kept = []
        for node, path in zip(tree.walk(), paths):
            if node.children:
                picked = {s.unit.channel for s in other.expand(path, k, rule, seed_mode).children}
                kept.append(sum(c.unit in picked for c in node.children) / len(node.children))
        children = [f"{c.unit.layer}:{c.unit.channel}" for c in other.expand((root_unit,), k, rule, seed_mode).children]
        # The report's picture rows (cascading): the root and its children as this model picks them.
        shown = None
        if mode == "cascading":
            shown = other.tree(root=root_unit, k=k, depth=min(depth, 1), rule=rule, seed_mode=seed_mode, images=True)
        return SanityStep(
            step, mode, list(randomised), root_scores, node_scores, node_counts, _mean(kept) if kept else 1.0, children, shown
        )

    if "cascading" in modes:
        model = copy.deepcopy(explainer.model)
        segments = dict(zip(explainer.layers, parameter_segments(model, x, explainer.layers)))
        randomised: list[str] = []
        for step, layer in enumerate(order, start=1):
            randomise_(segments[layer], generator)
            randomised.append(layer)
            report.steps.append(measure(model, step, "cascading", randomised))
    if "independent" in modes:
        for step, layer in enumerate(order, start=1):
            model = copy.deepcopy(explainer.model)
            randomise_(dict(zip(explainer.layers, parameter_segments(model, x, explainer.layers)))[layer], generator)
            report.independent.append(measure(model, step, "independent", [layer]))
    first.tree = analysis.tree(root=root_unit, k=k, depth=min(depth, 1), rule=rule, seed_mode=seed_mode, images=True)
    return report


def _explainer_like(explainer: Explainer, model: nn.Module) -> Explainer:
    """An explainer of ``model`` with every other setting of ``explainer`` (device, layouts, caches)."""
    return Explainer(
        model,
        explainer.layers,
        preprocess=explainer.preprocess,
        class_names=explainer.class_names,
        name=explainer.name,
        device=explainer.device,
        cache_bytes=explainer.cache_bytes,
        batch_backward=explainer.batch_backward,
        layouts=explainer.layouts,
        allow_bypass=explainer.allow_bypass,
    )


def contact_sheet(report: SanityReport) -> Figure:
    """The report's picture: the paper's chart for each measure and randomisation, above each cascading
    step's root and children (see reports.charts.sanity_figure)."""
    return sanity_figure(report)


def save_report(report: SanityReport, out_dir: str | os.PathLike[str]) -> FsPath:
    return write_report(out_dir, "sanity", report.to_markdown(), report.to_csv(), figure_png(contact_sheet(report)))


__all__ = ["MODES", "SANITY_VIEWS", "SanityReport", "SanityStep", "parameter_segments", "randomise_", "sanity_check", "spearman"]
