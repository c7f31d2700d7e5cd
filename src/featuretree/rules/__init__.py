"""Scoring rules: one module per rule, registered here in the order users see them.

``score_children`` is what the tree, the explorer and the reports call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .ablation import AblationRule
from .gradient import GradientRule
from .guided import GuidedRule
from .integrated import IntegratedRule
from .registry import ScoringRule, get_rule, register, registered, rule_names, rules_help, unregister

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from ..analysis.image_analysis import ImageAnalysis
    from ..core.units import Unit

for _rule in (GradientRule(), GuidedRule(), IntegratedRule(), AblationRule()):
    register(_rule)

__all__ = ["ScoringRule", "get_rule", "register", "registered", "rule_names", "rules_help", "score_children", "unregister"]


def score_children(analysis: ImageAnalysis, path: Sequence[Unit], rule: str = "gradient", seed_mode: str = "sum") -> torch.Tensor:
    """Per-channel scores of the layer below the path's end under ``rule``, shape [C] float64."""
    scoring = get_rule(rule)
    path = analysis.validate_path(path)
    analysis.layer_below(path[-1])  # a clear error for first-layer nodes
    return scoring.scores(analysis, path, seed_mode)
