"""``gradient``: gradient x activation, the gradient flowing from the root through the path (default)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..analysis.image_analysis import ImageAnalysis
    from ..core.units import Path


class GradientRule:
    """s_c = sum over positions of a_c * g_c, with g the path-conditioned gradient at the layer below,
    taken with this rule's rectifier backward."""

    name = "gradient"
    summary = "gradient x activation, the true gradient through the path"
    backward = "gradient"

    def scores(self, analysis: ImageAnalysis, path: Path, seed_mode: str) -> torch.Tensor:
        child_layer = analysis.layer_below(path[-1])
        act = analysis.activation(child_layer)
        grad = analysis.layer_gradient(path, self.backward, seed_mode)
        return analysis.layer_info(child_layer).layout.channel_totals(act.double() * grad.double())[0]
