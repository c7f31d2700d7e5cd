"""``ablation``: s_c = J(a) - J(a with channel c zeroed), measured, with J the parent's path objective.

Exact and measured; one batched forward pass per chunk of channels (analysis.interventions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..analysis.interventions import DEFAULT_BATCH, ablation
from .memo import memoised_scores

if TYPE_CHECKING:
    import torch

    from ..analysis.image_analysis import ImageAnalysis
    from ..core.units import Path, Unit


def ablation_scores(analysis: ImageAnalysis, path: Sequence[Unit], seed_mode: str = "sum", batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
    """Measured drop of J_path when each child channel alone is zeroed, float64 [C]."""
    path = analysis.validate_path(path)
    channels = analysis.layer_info(analysis.layer_below(path[-1])).channels
    return ablation(analysis, path, [[c] for c in range(channels)], seed_mode=seed_mode, batch_size=batch_size).parent_drop


class AblationRule:
    name = "ablation"
    summary = "the measured drop of the parent's path objective when the child alone is zeroed"
    backward = "gradient"

    def scores(self, analysis: ImageAnalysis, path: Path, seed_mode: str) -> torch.Tensor:
        return memoised_scores(analysis, self.name, path, seed_mode, lambda: ablation_scores(analysis, path, seed_mode))
