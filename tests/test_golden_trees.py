"""Refactors keep the trees: the five bundled photos give the trees recorded by scripts/golden_trees.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import featuretree as ft
from featuretree.core.samples import sample_path

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_trees.json").read_text())


@pytest.fixture(scope="module")
def explainer():
    return ft.Explainer.from_zoo("efficientnet_lite0")


@pytest.mark.slow
@pytest.mark.parametrize("photo", sorted(GOLDEN["trees"]))
def test_tree_matches_the_recorded_one(explainer, photo):
    tree = explainer.analyze(sample_path(photo)).tree(**GOLDEN["settings"])
    got = [[n.id, n.score, n.share, n.coverage, n.location, n.box] for n in tree.walk()]
    want = GOLDEN["trees"][photo]
    assert [row[0] for row in got] == [row[0] for row in want]  # same units, same order
    for (node, *numbers), (_, *expected) in zip(got, want):
        for value, reference in zip(numbers[:3], expected[:3]):
            assert (value is None and reference is None) or value == pytest.approx(reference, rel=1e-6, abs=1e-6), node
        assert numbers[3:] == expected[3:], node  # strongest position and receptive-field box
