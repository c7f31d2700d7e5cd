"""Turning what the page shows (root, expanded paths, removed paths) into a FeatureTree for export."""

from __future__ import annotations

from ..core.units import Unit
from ..tree.builder import apply_expansion, fill_evidence, node_for
from ..tree.model import FeatureTree, Node

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
    verify: bool = True,
    coverage: float | None = None,
) -> FeatureTree:
    """The tree the page shows: every expanded node gets its top-k children minus the removed ones.

    Expanded paths that are no longer reachable (e.g. after k changed) are ignored, exactly as
    the page ignores them. Node evidence comes from the workspace cache, so exporting what was
    just looked at costs no new backward passes. With ``verify``, every shown edge carries its
    measured ablation effect (``node.verification``) and every expanded node the effect of zeroing
    its shown children together (``verification_all``), from the same cache the page's badges use.
    """
    analysis = workspace.analysis(model, image)
    tree = analysis.tree(root=root[0], k=k, depth=0, rule=rule, seed_mode=seed_mode, images=False)
    max_depth = 0
    frontier: list[tuple[Node, Path]] = [(tree.root, root)]
    while frontier:
        node, path = frontier.pop(0)
        evidence = workspace.evidence(model, image, path, rule, seed_mode)
        tree.evidence[node.id] = evidence
        fill_evidence(node, evidence)
        max_depth = max(max_depth, node.depth)
        if path not in expanded:
            continue
        expansion = analysis.expand(path, k, rule, seed_mode, coverage=coverage)
        apply_expansion(node, expansion)
        for scored in expansion.children:
            child_path = (*path, scored.unit)
            if child_path in removed:
                continue
            child = node_for(analysis, child_path, scored.score, scored.share)
            node.children.append(child)
            frontier.append((child, child_path))
        if verify and node.children:
            # All top-k children when none was removed: the same batched pass (and cache entry) as the page's badges.
            shown = [c.unit for c in node.children]
            everyone = [s.unit.channel for s in expansion.children]
            result = workspace.verification(model, image, path, everyone if shown == everyone else shown, seed_mode)
            checks = {check.channels[0]: check for check in result.children}
            for child in node.children:
                child.verification = checks[child.unit].to_dict()
            node.verification_all = (result.joint or result.children[0]).to_dict()
    tree.settings["depth"] = max_depth
    tree.settings["view"] = "explorer export"
    if coverage is not None:
        tree.settings["coverage"] = coverage
    if verify:
        tree.settings["verified"] = True
    return tree


def add_exemplar_grids(workspace, model: str, tree: FeatureTree, files: dict[str, bytes]) -> int:
    """Put the exemplar grid of every exported node's unit into ``files`` (one per unit) and point
    ``node.images["exemplars"]`` at it. Needs the server's exemplar database for ``model``; returns the count."""
    info = workspace.exemplars
    if info is None or info.model != model:
        return 0
    names: dict[tuple[str, int], str] = {}
    for node in tree.walk():
        if node.layer not in info.layers or node.contrast is not None:  # a contrast is two units, neither its own
            continue
        key = (node.layer, node.unit)
        if key not in names:
            names[key] = f"exemplars/u{len(names):04d}.png"
            files[names[key]] = workspace.exemplar_png(model, node.layer, node.unit)
        node.images["exemplars"] = names[key]
    return len(names)
