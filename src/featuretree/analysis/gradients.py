"""Path-conditioned gradients, memoised.

For a path (root first), delta(path) is the gradient of the root objective at the last unit's
layer, where the flow was masked at every node on the path to that node's channel. A child c of
node N then scores s_c = sum over positions of a_c * g_c, with g = d(delta(path) . a_N) / d a_child.
Each expansion costs one backward step from the parent's layer: the step below is memoised.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..core.errors import check_choice
from ..core.units import Path, Unit

if TYPE_CHECKING:
    from .image_analysis import ImageAnalysis

# Rectifier backwards a path may be conditioned with (the capture's "linear" mode is geometry only).
PATH_BACKWARDS: tuple[str, ...] = ("gradient", "guided")


class PathGradients:
    """delta(path) and the gradient one chain layer below it, memoised in the analysis's memo."""

    def __init__(self, analysis: ImageAnalysis) -> None:
        # A proxy, not a reference: the analysis owns this object, and a cycle would keep each image's
        # activations and graph alive until the garbage collector runs (memory grew with every image).
        self.analysis = weakref.proxy(analysis)

    def delta(self, path: Path, backward: str, seed_mode: str) -> torch.Tensor:
        """Path-conditioned gradient at the last unit's layer, masked to its channel."""
        check_choice(backward, PATH_BACKWARDS, "backward rule")
        if len(path) == 1:
            return self.analysis.seed(path[0], seed_mode)
        below = self.layer_gradient(path[:-1], backward, seed_mode)
        return self.analysis.layer_info(path[-1].layer).layout.keep_channel(below, path[-1].channel)

    def layer_gradient(self, path: Path, backward: str, seed_mode: str) -> torch.Tensor:
        """Gradient at the chain layer below the path's last unit."""
        key = ("layer", backward, seed_mode, path)
        cached = self.analysis.memo.get(key)
        if cached is not None:
            return cached
        lower = self.analysis.layer_below(path[-1])
        grad = self.analysis.backward(path[-1].layer, lower, self.delta(path, backward, seed_mode), backward)
        self.analysis.memo.put(key, grad)
        return grad

    def prefetch(self, paths: Sequence[Sequence[Unit]], backward: str, seed_mode: str) -> None:
        """Fill the memo for many nodes' expansions at once: nodes of one layer (siblings, a tree
        level) share one batched backward pass when the explainer batches."""
        analysis = self.analysis
        groups: dict[str, list[Path]] = {}
        for path in map(tuple, paths):
            if path[-1].layer != analysis.layers[0] and analysis.memo.get(("layer", backward, seed_mode, path)) is None:
                groups.setdefault(path[-1].layer, []).append(path)
        for layer, members in groups.items():
            lower = analysis.layer_below(members[0][-1])
            grads = analysis.backward_many(layer, lower, [self.delta(p, backward, seed_mode) for p in members], backward)
            for path, grad in zip(members, grads):
                analysis.memo.put(("layer", backward, seed_mode, path), grad)

    def input_gradient(self, path: Path, backward: str, seed_mode: str) -> torch.Tensor:
        """Path-conditioned gradient at the input tensor, [3, H, W]."""
        return self.analysis.backward(path[-1].layer, None, self.delta(path, backward, seed_mode), backward)[0]
