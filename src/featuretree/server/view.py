"""Turning what the page shows (root, expanded paths, removed paths) into a FeatureTree for export."""

from __future__ import annotations

from ..engine import Unit
from ..tree import FeatureTree, Node, _node_for, apply_expansion

Path = tuple[Unit, ...]


def build_view_tree(
    workspace,
    model: str,
    image: str,
    root: Path,
    expanded: set[Path],
    removed: set[Path],
    k: int,
    rule: str,
    seed_mode: str,
) -> FeatureTree:
    """The tree the page shows: every expanded node gets its top-k children minus the removed ones.

    Expanded paths that are no longer reachable (e.g. after k changed) are ignored, exactly as
    the page ignores them. Node evidence comes from the workspace cache, so exporting what was
    just looked at costs no new backward passes.
    """
    analysis = workspace.analysis(model, image)
    tree = analysis.tree(root=root[0], k=k, depth=0, rule=rule, seed_mode=seed_mode, images=False)
    max_depth = 0
    frontier: list[tuple[Node, Path]] = [(tree.root, root)]
    while frontier:
        node, path = frontier.pop(0)
        evidence = workspace.evidence(model, image, path, rule, seed_mode)
        tree.evidence[node.id] = evidence
        node.activation_sum, node.activation_max = evidence.activation_sum, evidence.activation_max
        node.location = list(evidence.location) if evidence.location else None
        node.box = list(evidence.box)
        max_depth = max(max_depth, node.depth)
        if path not in expanded:
            continue
        expansion = analysis.expand(path, k, rule, seed_mode)
        apply_expansion(node, expansion)
        for scored in expansion.children:
            child_path = (*path, scored.unit)
            if child_path in removed:
                continue
            child = _node_for(analysis, child_path, scored.score, scored.share)
            node.children.append(child)
            frontier.append((child, child_path))
    tree.settings["depth"] = max_depth
    tree.settings["view"] = "explorer export"
    return tree
