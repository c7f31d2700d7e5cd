"""The architecture matrix: torchvision and timm models (random weights, nothing downloaded) through
every surface. Runs in the second environment that scripts/test.sh builds (PyPI torch, torchvision,
timm); in the main environment, without those libraries, the module is skipped (unless
FEATURETREE_REQUIRE_VISION=1, as scripts/test.sh sets for this run, where a missing library fails).

For each model:
- the chain the discovery proposes has the expected layouts (known per architecture, not detected);
- the engine's scores at two levels equal a float64 reference computed with its own hooks and the
  known channel axis;
- explain writes tree.json and tree.html, ablation verification runs, the explorer API expands a node
  with its pictures, a small exemplar index builds, and no hook is left on any module.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os

import pytest
import torch

if not (importlib.util.find_spec("torchvision") and importlib.util.find_spec("timm")):
    if os.environ.get("FEATURETREE_REQUIRE_VISION"):
        raise RuntimeError("the architecture matrix needs torchvision and timm (scripts/test.sh builds .venv-vision)")
    pytest.skip("torchvision and timm are not installed (the matrix runs in .venv-vision)", allow_module_level=True)

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from featuretree.core.errors import GuidedUndefinedError  # noqa: E402
from featuretree.core.samples import sample_path  # noqa: E402
from featuretree.core.units import Unit  # noqa: E402
from featuretree.exemplars.db import ExemplarDB  # noqa: E402
from featuretree.exemplars.indexer import index_folder  # noqa: E402
from featuretree.loading import load_explainer  # noqa: E402
from featuretree.server import ServerSettings, create_app  # noqa: E402

CF, CL, TOK, VEC = "channels_first", "channels_last", "tokens", "vector"
# Each model's chain layouts as the architecture defines them, input side first.
MATRIX = {
    "torchvision:resnet50": [CF] * 5 + [VEC],
    "torchvision:vgg16_bn": [CF] * 13 + [VEC],
    "torchvision:densenet121": [CF] * 8 + [VEC],
    "torchvision:mobilenet_v3_large": [CF] * 17 + [VEC],
    "torchvision:efficientnet_b0": [CF] * 9 + [VEC],
    "torchvision:convnext_tiny": [CF] * 8 + [VEC],
    "torchvision:regnet_y_400mf": [CF] * 4 + [VEC],
    "torchvision:vit_b_16": [TOK] * 12 + [VEC],
    "torchvision:swin_t": [CL] * 8 + [VEC],
    "timm:vit_small_patch16_224": [TOK] * 12 + [VEC],
    "timm:deit_small_distilled_patch16_224": [TOK] * 12,  # two averaged heads: no single logits module
    "timm:swin_tiny_patch4_window7_224": [CL] * 4 + [VEC],
    "timm:convnext_atto": [CF] * 4 + [VEC],
    "timm:efficientnet_b0": [CF] * 7 + [VEC],
}


def channel_axis(kind: str, dim: int) -> int:
    return 1 if kind in (CF, VEC) else dim - 1


def keep(grad: torch.Tensor, axis: int, channel: int) -> torch.Tensor:
    mask = torch.zeros(grad.shape[axis], dtype=grad.dtype)
    mask[channel] = 1.0
    shape = [1] * grad.dim()
    shape[axis] = -1
    return grad * mask.view(shape)


def reference_levels(model, layers, x, root_channel, child, kinds):
    """Scores of the top chain layer's children and of one child's children, in float64, from a forward
    pass with this test's own hooks and each layer's known channel axis."""
    model = copy.deepcopy(model).double().eval()
    modules = dict(model.named_modules())
    acts = {}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o)) for n in layers]
    try:
        with torch.enable_grad():
            x = x.double().requires_grad_(True)
            model(x)
            top, below, deeper = layers[-1], layers[-2], layers[-3]
            seed = keep(torch.ones_like(acts[top]), channel_axis(kinds[-1], acts[top].dim()), root_channel)
            (d1,) = torch.autograd.grad(acts[top], acts[below], seed, retain_graph=True)
            a1 = channel_axis(kinds[-2], d1.dim())
            level1 = (acts[below] * d1).movedim(a1, -1).reshape(-1, d1.shape[a1]).sum(0)
            (d2,) = torch.autograd.grad(acts[below], acts[deeper], keep(d1, a1, child), retain_graph=True)
            a2 = channel_axis(kinds[-3], d2.dim())
            level2 = (acts[deeper] * d2).movedim(a2, -1).reshape(-1, d2.shape[a2]).sum(0)
    finally:
        for h in handles:
            h.remove()
    return level1.detach(), level2.detach()


def hooks_left(model) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None)
    ]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea",):
        Image.open(sample_path(name)).convert("RGB").save(folder / f"{name}.jpg")
    return folder


@pytest.mark.parametrize("spec", list(MATRIX))
def test_architecture_through_every_surface(spec, photos, tmp_path):
    explainer = load_explainer(spec, None, "cpu", random_weights=True)
    kinds = MATRIX[spec]
    chelsea = Image.open(sample_path("chelsea")).convert("RGB")
    analysis = explainer.analyze(chelsea)
    assert [info.layout.kind for info in analysis.chain] == kinds, [(i.name, repr(i.layout)) for i in analysis.chain]

    # Scores against the float64 reference (float64 engine on a float64 copy: the same function).
    double = load_explainer(spec, ",".join(explainer.layers), "cpu", random_weights=True)
    double.model.double()
    exact = double.analyze(analysis.record.input.detach().double())
    top = explainer.layers[-1]
    root = Unit(top, int(exact.layer_info(top).layout.channel_totals(exact.activation(top))[0].argmax()))
    level1 = exact.contributions((root,))
    child = int(level1.argmax())
    level2 = exact.contributions((root, Unit(explainer.layers[-2], child)))
    ref1, ref2 = reference_levels(double.model, explainer.layers, exact.record.input.detach(), root.channel, child, kinds)
    torch.testing.assert_close(level1.cpu(), ref1, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(level2.cpu(), ref2, rtol=1e-7, atol=1e-9)

    # explain, save, verify.
    tree = analysis.verify(analysis.tree(root=str(root), depth=2, k=2))
    out = tree.save(tmp_path / "tree")
    assert (out / "tree.json").is_file() and (out / "tree.html").stat().st_size > 10_000
    assert any(n.verification is not None for n in tree.walk())
    # The contribution map (the default view) through the layout: the node's own a x delta sums to its score.
    for node in list(tree.walk())[1:]:
        ev = tree.evidence[node.id]
        assert ev.contribution.sum() + ev.contribution_outside == pytest.approx(node.score, rel=1e-6, abs=1e-9)
        assert "contribution" in node.images

    # The explorer's API on this model.
    client = TestClient(create_app(ServerSettings(models=(spec,)), loader=lambda name, device: explainer))
    r = client.get("/api/expand", params={"model": spec, "image": "chelsea", "path": str(root), "k": 2, "view": "heatmap"})
    assert r.status_code == 200, r.text
    assert len(r.json()["children"]) == 2 and all(c["picture"].startswith("data:image/") for c in r.json()["children"])
    r = client.get("/api/expand", params={"model": spec, "image": "chelsea", "path": str(root), "k": 2, "view": "contribution"})
    assert r.status_code == 200 and all(c["picture"].startswith("data:image/jpeg") for c in r.json()["children"]), r.text
    analysis_out = client.get("/api/analysis", params={"model": spec, "image": "chelsea"}).json()
    assert [c["layout"].split(":")[0] for c in analysis_out["chain"]] == kinds
    client.app.state.workspace.close()

    # A small exemplar index, on the top two chain layers: with attention, every stored position's
    # receptive field is one backward pass per image (about 0.15 s each for ViT-B here).
    short = load_explainer(spec, ",".join(explainer.layers[-2:]), "cpu", random_weights=True)
    report = index_folder(photos, tmp_path / "ex.db", short, spec, top_n=1, batch_size=2, progress=False)
    assert report.indexed == 1
    with ExemplarDB(tmp_path / "ex.db") as db:
        assert [rec.name for rec in db.layers()] == explainer.layers[-2:]
        entries = db.exemplars(explainer.layers[-2])
        assert entries and all(0 <= e.box[0] < e.box[2] <= 224 and 0 <= e.box[1] < e.box[3] <= 224 for e in entries)
    assert hooks_left(short.model) == []

    assert hooks_left(explainer.model) == [] and hooks_left(double.model) == []


@pytest.mark.parametrize("spec", list(MATRIX))
def test_check_says_what_each_rule_then_does(spec):
    """`featuretree check` on the matrix: its verdicts against what the engine then does with this model."""
    explainer = load_explainer(spec, None, "cpu", random_weights=True)
    result = explainer.check(speed=False)
    print(result.format())
    # The default chain cuts the network, every layer runs once, the model is in a usable state.
    assert [(row.cuts, row.calls) for row in result.layers] == [(True, 1)] * len(explainer.layers)
    assert result.problems == []
    if spec == "timm:deit_small_distilled_patch16_224":  # two averaged heads: no logits module ends the chain
        assert result.state == ["the chain does not end at the logits: trees start at units of 'blocks.11', not at classes"]
    else:
        assert result.state == []
    analysis = explainer.analyze(Image.open(sample_path("chelsea")).convert("RGB"))
    root = analysis.resolve_root(None)
    for rule in result.rules:
        if rule.verdict == "unavailable":
            with pytest.raises(GuidedUndefinedError):
                analysis.expand((root,), k=2, rule=rule.rule)
        else:
            assert analysis.expand((root,), k=2, rule=rule.rule).children
    # Shared receptive fields land in the explainer's cache, per-image ones do not.
    explainer.receptive_fields.clear()
    analysis.evidence((root, analysis.expand((root,), k=1).children[0].unit), kinds=("box",))
    assert (len(explainer.receptive_fields) > 0) == result.receptive_fields["shared"]
    assert hooks_left(explainer.model) == []


def test_random_weights_are_the_same_every_load_and_leave_the_callers_random_state_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = load_explainer("torchvision:vit_b_16", None, "cpu", random_weights=True)
    after = torch.rand(3)
    b = load_explainer("torchvision:vit_b_16", None, "cpu", random_weights=True)
    assert torch.equal(before, after)
    assert a.weights_fingerprint() == b.weights_fingerprint()
    # torchvision starts the ViT head at zero; random weights draw it small so gradients flow.
    assert a.model.heads.head.weight.abs().sum() > 0


@pytest.mark.parametrize(("spec", "classes"), [("torchvision:resnet18", 10), ("timm:convnext_atto", 7)])
def test_weights_with_another_class_count_build_the_head_to_fit(spec, classes, tmp_path):
    """A checkpoint fine-tuned on N classes loads into the library architecture with an N-way head, and
    the loaded model computes exactly what the fine-tuned module computes."""
    import timm
    import torchvision

    torch.manual_seed(5)
    library, _, name = spec.partition(":")
    if library == "torchvision":
        trained = torchvision.models.get_model(name, weights=None, num_classes=classes)
    else:
        trained = timm.create_model(name, pretrained=False, num_classes=classes)
    trained.eval()
    torch.save({"epoch": 3, "state_dict": trained.state_dict()}, tmp_path / "finetuned.pt")
    explainer = load_explainer(spec, None, "cpu", weights=tmp_path / "finetuned.pt")
    image = Image.open(sample_path("chelsea")).convert("RGB")
    analysis = explainer.analyze(image)
    with torch.no_grad():
        expected = trained(analysis.record.input)
    assert analysis.logits.shape == (classes,)
    torch.testing.assert_close(analysis.logits, expected[0], rtol=1e-5, atol=1e-5)
    assert analysis.class_name(classes - 1) == f"class {classes - 1}"
    # The tree's default root is the predicted class of the new head.
    assert explainer.analyze(image).tree(depth=1, k=2).root.unit == int(expected.argmax())


def test_detectors_and_segmenters_take_layer_roots_and_refuse_class_roots_with_the_reason(tmp_path):
    """A detector (list of dicts out) and a segmenter (dict of maps out) explain from a layer root;
    batched verification stops at the watched layers, so it never feeds a batch to the detection
    stages; a class root names the output it cannot read."""
    from featuretree.core.errors import FeatureTreeError

    image = Image.open(sample_path("chelsea")).convert("RGB")
    for spec in ("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", "torchvision:lraspp_mobilenet_v3_large"):
        explainer = load_explainer(spec, None, "cpu", random_weights=True)
        analysis = explainer.analyze(image)
        assert not analysis.has_classes
        tree = analysis.tree(depth=2, k=2, verify=True)
        assert tree.root.layer == explainer.layers[-1] and len(list(tree.walk())) == 7
        checked = [node.verification for node in tree.walk() if node.verification]
        assert len(checked) == 6 and all(math.isfinite(v["parent_drop"]) for v in checked)
        top = tree.root.children[0].verification
        assert top["parent_drop"] * top["estimate"] > 0  # zeroing the strongest child lowers the root
        with pytest.raises(FeatureTreeError, match="has no classes: its output is (a list|an OrderedDict)"):
            analysis.tree(root="class:1", depth=1)
        assert hooks_left(explainer.model) == []
