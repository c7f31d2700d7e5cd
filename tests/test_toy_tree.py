"""The hand-set toy net: edges -> corners -> square. Its right tree is known by construction."""

from __future__ import annotations

import math

from featuretree.core.units import Unit
from featuretree.models.toy import CORNER_EDGES


def test_planted_corners_found_in_weight_order(toy_explainer, square_image):
    analysis = toy_explainer.analyze(square_image)
    assert analysis.top_classes(1)[0].name == "square"
    tree = analysis.tree(depth=2, k=5, negatives=1)
    corners = [(c.layer, c.unit) for c in tree.root.children]
    # Weights 4, 3, 2, 1 on four equally active corners; the distractor has a negative weight.
    assert corners == [("corners", 0), ("corners", 1), ("corners", 2), ("corners", 3)]
    assert [e.unit for e in tree.root.negatives] == ["corners:4"]
    assert math.isclose(tree.root.coverage, 1.0, rel_tol=1e-9)


def test_each_corner_is_explained_by_its_two_edges(toy_explainer, square_image):
    tree = toy_explainer.analyze(square_image).tree(depth=2, k=5)
    for corner in tree.root.children:
        edges = [child.unit for child in corner.children]
        assert edges == list(CORNER_EDGES[corner.unit]), f"corner {corner.unit}"
        # The brightness distractor and the other corners' edges never appear.
        assert 4 not in edges


def test_corner_scores_follow_the_planted_weights(toy_explainer, square_image):
    tree = toy_explainer.analyze(square_image).tree(depth=1)
    scores = [c.score for c in tree.root.children]
    ratios = [s / scores[-1] for s in scores]
    for got, want in zip(ratios, (4.0, 3.0, 2.0, 1.0)):
        assert math.isclose(got, want, rel_tol=1e-5)


def test_evidence_box_sits_on_the_corner(toy_explainer, square_image):
    tree = toy_explainer.analyze(square_image).tree(depth=1)
    expected_corner = {0: (8, 8), 1: (23, 8), 2: (8, 23), 3: (23, 23)}  # (x, y) of the drawn square's corners
    for node in tree.root.children:
        left, top, right, bottom = node.box
        x, y = expected_corner[node.unit]
        assert left <= x < right and top <= y < bottom, (node.unit, node.box)
        assert right - left <= 10 and bottom - top <= 10


def test_first_layer_is_a_leaf_with_a_reason(toy_explainer, square_image):
    analysis = toy_explainer.analyze(square_image)
    expansion = analysis.expand((Unit("classifier", 0), Unit("corners", 0), Unit("edges", 0)))
    assert expansion.children == ()
    assert "first layer" in expansion.leaf_reason


def test_zero_gradient_gives_no_children_and_no_nan(toy_explainer):
    from PIL import Image

    black = Image.new("RGB", (32, 32), "black")
    analysis = toy_explainer.analyze(black)
    expansion = analysis.expand((Unit("classifier", 0),), k=5)
    assert expansion.children == ()
    assert expansion.leaf_reason and "zero" in expansion.leaf_reason
    tree = analysis.tree(root="class:0", depth=2)
    for node in tree.walk():
        ev = tree.evidence[node.id]
        assert all(math.isfinite(float(v)) for v in (ev.path_gain, ev.activation_sum, ev.activation_max))
        assert not (ev.guided != ev.guided).any()
