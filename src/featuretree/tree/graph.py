"""The merged graph of a tree: each distinct unit once, carrying all of its incoming edges.

A tree repeats a unit under every path that reaches it (a hub of the layer below can appear under
most parents). The graph merges those copies:

- a node per distinct ``layer:unit`` (the root keeps its own id, a contrast included), with the tree
  paths that reach it and the sum of their scores: the first-order evidence for the root that flows
  through the unit along the shown paths (path-conditioned flows are disjoint, so they add up);
- an edge per distinct (parent unit, child unit), with the summed score of the tree edges it merges
  and its share: that score over the summed positive totals of every shown copy of the parent unit
  that has shown children, i.e. the part of the evidence below the parent unit that goes on through
  the child unit (so the shares of a unit's outgoing edges sum to at most 1).

It is derived from the nodes alone, so a saved tree's graph is the loaded tree's graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import FeatureTree, Node


def unit_id(node: Node) -> str:
    return node.path[-1]


def merged_graph(tree: FeatureTree) -> dict[str, Any]:
    """``{"nodes": [...], "edges": [...]}``, nodes in tree order (breadth first), edges by source then score."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: dict[tuple[str, str], dict[str, Any]] = {}
    parent_totals: dict[str, float] = {}  # per parent unit, over its copies with shown children
    frontier = [tree.root]
    while frontier:  # breadth first: a unit's entry is made at its shallowest copy
        below = []
        for node in frontier:
            key = unit_id(node)
            entry = nodes.setdefault(
                key,
                {"id": key, "layer": node.layer, "unit": node.unit, "label": node.label, "depth": node.depth, "paths": [], "score": 0.0},
            )
            entry["paths"].append(node.id)
            entry["score"] += node.score or 0.0
            if node.children:
                parent_totals[key] = parent_totals.get(key, 0.0) + (node.total_positive or 0.0)
            for child in node.children:
                edge_key = (key, unit_id(child))
                edge = edges.setdefault(edge_key, {"source": key, "target": unit_id(child), "score": 0.0, "paths": 0})
                edge["score"] += child.score or 0.0
                edge["paths"] += 1
            below.extend(node.children)
        frontier = below
    for entry in nodes.values():
        if entry["depth"] == 0:
            entry["score"] = None  # the root is the objective itself, not a contribution to it
    ordered = []
    for edge in edges.values():
        total = parent_totals[edge["source"]]
        ordered.append({**edge, "share": edge["score"] / total if total > 0 else 0.0})
    order = {key: i for i, key in enumerate(nodes)}
    ordered.sort(key=lambda e: (order[e["source"]], -e["score"]))
    return {"nodes": list(nodes.values()), "edges": ordered}


def completeness(tree: FeatureTree) -> dict[str, Any] | None:
    """How much of the root's positive evidence the shown tree accounts for.

    A shown node carries its share of its parent's positive evidence times what its parent carries of
    the root's (1 at the root): shares compose down each path, so nothing is counted twice and the
    figures stay fractions of the root's evidence even where first-order contributions are not
    conserved between layers (biases, rectifier thresholds). ``levels[d - 1]``: the sum over the shown
    nodes at depth d (level 1 is the root's coverage); ``leaves``: the sum over the shown nodes
    without shown children, whatever their depth. None before the root is expanded.
    """
    if not tree.root.expanded or not tree.root.total_positive or tree.root.total_positive <= 0:
        return None
    per_depth: dict[int, float] = {}
    leaves = 0.0
    for node, carried in carried_shares(tree):
        if node.depth == 0:
            continue
        per_depth[node.depth] = per_depth.get(node.depth, 0.0) + carried
        if not node.children:
            leaves += carried
    return {"leaves": leaves, "levels": [per_depth[d] for d in sorted(per_depth)]}


def carried_shares(tree: FeatureTree) -> list[tuple[Node, float]]:
    """Every shown node (root first, breadth first) with the fraction of the root's positive evidence it
    carries: the product of the shares along its path (1 at the root)."""
    out: list[tuple[Node, float]] = []
    frontier = [(tree.root, 1.0)]
    while frontier:
        out.extend(frontier)
        frontier = [(child, carried * (child.share or 0.0)) for node, carried in frontier for child in node.children]
    return out
