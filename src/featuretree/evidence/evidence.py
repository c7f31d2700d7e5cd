"""Input-space evidence for tree nodes: guided backprop, the rule's gradient x input, the strongest
position and its receptive field. Nodes of one layer (siblings, a tree level) share batched passes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..core.errors import check_choice
from ..rules import get_rule
from .receptive_field import Box, Position, receptive_fields

if TYPE_CHECKING:
    from ..analysis.image_analysis import ImageAnalysis
    from ..core.units import Path, Unit

EVIDENCE_KINDS: tuple[str, ...] = ("guided", "heat", "box")


@dataclass(frozen=True)
class NodeEvidence:
    """Input-space evidence for one node; arrays are float32 numpy, HxW or 3xHxW."""

    guided: np.ndarray | None  # path-conditioned guided backprop at the input, pixel units
    heat: np.ndarray | None  # gradient x input summed over colour channels (scoring rule)
    location: Position | None  # (row, col) of strongest evidence in the node's own map
    box: Box | None  # (left, top, right, bottom) in input pixels
    path_gain: float  # product of the original's auto_1 multipliers along the path
    activation_sum: float
    activation_max: float


def path_gain(analysis: ImageAnalysis, path: Path, seed_mode: str = "sum") -> float:
    """The original's auto_1 rescaling: product over the path of |G|_1 / |G[u]|_1 (guided)."""
    gain = 1.0
    for j in range(1, len(path)):
        grad = analysis.layer_gradient(path[:j], "guided", seed_mode)
        layout = analysis.layer_info(path[j].layer).layout
        kept = float(layout.keep_channel(grad, path[j].channel).abs().sum())
        whole = float(grad.abs().sum())
        if kept > 0:
            gain *= whole / kept
    return gain


def strongest_position(analysis: ImageAnalysis, path: Path, backward: str, seed_mode: str) -> Position | None:
    """(row, col) where the node's own path-conditioned contribution a * delta peaks."""
    unit = path[-1]
    layout = analysis.layer_info(unit.layer).layout
    if not layout.spatial:
        return None
    activation, delta = analysis.activation(unit.layer), analysis.delta(path, backward, seed_mode)
    act = sum(sign * layout.unit_map(activation, c) for c, sign in zip(unit.channels, unit.signs))
    contribution = sum(layout.unit_map(activation, c) * layout.unit_map(delta, c) for c in unit.channels)
    if float(contribution.abs().max()) == 0.0:
        contribution = act
    flat = int(contribution.argmax()) if float(contribution.max()) > 0 else int(contribution.abs().argmax())
    return (flat // act.shape[1], flat % act.shape[1])


def evidence_many(
    analysis: ImageAnalysis,
    paths: Sequence[Sequence[Unit]],
    rule: str = "gradient",
    seed_mode: str = "sum",
    kinds: Sequence[str] = EVIDENCE_KINDS,
) -> list[NodeEvidence]:
    """Node evidence for many paths; nodes in the same layer share batched backward passes:
    guided backprop to the input, the rule's gradient to the input, and the receptive fields of
    their strongest positions.

    ``kinds`` picks what to compute ("guided", "heat", "box"): an explorer showing one view pays
    for one backward pass per node, not three.
    """
    backward = get_rule(rule).backward
    for kind in kinds:
        check_choice(kind, EVIDENCE_KINDS, "evidence kind")
    if analysis.guided_problem:  # no guided pictures where guided backprop means nothing
        kinds = [kind for kind in kinds if kind != "guided"]
    paths = [analysis.validate_path(p) for p in paths]
    results: dict[int, NodeEvidence] = {}
    groups: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        groups.setdefault(path[-1].layer, []).append(i)
    std = torch.tensor(analysis.explainer.preprocess.std, device=analysis.record.input.device).view(3, 1, 1)
    x = analysis.record.input.detach()[0]
    for layer, members in groups.items():
        none: list[torch.Tensor | None] = [None] * len(members)
        guided = none
        if "guided" in kinds or ("heat" in kinds and backward == "guided"):
            guided = analysis.backward_many(layer, None, [analysis.delta(paths[i], "guided", seed_mode) for i in members], "guided")
        grads = none
        if "heat" in kinds:
            grads = (
                guided
                if backward == "guided"
                else analysis.backward_many(layer, None, [analysis.delta(paths[i], backward, seed_mode) for i in members], backward)
            )
        locations = [strongest_position(analysis, paths[i], backward, seed_mode) for i in members]
        boxes = receptive_fields(analysis, layer, locations) if "box" in kinds else [None] * len(members)
        for i, g_guided, g_rule, location, box in zip(members, guided, grads, locations, boxes):
            act = analysis.unit_values(paths[i][-1])
            results[i] = NodeEvidence(
                # d objective / d pixel (0..1 units)
                guided=(g_guided[0] / std).float().cpu().numpy() if "guided" in kinds else None,
                heat=(g_rule[0] * x).sum(0).float().cpu().numpy() if g_rule is not None else None,
                location=location,
                box=box,
                path_gain=path_gain(analysis, paths[i], seed_mode) if "guided" in kinds else 1.0,
                activation_sum=float(act.sum()),
                activation_max=float(act.max()),
            )
    return [results[i] for i in range(len(paths))]
