"""Contrastive roots ("why A rather than B"): the objective is unit A minus unit B of one layer.

Every score is linear in the root's seed, so each level of a contrastive tree must equal the
difference of the two single roots' levels, computed independently with float64 Jacobians."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

import featuretree as ft
from featuretree.core.errors import UnitError
from featuretree.core.units import Unit
from featuretree.tree.model import FeatureTree

from .test_scores_reference import make_net, reference_scores


@pytest.mark.parametrize("kind", ["plain", "residual"])
def test_contrastive_scores_equal_the_difference_of_two_float64_references(kind):
    net = make_net(kind)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    analysis = ft.Explainer(net, ["0", "1", "2", "3"], preprocess=ft.Preprocess(size=16)).analyze(x)
    first, second = (int(i) for i in analysis.logits.argsort(descending=True)[:2])
    root = analysis.resolve_root(f"3:{first}-3:{second}")
    assert root == Unit("3", first, second)
    child = analysis.expand((root,), k=3).children[0].unit
    grandchild = analysis.expand((root, child), k=3).children[0].unit
    path = [child.channel, grandchild.channel]
    ref_a, ref_b = reference_scores(net, x, [first, *path]), reference_scores(net, x, [second, *path])
    got = [analysis.contributions(p) for p in ((root,), (root, child), (root, child, grandchild))]
    for level, (g, a, b) in enumerate(zip(got, ref_a, ref_b)):
        torch.testing.assert_close(g.cpu(), a - b, rtol=1e-9, atol=1e-12, msg=f"level {level}")
    # The root objective, its seed and the verification's root value are the difference too.
    seed = analysis.seed(root)
    torch.testing.assert_close(seed, analysis.seed(Unit("3", first)) - analysis.seed(Unit("3", second)))
    tree = analysis.tree(root=root, depth=1, k=2, verify=True, images=False)
    logits = analysis.activation("3")[0]  # float64, like the net
    difference = float(logits[first] - logits[second])
    assert tree.root.children[0].verification["root_value"] == pytest.approx(difference, rel=1e-9)


def test_contrastive_root_reads_from_text_names_both_sides_and_round_trips(tmp_path):
    net = make_net("plain")
    explainer = ft.Explainer(net, ["0", "1", "2", "3"], preprocess=ft.Preprocess(size=16), class_names=["ant", "bee", "cat", "dog"])
    analysis = explainer.analyze(torch.randn(1, 3, 16, 16, dtype=torch.float64))
    tree = analysis.tree(root="class:cat-class:1", depth=2, k=2)
    assert (tree.root.unit, tree.root.contrast, tree.root.label) == (2, 1, "cat − bee")
    assert tree.root.id == "3:2-3:1" and all(node.path[0] == "3:2-3:1" for node in tree.walk())
    tree.save(tmp_path / "out", html=False)
    again = FeatureTree.load(tmp_path / "out" / "tree.json")
    assert again.to_dict() == tree.to_dict()
    # The root's own numbers are the contrast's: logit 2 minus logit 1.
    logits = analysis.activation("3")[0]
    assert tree.root.activation_sum == pytest.approx(float(logits[2] - logits[1]), rel=1e-9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("class:2-class:2", "contrasts a class with itself"),
        ("3:1-3:1", "contrasts a unit with itself"),
        ("3:1-2:0", "cannot contrast units of two layers"),
        ("3:1-3:9", "unit 9 is out of range"),
        ("class:1-class:dragon", "unknown class 'dragon'"),
    ],
)
def test_bad_contrastive_roots_get_one_clear_error(text, message):
    net = make_net("plain")
    explainer = ft.Explainer(net, ["0", "1", "2", "3"], preprocess=ft.Preprocess(size=16), class_names=["ant", "bee", "cat", "dog"])
    analysis = explainer.analyze(torch.randn(1, 3, 16, 16, dtype=torch.float64))
    with pytest.raises(UnitError, match=message):
        analysis.resolve_root(text)


def test_explorer_api_and_export_take_a_contrastive_root():
    from fastapi.testclient import TestClient

    from featuretree.models.toy import SQUARE_CLASSES
    from featuretree.models.zoo import load_model
    from featuretree.server import ServerSettings, create_app

    from .server_helpers import square_png

    client = TestClient(create_app(ServerSettings(models=("toy_squares",))))
    image = client.post("/api/images", files={"file": ("square.png", square_png(), "image/png")}).json()["image"]
    base = {"model": "toy_squares", "image": image}
    node = client.get("/api/node", params={**base, "path": "class:0-class:1"}).json()
    assert (node["id"], node["unit"], node["contrast"]) == ("classifier:0-classifier:1", 0, 1)
    assert node["label"] == f"{SQUARE_CLASSES[0]} − {SQUARE_CLASSES[1]}"
    expanded = client.get("/api/expand", params={**base, "path": node["id"], "k": 2}).json()
    # The same scores as the engine's, computed here without the server.
    toy = load_model("toy_squares")
    explainer = ft.Explainer(toy.module, toy.default_layers, preprocess=toy.preprocess, class_names=toy.class_names)
    expected = explainer.analyze(Image.open(io.BytesIO(square_png()))).contributions((Unit("classifier", 0, 1),))
    assert [c["unit"] for c in expanded["children"]] == [int(i) for i in expected.argsort(descending=True)[:2]]
    for child in expanded["children"]:
        assert child["score"] == pytest.approx(float(expected[child["unit"]]), rel=1e-6)
    params = {**base, "root": node["id"], "open": [node["id"]], "k": 2, "format": "json"}
    exported = client.get("/api/export", params=params).json()
    assert (exported["root"]["unit"], exported["root"]["contrast"]) == (0, 1) and len(exported["root"]["children"]) == 2


def test_a_contrast_is_only_a_root():
    net = make_net("plain")
    analysis = ft.Explainer(net, ["0", "1", "2", "3"], preprocess=ft.Preprocess(size=16)).analyze(
        torch.randn(1, 3, 16, 16, dtype=torch.float64)
    )
    with pytest.raises(UnitError, match="only a root can be one"):
        analysis.validate_path((Unit("3", 0), Unit("2", 1, 2)))
    with pytest.raises(UnitError, match="is a contrast, not a unit to scale"):
        analysis.intervene(["2:1-2:2"])
