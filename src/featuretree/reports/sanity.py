"""Model-randomisation sanity check (after Adebayo et al., 2018): do the trees depend on the weights?

The weights are re-drawn segment by segment from the top (cascading): step 1 randomises the
parameters that compute the top chain layer, step 2 also those of the layer below, and so on.
Each parameter tensor is replaced by Gaussian noise with its own mean and standard deviation
(batch-norm running statistics are kept). After each step the same paths are re-explained and
compared with the trained model's:

- ``guided_rank``: Spearman rank correlation of |guided backprop| (summed over colours) per node,
  averaged over the original tree's nodes (1 = the picture does not depend on the weights);
- ``heat_rank``: the same for the gradient x input heatmap;
- ``children_kept``: the share of each expanded node's children that the randomised model still
  picks for the same path, averaged over expanded nodes.
"""

from __future__ import annotations

import copy
import csv
import io
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
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
from ..tree.model import FeatureTree
from .charts import figure_png, sanity_figure


@dataclass
class SanityStep:
    step: int
    randomised: list[str]  # chain layers whose computing parameters are random at this step
    guided_rank: float
    heat_rank: float
    children_kept: float
    root_children: list[str]
    tree: FeatureTree | None = field(default=None, repr=False, compare=False)

    def row(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("tree")
        data["randomised"] = "+".join(self.randomised) if self.randomised else "(none: trained)"
        data["root_children"] = " ".join(self.root_children)
        return data


def _fmt(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.3f}"


@dataclass
class SanityReport:
    root: str
    steps: list[SanityStep]

    def to_markdown(self) -> str:
        lines = [
            f"Sanity check for root {self.root}: weights randomised from the top (cascading).",
            "",
            "| step | randomised up to | guided rank corr | heatmap rank corr | children kept | root's children |",
            "|---:|---|---:|---:|---:|---|",
        ]
        for s in self.steps:
            upto = s.randomised[-1] if s.randomised else "(trained model)"
            lines.append(
                f"| {s.step} | {upto} | {_fmt(s.guided_rank)} | {_fmt(s.heat_rank)} | {100 * s.children_kept:.0f}% | {' '.join(s.root_children)} |"
            )
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        rows = [s.row() for s in self.steps]
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two arrays; 0 when either is constant.

    Ties get their average rank: with order-broken ties, the many exact zeros that two maps share
    (letterbox padding, dead channels) would get identical ranks and inflate the correlation.
    """
    from scipy.stats import rankdata

    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


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


def _node_maps(analysis, path, rule: str, seed_mode: str) -> tuple[np.ndarray, np.ndarray]:
    ev = analysis.evidence(path, rule, seed_mode)
    # No guided map where guided backprop is undefined for the model (its rank correlation is then NaN).
    return (np.abs(ev.guided).sum(0) if ev.guided is not None else None), ev.heat


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
) -> SanityReport:
    """Cascading randomisation from the top of the chain; ``steps`` limits how many layers are randomised."""
    analysis = explainer.analyze(image)
    root_unit = analysis.resolve_root(root)
    tree = analysis.tree(root=root_unit, k=k, depth=depth, rule=rule, seed_mode=seed_mode, images=False)
    nodes = [(n, parse_path(n.id)) for n in tree.walk()]
    originals = {n.id: _node_maps(analysis, path, rule, seed_mode) for n, path in nodes}
    top = explainer.layers.index(root_unit.layer)
    order = list(reversed(explainer.layers[: top + 1]))  # from the root's layer down
    if steps is not None:
        if steps < 0:
            raise OptionError(f"steps must be 0 or more, got {steps}", "use --steps 1 or more")
        order = order[:steps]
    model = copy.deepcopy(explainer.model)
    segments = dict(zip(explainer.layers, parameter_segments(model, analysis.record.input.detach(), explainer.layers)))
    generator = torch.Generator().manual_seed(seed)
    report = SanityReport(
        str(root_unit), [SanityStep(0, [], 1.0, 1.0, 1.0, [str(c.layer) + ":" + str(c.unit) for c in tree.root.children], tree)]
    )
    randomised: list[str] = []
    for step, layer in enumerate(order, start=1):
        randomise_(segments[layer], generator)
        randomised.append(layer)
        noisy = Explainer(
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
        other = noisy.analyze(image)
        guided, heat, kept = [], [], []
        for node, path in nodes:
            g, h = _node_maps(other, path, rule, seed_mode)
            guided.append(spearman(originals[node.id][0], g) if g is not None else float("nan"))
            heat.append(spearman(originals[node.id][1], h))
            if node.children:
                picked = {s.unit.channel for s in other.expand(path, k, rule, seed_mode).children}
                kept.append(sum(c.unit in picked for c in node.children) / len(node.children))
        other_tree = other.tree(root=root_unit, k=k, depth=depth, rule=rule, seed_mode=seed_mode, images=True)
        report.steps.append(
            SanityStep(
                step,
                list(randomised),
                float(np.mean(guided)),
                float(np.mean(heat)),
                float(np.mean(kept)) if kept else 1.0,
                [f"{c.layer}:{c.unit}" for c in other_tree.root.children],
                other_tree,
            )
        )
    report.steps[0].tree = analysis.tree(root=root_unit, k=k, depth=min(depth, 1), rule=rule, seed_mode=seed_mode, images=True)
    return report


def contact_sheet(report: SanityReport) -> Figure:
    """The report's picture: similarity per step above each step's root and children (see reports.charts.sanity_figure)."""
    return sanity_figure(report)


def save_report(report: SanityReport, out_dir: str | os.PathLike[str]) -> FsPath:
    return write_report(out_dir, "sanity", report.to_markdown(), report.to_csv(), figure_png(contact_sheet(report)))
