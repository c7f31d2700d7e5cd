"""Edge verification by intervention: zero child channels in a real forward pass and measure.

For a node N and a set S of channels of the chain layer below it, ``analysis.interventions.ablate``
measures parent_drop(S) (of N's path objective, whose first-order estimate is gradient x activation)
and root_drop(S). Here those measurements are set beside the estimates and written onto trees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ..analysis.interventions import DEFAULT_BATCH, ablate
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

    def to_dict(self) -> dict[str, float]:
        data = asdict(self)
        data.pop("channels")
        return data


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
        parent_drop, root_drop, parent_value, root_value = ablate(
            analysis, path, sets, seed_mode=seed_mode, batch_size=batch_size, share_prefix=share_prefix
        )
    checks = [
        EdgeCheck((c,), float(estimates[c]), float(parent_drop[i]), float(root_drop[i]), parent_value, root_value)
        for i, c in enumerate(channels)
    ]
    together = None
    if len(sets) > len(channels):
        together = EdgeCheck(
            tuple(channels), float(estimates[channels].sum()), float(parent_drop[-1]), float(root_drop[-1]), parent_value, root_value
        )
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
