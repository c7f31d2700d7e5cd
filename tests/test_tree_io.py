"""tree.json round-trips; saving is atomic; the notebook view renders."""

from __future__ import annotations

import json

import pytest

import featuretree as ft
from featuretree.core.errors import OptionError
from featuretree.tree.model import SCHEMA_VERSION


def test_round_trip_through_json(toy_explainer, square_image, tmp_path):
    tree = toy_explainer.analyze(square_image).tree(depth=2, negatives=2)
    out = tree.save(tmp_path / "t")
    loaded = ft.FeatureTree.load(out / "tree.json")
    assert loaded == tree
    assert loaded.to_dict() == json.loads((out / "tree.json").read_text())
    assert loaded.version == SCHEMA_VERSION
    node = loaded.find("classifier:0/corners:1/edges:1")
    assert node is not None and node.depth == 2 and node.path == ["classifier:0", "corners:1", "edges:1"]
    assert set(node.images) == {"guided", "guided_original", "heatmap", "contribution", "rf_crop", "rf_box"}
    assert "contribution" in loaded.root.images  # the logit's map: the corners layer's, all channels summed
    for name in node.images.values():
        assert (out / name).is_file()


def test_future_versions_are_refused(toy_explainer, square_image):
    data = toy_explainer.analyze(square_image).tree(depth=1, images=False).to_dict()
    data["version"] = SCHEMA_VERSION + 1
    with pytest.raises(OptionError, match="unsupported tree.json version"):
        ft.FeatureTree.from_dict(data)


def test_saving_into_an_existing_folder_keeps_other_files(toy_explainer, square_image, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    toy_explainer.analyze(square_image).tree(depth=1).save(out)
    assert (out / "mine.txt").read_text() == "keep me"
    assert (out / "tree.json").is_file()
    assert not [p for p in tmp_path.rglob(".featuretree-*")]


def test_notebook_html_is_a_sandboxed_frame(toy_explainer, square_image):
    html = toy_explainer.analyze(square_image).tree(depth=1)._repr_html_()
    assert html.startswith("<iframe srcdoc=") and "FeatureTreeView" in html


def test_public_api_five_lines(square_image):
    tree = ft.explain(square_image, model="toy_squares", depth=2, k=2)
    assert [n.id for n in tree.walk()][:3] == ["classifier:0", "classifier:0/corners:0", "classifier:0/corners:0/edges:0"]


def test_saving_a_smaller_tree_removes_the_old_node_pictures(toy_explainer, square_image, tmp_path):
    analysis = toy_explainer.analyze(square_image)
    analysis.tree(depth=2).save(tmp_path)
    big = sorted(p.name for p in (tmp_path / "images").iterdir())
    analysis.tree(depth=1).save(tmp_path)
    small = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert len(small) < len(big)
    referenced = {name.split("/")[-1] for node in ft.FeatureTree.load(tmp_path / "tree.json").walk() for name in node.images.values()}
    assert set(small) == referenced
