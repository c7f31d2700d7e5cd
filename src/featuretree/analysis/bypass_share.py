"""How much of a parent's first-order evidence goes around the chain layer below it.

Where the chain does not cut the network (accepted with ``allow_bypass``), a node's children are units
of a layer that only part of its evidence passes. Both parts are measured at the input, where every
path starts: the parent's path-conditioned objective has gradient-x-input evidence E = sum(x * dO/dx);
the part through the child layer is sum(x * J^T g), with g the gradient at the child layer and J the
child layer's Jacobian; the rest went around. For a network without biases or curvature (linear)
E is the objective itself and both parts are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.units import Unit

if TYPE_CHECKING:
    from .image_analysis import ImageAnalysis


@dataclass(frozen=True)
class BypassShare:
    share: float  # around / total: may leave [0, 1] when the two parts have opposite signs
    score: float  # the evidence that goes around the child layer (gradient x input)
    total: float  # the parent's whole first-order evidence at the input
    layer: str  # the child layer that the evidence goes around
    source: str  # where the bypass starts: "the input" or an earlier chain layer
    kind: str  # how it joins: "a skip connection (an addition)", ...

    def to_dict(self) -> dict[str, float | str]:
        return {
            "share": self.share,
            "score": self.score,
            "total": self.total,
            "layer": self.layer,
            "source": self.source,
            "kind": self.kind,
        }


def bypass_share(analysis: ImageAnalysis, path: Sequence[Unit], backward: str = "gradient", seed_mode: str = "sum") -> BypassShare | None:
    """The part of ``path``'s evidence that does not pass the chain layer below it; None where that layer is a cut."""
    path = tuple(path)
    bypass = next((b for b in analysis.bypasses if b.layer == path[-1].layer), None)
    if bypass is None:
        return None
    x = analysis.record.input.detach().double()
    whole = analysis.backward(path[-1].layer, None, analysis.delta(path, backward, seed_mode), backward)
    through = analysis.backward(bypass.below, None, analysis.layer_gradient(path, backward, seed_mode), backward)
    total = float((x * whole.double()).sum())
    around = total - float((x * through.double()).sum())
    return BypassShare(around / total if total else 0.0, around, total, bypass.below, bypass.source, bypass.kind)
