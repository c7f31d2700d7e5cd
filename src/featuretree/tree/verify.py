"""Edge verification by intervention: zero child channels in a real forward pass and measure.

For a node N and a set S of channels of the chain layer below it, ``analysis.interventions.ablation``
measures parent_drop(S) (of N's path objective, whose first-order estimate is gradient x activation)
and root_drop(S). Here those measurements are set beside the estimates and written onto trees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..analysis.interventions import DEFAULT_BATCH, ablation
from ..core.units import Unit, parse_path
from ..rules import score_children

if TYPE_CHECKING:
    from ..analysis.image_analysis import ImageAnalysis
    from .model import FeatureTree


@dataclass(frozen=True)
class EdgeCheck:
    """Measured effect of zeroing one child (or a set of children) beside its estimate."""

    channels: tuple[int, ...]
    estimate: float  # gradient x activation (sum over the channels) through the path
    parent_drop: float  # J_path(x) - J_path(x with the channels zeroed)
    root_drop: float  # root objective(x) - root objective(x with the channels zeroed)
    parent_value: float  # J_path(x), the scale of parent_drop
    root_value: float
    # What the unit does, in words: the classes whose logits fall most when it is zeroed on this image,
    # strongest first, each {"index", "name", "drop", "logit", "probability", "probability_after"}
    # (logit before; drop = logit before - after); only classes whose probability falls too. Among
    # those, ranking by the logit drop is ranking by the relative drop of the probability: the softmax's
    # normaliser changes the same for every class.
    classes: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("channels")
        data["classes"] = [dict(c) for c in self.classes]
        return data


CLASS_EFFECTS = 3  # classes named per unit


def class_effects(analysis: ImageAnalysis, drops: torch.Tensor, count: int = CLASS_EFFECTS) -> tuple[dict[str, Any], ...]:
    """The ``count`` classes whose logits fall most, from one row of logit drops: only classes whose logit
    and probability both fall (when the top class loses most, the runners-up can gain probability even
    though their logits fall too; those are not "lowered")."""
    logits = analysis.logits.double().cpu()
    before, after = logits.softmax(0), (logits - drops).softmax(0)
    lowered = (drops > 0) & (after < before)
    values, indices = torch.where(lowered, drops, torch.full_like(drops, -math.inf)).topk(min(count, drops.numel()))
    return tuple(
        {
            "index": int(i),
            "name": analysis.class_name(int(i)),
            "drop": float(v),
            "logit": float(logits[i]),
            "probability": float(before[i]),
            "probability_after": float(after[i]),
        }
        for v, i in zip(values, indices)
        if math.isfinite(float(v))
    )


def verify_children(
    analysis: ImageAnalysis,
    path: Sequence[Unit],
    channels: Sequence[int],
    *,
    seed_mode: str = "sum",
    batch_size: int = DEFAULT_BATCH,
    share_prefix: bool = True,
    joint: bool = True,
) -> tuple[list[EdgeCheck], EdgeCheck | None]:
    """Ablate each child channel alone and (with ``joint``, for two or more) all of them together,
    in one batched pass; each measured drop sits beside its gradient x activation estimate."""
    channels = [int(c) for c in channels]
    sets = [[c] for c in channels] + ([channels] if joint and len(channels) > 1 else [])
    # The ablation hooks sit on the shared model: no other forward pass may run meanwhile.
    with analysis.explainer.forward_lock:
        estimates = score_children(analysis, path, "gradient", seed_mode)
        measured = ablation(
            analysis,
            path,
            sets,
            seed_mode=seed_mode,
            batch_size=batch_size,
            share_prefix=share_prefix,
            logits=analysis.has_classes and analysis.logits_layer is not None,
        )
    p, r, pv, rv = measured.parent_drop, measured.root_drop, measured.parent_value, measured.root_value

    def effects(row: int) -> tuple[dict[str, Any], ...]:
        return class_effects(analysis, measured.logit_drops[row]) if measured.logit_drops is not None else ()

    checks = [EdgeCheck((c,), float(estimates[c]), float(p[i]), float(r[i]), pv, rv, effects(i)) for i, c in enumerate(channels)]
    together = None
    if len(sets) > len(channels):
        together = EdgeCheck(tuple(channels), float(estimates[channels].sum()), float(p[-1]), float(r[-1]), pv, rv, effects(-1))
    return checks, together


def verify_edges(
    analysis: ImageAnalysis,
    path: Sequence[Unit],
    children: Sequence[Unit | int],
    *,
    seed_mode: str = "sum",
    batch_size: int = DEFAULT_BATCH,
    share_prefix: bool = True,
) -> list[EdgeCheck]:
    """Ablate each child alone (batched) and return its measured drops beside its gradient x activation."""
    channels = [c if isinstance(c, int) else c.channel for c in children]
    checks, _ = verify_children(
        analysis, path, channels, seed_mode=seed_mode, batch_size=batch_size, share_prefix=share_prefix, joint=False
    )
    return checks


def verify_tree(analysis: ImageAnalysis, tree: FeatureTree, *, batch_size: int = DEFAULT_BATCH) -> FeatureTree:
    """Fill ``node.verification`` for every non-root node (its edge from the parent) and
    ``node.verification_all`` on every expanded node (all shown children zeroed together). One
    batched forward pass per expanded node."""
    seed_mode = tree.settings.get("seed_mode", "sum")
    for node in tree.walk():
        if not node.children:
            continue
        checks, together = verify_children(
            analysis, parse_path(node.id), [child.unit for child in node.children], seed_mode=seed_mode, batch_size=batch_size
        )
        for child, check in zip(node.children, checks):
            child.verification = check.to_dict()
        node.verification_all = (together or checks[0]).to_dict()  # one child: zeroing "all" is zeroing it
    tree.settings["verified"] = True
    return tree
