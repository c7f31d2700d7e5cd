"""The extra child-scoring rules (featuretree.rules) and their wiring into rule=."""

from __future__ import annotations

import pytest
import torch

import featuretree as ft
from featuretree.analysis.interventions import ablation
from featuretree.core.units import Unit
from featuretree.models.toy import CORNER_EDGES
from featuretree.rules.ablation import ablation_scores
from featuretree.rules.integrated import integrated_gradients

from .conftest import square_picture


@pytest.fixture
def toy() -> ft.Analysis:
    return ft.Explainer.from_zoo("toy_squares").analyze(square_picture())


def test_rules_agree_where_the_net_is_linear(toy):
    root = toy.resolve_root()
    gxa = toy.contributions((root,), "gradient")
    torch.testing.assert_close(toy.contributions((root,), "integrated"), gxa, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(toy.contributions((root,), "ablation"), gxa, rtol=1e-5, atol=1e-7)


def test_integrated_gradients_completeness(toy):
    # sum_c IG_c = J(a) - J(0): the corner's value (its ReLU is off at a zero baseline).
    root = toy.resolve_root()
    path = (root, Unit("corners", 0))
    value = float(ablation(toy, path, [[0]]).parent_value)
    fine = integrated_gradients(toy, path, steps=256)
    coarse = integrated_gradients(toy, path, steps=4)
    assert float(fine.sum()) == pytest.approx(value, rel=1e-2)  # ReLU kinks: error ~ 1/steps
    assert abs(float(fine.sum()) - value) <= abs(float(coarse.sum()) - value)


def test_ablation_scores_are_single_channel_drops(toy):
    root = toy.resolve_root()
    path = (root, Unit("corners", 3))
    scores = ablation_scores(toy, path)
    drops = torch.cat([ablation(toy, path, [[c]]).parent_drop for c in range(scores.numel())])
    torch.testing.assert_close(scores, drops)


@pytest.mark.parametrize("rule", ["integrated", "ablation"])
def test_new_rules_find_the_planted_tree(toy, rule):
    tree = toy.tree(depth=2, k=5, rule=rule, negatives=1, images=False)
    assert [c.unit for c in tree.root.children] == [0, 1, 2, 3]
    assert [e.unit for e in tree.root.negatives] == ["corners:4"]
    for corner in tree.root.children:
        assert [e.unit for e in corner.children] == list(CORNER_EDGES[corner.unit])
    assert tree.settings["rule"] == rule


def test_new_rules_render_pictures_with_the_true_gradient(toy):
    root = toy.resolve_root()
    path = (root, Unit("corners", 1))
    for rule in ("integrated", "ablation"):
        ev = toy.evidence(path, rule)
        reference = toy.evidence(path, "gradient")
        assert (ev.heat == reference.heat).all()


def test_unknown_rule_is_a_clear_error(toy):
    with pytest.raises(ft.FeatureTreeError, match="unknown rule 'shap'.*integrated"):
        toy.expand((toy.resolve_root(),), rule="shap")
