"""Expanding a node: rank the units of the layer below by their scores and keep the top k."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..analysis.bypass_share import bypass_share
from ..analysis.interventions import ablation
from ..core.errors import ModelError, OptionError
from ..core.units import Path, Unit, path_id
from ..rules import get_rule, score_children

if TYPE_CHECKING:
    from ..analysis.image_analysis import ImageAnalysis


@dataclass(frozen=True)
class ScoredUnit:
    unit: Unit
    score: float  # signed first-order contribution to the root objective through the path
    share: float  # score / parent's total positive contribution


@dataclass(frozen=True)
class Expansion:
    path: Path
    child_layer: str | None
    children: tuple[ScoredUnit, ...]
    negatives: tuple[ScoredUnit, ...]
    total_positive: float
    total_negative: float
    coverage: float  # share of total_positive covered by the shown children
    leaf_reason: str | None = None
    # Where the chain does not cut (allow_bypass): the share of the parent's evidence that goes around
    # the child layer, so coverage is read as a share of the rest ({"share", "score", "total", "layer", "source", "kind"}).
    bypass: dict[str, float | str] | None = None

    @property
    def rest(self) -> dict[str, float] | None:
        """What the shown children leave out: share and score of the positive total, and the negative total."""
        if self.child_layer is None:
            return None
        shown = sum(c.score for c in self.children)
        return {"share": max(0.0, 1.0 - self.coverage), "score": self.total_positive - shown, "negative": self.total_negative}


def _top(scores: torch.Tensor, count: int, sign: float, total: float, layer: str) -> tuple[ScoredUnit, ...]:
    """The ``count`` strongest units in the direction ``sign``; zero or non-finite scores are never kept."""
    count = min(count, scores.numel())
    if count <= 0:
        return ()
    top_vals, top_idx = (sign * scores).topk(count)
    picked = []
    for v, i in zip(top_vals.tolist(), top_idx.tolist()):
        if v <= 0 or not math.isfinite(v):
            break
        picked.append(ScoredUnit(Unit(layer, int(i)), sign * v, sign * v / total if total else 0.0))
    return tuple(picked)


def check_coverage(coverage: float | None) -> None:
    if coverage is not None and not (0.0 < coverage <= 1.0 and math.isfinite(coverage)):
        raise OptionError(f"coverage must be in (0, 1], got {coverage}", "e.g. --coverage 0.5 keeps children until half the evidence")


def coverage_prefix(children: tuple[ScoredUnit, ...], coverage: float) -> tuple[ScoredUnit, ...]:
    """The smallest prefix of ranked children whose shares sum to at least ``coverage`` (all if none does)."""
    total = 0.0
    for count, child in enumerate(children, start=1):
        total += child.share
        if total >= coverage * (1 - 1e-12):  # shares are rounded floats: 0.5 reached as 0.49999999999999994 counts
            return children[:count]
    return children


def check_rerank(rerank: int | None) -> None:
    if rerank is not None and rerank < 1:
        raise OptionError(f"rerank must be at least 1, got {rerank}", "e.g. --rerank 3 measures the top 3k candidates")


def rerank_candidates(analysis: ImageAnalysis, path: Path, scores: torch.Tensor, count: int, seed_mode: str) -> list[int]:
    """The ``count`` strongest positive candidates under ``scores``, reordered by the measured drop of the
    parent's path objective when each alone is zeroed (one batched pass); those whose removal does not
    lower it are dropped."""
    count = min(count, int((scores > 0).sum()))
    if count == 0:
        return []
    candidates = [int(i) for i in scores.topk(count).indices]
    with analysis.explainer.forward_lock:
        drops = ablation(analysis, path, [[c] for c in candidates], seed_mode=seed_mode).parent_drop
    order = sorted(range(count), key=lambda i: (-float(drops[i]), i))
    return [candidates[i] for i in order if float(drops[i]) > 0]


def expand(
    analysis: ImageAnalysis,
    path: Sequence[Unit],
    k: int = 5,
    rule: str = "gradient",
    seed_mode: str = "sum",
    negatives: int = 0,
    coverage: float | None = None,
    rerank: int | None = None,
) -> Expansion:
    """Rank the units of the layer below ``path[-1]`` by their contribution through the path.

    Keeps the top ``k``; with ``coverage`` F, only the smallest prefix of them whose shares of the
    positive total sum to at least F (at most k: a cap, so a flat layer cannot flood the tree).
    With ``rerank`` N, the top N*k by the rule are measured by ablation and the k whose removal lowers
    the parent's objective most are kept, in that order (their scores stay the rule's)."""
    if k < 1:
        raise OptionError(f"k must be at least 1, got {k}", "use --k 1 or more")
    check_coverage(coverage)
    check_rerank(rerank)
    get_rule(rule)
    path = analysis.validate_path(path)
    if path[-1].layer == analysis.layers[0]:
        return Expansion(path, None, (), (), 0.0, 0.0, 0.0, "first layer of the chain: nothing below to expand")
    scores = score_children(analysis, path, rule, seed_mode).cpu()
    if not torch.isfinite(scores).all():
        raise ModelError(
            f"the scores below {path_id(path)} are not finite (NaN or inf in the model's activations or gradients)",
            "check the model and input for overflow, e.g. run it in float32 or float64",
        )
    total_pos = float(scores.clamp(min=0).sum())
    total_neg = float(scores.clamp(max=0).sum())
    child_layer = analysis.layer_below(path[-1])
    if rerank is not None:
        picked = rerank_candidates(analysis, path, scores, rerank * k, seed_mode)[:k]
        children = tuple(ScoredUnit(Unit(child_layer, c), float(scores[c]), float(scores[c]) / total_pos) for c in picked)
    else:
        children = _top(scores, k, 1.0, total_pos, child_layer)
    if coverage is not None:
        children = coverage_prefix(children, coverage)
    negs = _top(scores, negatives, -1.0, -total_neg, child_layer)
    coverage = sum(c.share for c in children)
    reason = None
    if not children:
        reason = (
            "no candidate's removal lowers this node's objective (measured by --rerank)"
            if rerank is not None and total_pos > 0
            else "no unit below contributes positively through this path (zero gradient)"
        )
    around = bypass_share(analysis, path, get_rule(rule).backward, seed_mode)
    bypass = around.to_dict() if around is not None else None
    return Expansion(path, child_layer, children, negs, total_pos, total_neg, coverage, reason, bypass)
