"""The merged graph, coverage-driven children and the tree's completeness, against independent
computations: float64 Jacobian scores for the coverage prefixes, a recount over the tree's own nodes
for the graph."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

import featuretree as ft
from featuretree.core.errors import OptionError
from featuretree.core.units import Unit
from featuretree.tree.model import FeatureTree

from .test_scores_reference import make_net, reference_scores


def _analysis(kind: str = "residual", seed: int = 0):
    torch.manual_seed(seed)
    net = make_net(kind)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    return net, x, ft.Explainer(net, ["0", "1", "2", "3"], preprocess=ft.Preprocess(size=16)).analyze(x)


@pytest.mark.parametrize("coverage", [0.05, 0.3, 0.6, 0.95, 1.0])
def test_coverage_children_are_the_shortest_prefix_of_the_float64_ranking_that_reaches_the_share(coverage):
    net, x, analysis = _analysis()
    root = int(analysis.logits.argmax())
    k = 4
    reference = reference_scores(net, x, [root])[0]
    positive = reference.clamp(min=0)
    ranked = [int(i) for i in reference.argsort(descending=True) if reference[i] > 0]
    shares = [float(positive[i] / positive.sum()) for i in ranked]
    expected, running = [], 0.0
    for channel, share in zip(ranked[:k], shares[:k]):
        expected.append(channel)
        running += share
        if running >= coverage - 1e-12:
            break
    got = analysis.expand((Unit("3", root),), k=k, coverage=coverage)
    assert [c.unit.channel for c in got.children] == expected
    assert got.coverage == pytest.approx(sum(shares[: len(expected)]), rel=1e-9)
    tree = analysis.tree(depth=2, k=k, coverage=coverage, images=False)
    assert [c.unit for c in tree.root.children] == expected and tree.settings["coverage"] == coverage


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.01, math.nan])
def test_coverage_outside_0_1_is_refused(bad):
    _, _, analysis = _analysis()
    with pytest.raises(OptionError, match="coverage must be in"):
        analysis.tree(depth=1, coverage=bad, images=False)


def test_graph_nodes_are_the_distinct_units_and_edges_sum_the_tree_edges_they_merge(tmp_path):
    _, _, analysis = _analysis("residual", seed=3)
    tree = analysis.tree(depth=3, k=3, images=False)
    nodes = list(tree.walk())
    graph = tree.graph()
    # Recount from the nodes: a unit is the last step of a path.
    units = defaultdict(list)
    for node in nodes:
        units[node.path[-1]].append(node.id)
    assert {n["id"] for n in graph["nodes"]} == set(units) and len(graph["nodes"]) == len(units)
    assert len(units) < len(nodes), "a 3-level tree of 3 children over 5-6 channels must repeat units"
    for entry in graph["nodes"]:
        assert sorted(entry["paths"]) == sorted(units[entry["id"]])
        copies = [tree.find(p) for p in entry["paths"]]
        assert entry["depth"] == copies[0].depth and all(c.layer == entry["layer"] for c in copies)
        if entry["depth"]:
            assert entry["score"] == pytest.approx(sum(c.score for c in copies), rel=1e-12)
    scores, totals, counts = defaultdict(float), defaultdict(float), defaultdict(int)
    for node in nodes:
        if node.children:  # every shown copy of the parent unit that shows children
            totals[node.path[-1]] += node.total_positive
        for child in node.children:
            key = (node.path[-1], child.path[-1])
            scores[key] += child.score
            counts[key] += 1
    assert {(e["source"], e["target"]) for e in graph["edges"]} == set(scores)
    outgoing = defaultdict(float)
    for edge in graph["edges"]:
        key = (edge["source"], edge["target"])
        assert edge["score"] == pytest.approx(scores[key], rel=1e-12) and edge["paths"] == counts[key]
        assert edge["share"] == pytest.approx(scores[key] / totals[edge["source"]], rel=1e-12)
        outgoing[edge["source"]] += edge["share"]
    assert max(outgoing.values()) <= 1 + 1e-12  # a unit passes on at most all of its evidence
    # Saved and loaded, the tree gives the same graph and completeness (both derived from the nodes).
    tree.save(tmp_path / "out", html=False)
    loaded = FeatureTree.load(tmp_path / "out" / "tree.json")
    assert loaded.to_dict() == tree.to_dict()
    assert loaded.to_dict()["graph"] == graph


def test_completeness_composes_the_shares_down_each_path():
    _, _, analysis = _analysis("plain", seed=1)
    tree = analysis.tree(depth=2, k=2, images=False)
    complete = tree.completeness()
    assert complete["levels"][0] == pytest.approx(tree.root.coverage, rel=1e-12)
    # Level 2: each child's share of the root times each of its children's share of it (their coverage).
    assert complete["levels"][1] == pytest.approx(sum(c.share * c.coverage for c in tree.root.children), rel=1e-12)
    assert complete["leaves"] == pytest.approx(complete["levels"][1], rel=1e-12)  # every leaf is at depth 2
    assert 0 < complete["leaves"] <= complete["levels"][0] <= 1
    # A leaf left at depth 1 (its children removed) counts with its own share.
    tree.root.children[1].children = []
    partial = tree.completeness()
    first = tree.root.children[0]
    assert partial["leaves"] == pytest.approx(first.share * first.coverage + tree.root.children[1].share, rel=1e-12)
    assert analysis.tree(depth=0, images=False).completeness() is None


def test_rerank_keeps_the_candidates_whose_hand_measured_removal_lowers_the_parent_most():
    net, x, analysis = _analysis("residual", seed=2)
    root = analysis.resolve_root()
    k, n = 2, 2
    gradient = analysis.contributions((root,))
    candidates = [int(i) for i in gradient.topk(n * k).indices if gradient[i] > 0]

    def logit_without(channel: int) -> float:
        def zero(module, inputs, output):
            output = output.clone()
            output[:, channel] = 0.0
            return output

        handle = net[2].register_forward_hook(zero)
        try:
            with torch.no_grad():
                return float(net(x)[0, root.channel])
        finally:
            handle.remove()

    with torch.no_grad():
        before = float(net(x)[0, root.channel])
    drops = {c: before - logit_without(c) for c in candidates}
    expected = sorted((c for c in candidates if drops[c] > 0), key=lambda c: -drops[c])[:k]
    got = analysis.expand((root,), k=k, rerank=n)
    assert [c.unit.channel for c in got.children] == expected
    assert [c.score for c in got.children] == [pytest.approx(float(gradient[c])) for c in expected]  # scores stay the rule's
    tree = analysis.tree(depth=2, k=k, rerank=n, images=False)
    assert [c.unit for c in tree.root.children] == expected and tree.settings["rerank"] == n
    with pytest.raises(OptionError, match="rerank must be at least 1"):
        analysis.expand((root,), rerank=0)


def test_graph_of_a_hand_made_tree_with_a_repeated_parent():
    """P appears under two roots' children with positive total 10 each; copy 1 shows C (5) and D (4), copy 2
    shows C (5) and E (4): of P's 20, C carries 10 (50 %), D and E 4 each (20 %)."""
    from featuretree.tree.model import Node

    def node(path, score, total=None, children=()):
        layer, unit = path[-1].rsplit(":", 1)
        return Node(
            id="/".join(path), path=list(path), layer=layer, unit=int(unit), depth=len(path) - 1, score=score,
            share=None, total_positive=total, expanded=bool(children), children=list(children),
        )  # fmt: skip

    p1 = node(("r:0", "a:1", "p:7"), 3.0, 10.0, [node(("r:0", "a:1", "p:7", "c:1"), 5.0), node(("r:0", "a:1", "p:7", "c:2"), 4.0)])
    p2 = node(("r:0", "a:2", "p:7"), 2.0, 10.0, [node(("r:0", "a:2", "p:7", "c:1"), 5.0), node(("r:0", "a:2", "p:7", "c:3"), 4.0)])
    root = node(("r:0",), None, 20.0, [node(("r:0", "a:1"), 6.0, 12.0, [p1]), node(("r:0", "a:2"), 4.0, 8.0, [p2])])
    tree = FeatureTree(model={}, image={}, top_classes=[], settings={}, root=root)
    graph = tree.graph()
    shares = {(e["source"], e["target"]): e["share"] for e in graph["edges"]}
    assert shares[("p:7", "c:1")] == pytest.approx(0.5) and shares[("p:7", "c:2")] == pytest.approx(0.2)
    assert shares[("p:7", "c:3")] == pytest.approx(0.2) and shares[("r:0", "a:1")] == pytest.approx(6 / 20)
    p7 = next(n for n in graph["nodes"] if n["id"] == "p:7")
    assert p7["score"] == pytest.approx(5.0) and p7["paths"] == ["r:0/a:1/p:7", "r:0/a:2/p:7"]
    assert next(n for n in graph["nodes"] if n["id"] == "c:1")["score"] == pytest.approx(10.0)
