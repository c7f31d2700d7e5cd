"""No entry point leaves a hook or a torch-function mode behind on the user's model, also when it raised."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import featuretree as ft
from featuretree.aggregate.run import aggregate_folder
from featuretree.aggregate.worker import TreeSettings
from featuretree.cli import main
from featuretree.core.errors import FeatureTreeError
from featuretree.exemplars.indexer import index_folder
from featuretree.loading import ModelSpec
from featuretree.reports.evaluate import evaluate_folder
from featuretree.reports.layers import list_layers
from featuretree.reports.sanity import sanity_check
from featuretree.rules import rule_names
from featuretree.server import ServerSettings, create_app

from .conftest import all_hooks_removed, square_picture


@pytest.fixture
def toy() -> ft.Explainer:
    return ft.Explainer.from_zoo("toy_squares")


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    square_picture().save(images / "square.png")
    square_picture(box=(4, 6, 20, 22)).save(images / "other.png")
    return images


@pytest.mark.parametrize("rule", rule_names())
def test_explain_with_every_rule_and_verify(toy, rule):
    analysis = toy.analyze(square_picture())
    analysis.tree(depth=2, k=2, rule=rule, verify=True)
    assert all_hooks_removed(toy.model)


def test_reports_and_index(toy, folder, tmp_path):
    evaluate_folder(toy, folder, k=2, parents=1, random_draws=2, curve_steps=4)
    assert all_hooks_removed(toy.model)
    sanity_check(toy, square_picture(), k=2, depth=1)
    assert all_hooks_removed(toy.model)
    list_layers(toy.model, toy.preprocess.size)
    assert all_hooks_removed(toy.model)
    index_folder(folder, tmp_path / "ex.db", toy, "toy_squares", top_n=2, batch_size=2, workers=0, progress=False)
    assert all_hooks_removed(toy.model)
    spec = ModelSpec("toy_squares")
    aggregate_folder(folder, tmp_path / "agg", toy, spec, TreeSettings(root="class:0", depth=2, k=2), progress=False)
    assert all_hooks_removed(toy.model)
    with pytest.raises(FeatureTreeError):  # a bad setting fails on the blank check, hooks gone too
        aggregate_folder(folder, tmp_path / "agg2", toy, spec, TreeSettings(root="corners:99", depth=1), progress=False)
    assert all_hooks_removed(toy.model)


def test_server_requests_including_failing_ones(toy, tmp_path):
    client = TestClient(create_app(ServerSettings(models=("toy_squares",)), loader=lambda name, device: toy))
    png = tmp_path / "s.png"
    square_picture().save(png)
    image = client.post("/api/images", files={"file": ("s.png", png.read_bytes(), "image/png")}).json()["image"]
    q = {"model": "toy_squares", "image": image}
    for route, params, status in [
        ("/api/children", {"path": "classifier:0", "rule": "ablation"}, 200),
        ("/api/picture.png", {"path": "classifier:0/corners:0", "view": "heatmap"}, 200),
        ("/api/verify", {"path": "classifier:0"}, 200),
        ("/api/export", {"root": "classifier:0", "verify": "true"}, 200),
        ("/api/verify", {"path": "classifier:0/corners:0/edges:0"}, 400),  # a first-layer node: nothing to ablate
        ("/api/children", {"path": "classifier:0/corners:9"}, 400),  # out of range
    ]:
        response = client.get(route, params={**q, **params})
        assert response.status_code == status, (route, response.text)
        assert all_hooks_removed(toy.model), route
    for units, status in [(["corners:0", "edges:2"], 200), (["edges:0", "corners:99"], 400)]:
        response = client.post("/api/intervene", json={**q, "units": units, "scale": 0.0})
        assert response.status_code == status, response.text
        assert all_hooks_removed(toy.model), units


def test_entry_points_that_raise(toy, tmp_path, capsys):
    analysis = toy.analyze(square_picture())
    with pytest.raises(FeatureTreeError):
        analysis.tree(root="corners:99")
    with pytest.raises(FeatureTreeError):
        analysis.tree(depth=1, rule="integrated", root="classifier:0", k=0)
    assert all_hooks_removed(toy.model)
    photo = tmp_path / "s.png"
    square_picture().save(photo)
    assert main(["explain", str(photo), "--model", "toy_squares", "--root", "edges:0", "--depth", "1", "--out", str(tmp_path / "o")]) == 2
    assert main(["sanity", str(photo), "--model", "toy_squares", "--root", "nolayer:0", "--out", str(tmp_path / "s")]) == 2
    capsys.readouterr()
