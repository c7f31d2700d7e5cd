"""Memoised scores for rules that run their own forward passes (integrated, ablation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..analysis.image_analysis import ImageAnalysis
    from ..core.units import Path


def memoised_scores(analysis: ImageAnalysis, rule: str, path: Path, seed_mode: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` once per (rule, seed mode, path) and analysis, under the model's forward lock:
    such rules put hooks on the shared model (e.g. the explorer's threads)."""
    key = ("scores", rule, seed_mode, tuple(path))
    cached = analysis.memo.get(key)
    if cached is not None:
        return cached
    with analysis.explainer.forward_lock:
        cached = analysis.memo.get(key)  # another thread may have finished it meanwhile
        if cached is not None:
            return cached
        scores = compute()
    analysis.memo.put(key, scores)
    return scores
