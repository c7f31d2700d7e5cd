"""Batched sibling backward passes give the same trees and pictures as one-at-a-time passes."""

from __future__ import annotations

import numpy as np
import pytest

import featuretree as ft
from featuretree.core.samples import sample_path


def assert_same_trees(a: ft.FeatureTree, b: ft.FeatureTree, atol: float) -> None:
    assert [n.id for n in a.walk()] == [n.id for n in b.walk()]
    for na, nb in zip(a.walk(), b.walk()):
        assert na.box == nb.box and na.location == nb.location
        if na.score is not None:
            assert nb.score == pytest.approx(na.score, rel=1e-6, abs=1e-9)
        ea, eb = a.evidence[na.id], b.evidence[nb.id]
        for field in ("guided", "heat"):
            x, y = getattr(ea, field), getattr(eb, field)
            scale = max(float(np.abs(x).max()), 1e-30)
            np.testing.assert_allclose(x / scale, y / scale, atol=atol, err_msg=f"{na.id} {field}")


@pytest.mark.parametrize("rule", ["gradient", "guided"])
def test_batched_equals_unbatched_on_toy(square_image, rule):
    model = ft.load_model("toy_squares")
    trees = [
        ft.Explainer(model.module, model.default_layers, preprocess=model.preprocess, batch_backward=batched)
        .analyze(square_image)
        .tree(depth=2, rule=rule)
        for batched in (False, True)
    ]
    assert_same_trees(trees[0], trees[1], atol=1e-6)


@pytest.mark.slow
def test_batched_equals_unbatched_on_efficientnet(lite0):
    trees = []
    for batched in (False, True):
        explainer = ft.Explainer(
            lite0.model, lite0.layers, preprocess=lite0.preprocess, class_names=lite0.class_names, batch_backward=batched
        )
        trees.append(explainer.analyze(sample_path("coffee")).tree(depth=2, k=3))
    assert_same_trees(trees[0], trees[1], atol=1e-5)


def test_memoised_expansion_equals_a_fresh_replay(toy_explainer, square_image):
    """Expanding through the memo gives exactly what a fresh analysis computes from the root."""
    warm = toy_explainer.analyze(square_image)
    warm.tree(depth=2)  # fills the memo
    path = (ft.Unit("classifier", 0), ft.Unit("corners", 2))
    fresh = toy_explainer.analyze(square_image)
    assert warm.expand(path).children == fresh.expand(path).children
