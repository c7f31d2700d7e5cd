"""Evidence for tree nodes: guided backprop, the rule's gradient x input, the node's own contribution
map at its layer, the strongest position and its receptive field. Nodes of one layer (siblings, a tree
level) share batched passes."""

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

# What a tree's nodes carry by default; "gradient" (the rule's input gradient itself, 3xHxW) is asked for
# only by the sanity check, which compares it between models.
EVIDENCE_KINDS: tuple[str, ...] = ("guided", "heat", "box", "contribution")
ALL_EVIDENCE_KINDS: tuple[str, ...] = (*EVIDENCE_KINDS, "gradient")


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
    # The node's own path-conditioned contribution a * delta at its layer, float64 over the layer's image
    # grid [rows, cols] (tokens: the patch grid). It sums to the node's score, less ``contribution_outside``:
    # the part at positions without a place in the image (prefix tokens). A vector node's map is at the layer
    # below, summed over its channels (see ``contribution_map``); ``contribution_layer`` says which layer.
    contribution: np.ndarray | None = None
    contribution_outside: float = 0.0
    contribution_layer: str | None = None
    contribution_patches: bool = False  # each grid position is a patch square (tokens): drawn as squares, not smoothed
    gradient: np.ndarray | None = None  # the rule's gradient at the input, 3xHxW, pixel units (sanity check only)


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
    activation, gradient = analysis.activation(unit.layer), _unit_gradient(analysis, path, backward, seed_mode)
    # A contrastive root reads two channels: its value is the first's minus the second's.
    act = sum(sign * layout.unit_map(activation, c) for c, sign in zip(unit.channels, unit.signs))
    contribution = sum(layout.unit_map(activation, c) * layout.unit_map(gradient, c) for c in unit.channels)
    if float(contribution.abs().max()) == 0.0:
        contribution = act
    flat = int(contribution.argmax()) if float(contribution.max()) > 0 else int(contribution.abs().argmax())
    return (flat // act.shape[1], flat % act.shape[1])


def contribution_map(analysis: ImageAnalysis, path: Path, backward: str, seed_mode: str) -> tuple[np.ndarray | None, float, str | None]:
    """The node's own a * delta at its layer over the image grid (float64), what positions outside the grid
    add (prefix tokens), and the layer it is drawn at. Free once the node or its parent is expanded: delta is
    memoised.

    A node of a vector layer (a logit) has no positions; its map is the one at the layer below, every
    channel's a * delta summed (Grad-CAM's map, with the gradient per position): where its evidence is.
    It sums to the sum of all its children's scores. None where that layer is a vector too, or the first.
    """
    unit = path[-1]
    layout = analysis.layer_info(unit.layer).layout
    if layout.spatial:
        act, delta = analysis.activation(unit.layer), _unit_gradient(analysis, path, backward, seed_mode)
        # One channel at a time, then float64: converting the whole layer would cost more than the map.
        # (A contrastive root has two channels; its delta carries the signs.)
        total = sum(float((layout.unit_values(act, c).double() * layout.unit_values(delta, c).double()).sum()) for c in unit.channels)
        grid = sum(layout.unit_map(act, c).double() * layout.unit_map(delta, c).double() for c in unit.channels).cpu().numpy()
        return grid, total - float(grid.sum()), unit.layer
    index = analysis.layers.index(unit.layer)
    below = analysis.layers[index - 1] if index > 0 else None
    if below is None or not analysis.layer_info(below).layout.spatial:
        return None, 0.0, None
    info = analysis.layer_info(below)
    terms = analysis.activation(below).double() * analysis.layer_gradient(path, backward, seed_mode).double()
    grid = info.layout.grid_values(terms)[0].sum(0).reshape(info.layout.grid(info.shape)).cpu().numpy()
    return grid, float(terms.sum()) - float(grid.sum()), below


def _unit_gradient(analysis: ImageAnalysis, path: Path, backward: str, seed_mode: str) -> torch.Tensor:
    """A tensor whose ``path[-1]`` channel is delta(path)'s: the memoised gradient below the parent, read
    without the copy that masks the other channels (delta itself)."""
    if len(path) == 1:
        return analysis.delta(path, backward, seed_mode)
    return analysis.layer_gradient(path[:-1], backward, seed_mode)


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

    ``kinds`` picks what to compute ("guided", "heat", "box", "contribution", "gradient"): an explorer
    showing one view pays for one backward pass per node, not three, and for none with "contribution".
    """
    backward = get_rule(rule).backward
    for kind in kinds:
        check_choice(kind, ALL_EVIDENCE_KINDS, "evidence kind")
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
        if "heat" in kinds or "gradient" in kinds:
            grads = (
                guided
                if backward == "guided"
                else analysis.backward_many(layer, None, [analysis.delta(paths[i], backward, seed_mode) for i in members], backward)
            )
        locations = [strongest_position(analysis, paths[i], backward, seed_mode) for i in members]
        boxes = receptive_fields(analysis, layer, locations) if "box" in kinds else [None] * len(members)
        for i, g_guided, g_rule, location, box in zip(members, guided, grads, locations, boxes):
            act = analysis.unit_values(paths[i][-1])
            contribution, outside, drawn_at = (
                contribution_map(analysis, paths[i], backward, seed_mode) if "contribution" in kinds else (None, 0.0, None)
            )
            results[i] = NodeEvidence(
                # d objective / d pixel (0..1 units)
                guided=(g_guided[0] / std).float().cpu().numpy() if "guided" in kinds else None,
                heat=(g_rule[0] * x).sum(0).float().cpu().numpy() if g_rule is not None and "heat" in kinds else None,
                location=location,
                box=box,
                path_gain=path_gain(analysis, paths[i], seed_mode) if "guided" in kinds else 1.0,
                activation_sum=float(act.sum()),
                activation_max=float(act.max()),
                contribution=contribution,
                contribution_outside=outside,
                contribution_layer=drawn_at,
                contribution_patches=drawn_at is not None and analysis.layer_info(drawn_at).layout.kind == "tokens",
                gradient=(g_rule[0] / std).float().cpu().numpy() if g_rule is not None and "gradient" in kinds else None,
            )
    return [results[i] for i in range(len(paths))]
