"""``guided``: gradient x activation with guided backprop's rectifier rule, as the 2015 original did."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .gradient import gradient_x_activation

if TYPE_CHECKING:
    import torch

    from ..analysis.image_analysis import ImageAnalysis
    from ..core.units import Path


class GuidedRule:
    name = "guided"
    summary = "the original's guided backprop (negative gradients stopped at every rectifier)"
    backward = "guided"

    def scores(self, analysis: ImageAnalysis, path: Path, seed_mode: str) -> torch.Tensor:
        return gradient_x_activation(analysis, path, self.backward, seed_mode)
