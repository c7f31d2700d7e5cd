"""Building a tree from an analysis: breadth-first expansion, one tree level (one layer) at a time."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from ..analysis.image_analysis import SEED_MODES
from ..core.errors import OptionError, check_choice
from ..core.units import Path, Unit, path_id
from ..evidence.evidence import NodeEvidence, evidence_many
from ..rules import get_rule
from .expansion import Expansion, check_coverage, check_rerank, expand
from .model import Edge, FeatureTree, Node
from .verify import verify_tree

if TYPE_CHECKING:
    from ..analysis.image_analysis import ImageAnalysis


def node_for(analysis: ImageAnalysis, path: Path, score: float | None, share: float | None) -> Node:
    unit = path[-1]
    return Node(
        id=path_id(path),
        path=[str(u) for u in path],
        layer=unit.layer,
        unit=unit.channel,
        contrast=unit.contrast,
        depth=len(path) - 1,
        label=analysis.unit_label(unit),
        score=score,
        share=share,
    )


def fill_evidence(node: Node, evidence: NodeEvidence) -> None:
    """Copy the evidence's numbers (activation, location, box) onto the node."""
    node.activation_sum = evidence.activation_sum
    node.activation_max = evidence.activation_max
    node.location = list(evidence.location) if evidence.location else None
    node.box = list(evidence.box) if evidence.box else None


def apply_expansion(node: Node, expansion: Expansion) -> None:
    node.expanded = True
    node.coverage = expansion.coverage
    node.total_positive = expansion.total_positive
    node.total_negative = expansion.total_negative
    node.leaf_reason = expansion.leaf_reason
    node.negatives = [Edge(str(s.unit), s.score, s.share) for s in expansion.negatives]
    node.rest = expansion.rest
    node.bypass = expansion.bypass


def _empty_tree(analysis: ImageAnalysis, root_unit: Unit, settings: dict) -> FeatureTree:
    return FeatureTree(
        model={
            "name": analysis.explainer.name,
            "preprocess": analysis.explainer.preprocess.to_dict(),
            "chain": [{"name": c.name, "type": c.type, "shape": list(c.shape)} for c in analysis.chain],
            "rectifiers": analysis.record.rectifier_count,
        },
        image={
            "source": os.path.basename(analysis.image.source),
            "original_size": list(analysis.image.original_size),
            "size": [analysis.image.picture.width, analysis.image.picture.height],
        },
        top_classes=[asdict(c) for c in analysis.top_classes(5)],
        settings=settings,
        root=node_for(analysis, (root_unit,), None, None),
        picture=analysis.image.picture,
    )


def build_tree(
    analysis: ImageAnalysis,
    root=None,
    *,
    k: int = 5,
    depth: int = 3,
    rule: str = "gradient",
    seed_mode: str = "sum",
    negatives: int = 0,
    images: bool = True,
    progress: bool = False,
    verify: bool = False,
    coverage: float | None = None,
    rerank: int | None = None,
) -> FeatureTree:
    """Expand breadth-first from ``root`` to ``depth`` levels below it, keeping ``k`` children each.

    ``verify=True`` also measures every edge by ablation (see tree.verify)."""
    if k < 1:
        raise OptionError(f"k must be at least 1, got {k}", "use --k 1 or more")
    if depth < 0:
        raise OptionError(f"depth must be 0 or more, got {depth}", "use --depth 0 for the root alone")
    check_coverage(coverage)
    check_rerank(rerank)
    if negatives < 0:
        raise OptionError(f"negatives must be 0 or more, got {negatives}", "use --negatives 0 to hide them")
    backward = get_rule(rule).backward
    check_choice(seed_mode, SEED_MODES, "seed mode")
    root_unit = analysis.resolve_root(root)
    below = analysis.layers.index(root_unit.layer)
    if depth > below:
        raise OptionError(
            f"depth {depth} is deeper than the chain: root layer {root_unit.layer!r} has {below} layer(s) below it",
            f"use --depth {below} or less, or add layers with --layers",
        )
    settings = {"k": k, "depth": depth, "rule": rule, "seed_mode": seed_mode, "negatives": negatives}
    if coverage is not None:
        settings["coverage"] = coverage
    if rerank is not None:
        settings["rerank"] = rerank
    tree = _empty_tree(analysis, root_unit, settings)
    total = sum(k**level for level in range(depth + 1))
    frontier: list[tuple[Node, Path]] = [(tree.root, (root_unit,))]
    with tqdm(total=total, desc="explaining", unit="node", disable=not progress, leave=False) as bar:
        while frontier:
            next_frontier = []
            # One level of a tree is one layer: its nodes share batched backward passes.
            if images:
                for (node, _), evidence in zip(frontier, evidence_many(analysis, [p for _, p in frontier], rule, seed_mode)):
                    tree.evidence[node.id] = evidence
                    fill_evidence(node, evidence)
            if depth > frontier[0][0].depth:
                analysis.prefetch_layer_gradients([p for _, p in frontier], backward, seed_mode)
            for node, path in frontier:
                if not images:
                    act = analysis.unit_values(path[-1])
                    node.activation_sum, node.activation_max = float(act.sum()), float(act.max())
                if node.depth < depth:
                    expansion = expand(analysis, path, k, rule, seed_mode, negatives, coverage, rerank)
                    apply_expansion(node, expansion)
                    for scored in expansion.children:
                        child_path = path + (scored.unit,)
                        child = node_for(analysis, child_path, scored.score, scored.share)
                        node.children.append(child)
                        next_frontier.append((child, child_path))
                bar.update(1)
            frontier = next_frontier
    if verify:
        verify_tree(analysis, tree)
    return tree
