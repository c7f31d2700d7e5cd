"""The cut check: a chain whose layers do not cut the network is refused (or, allowed, warned about)
with the two layers, the source and the kind of the bypass named."""

from __future__ import annotations

import warnings

import pytest
import torch

import featuretree as ft
from featuretree.capture.cuts import ChainCutError
from featuretree.cli import main
from featuretree.core.errors import BypassWarning
from featuretree.core.images import Preprocess
from tests.bypass_models import DenseNetLike, InceptionLike, LinearSkip, ResNetLike, seeded

PLANTED = [
    # (net, chain, the layer that is bypassed, the layer that receives the bypass, source, kind, block suggested)
    (
        ResNetLike,
        ["layer1.0.conv1", "layer2", "fc"],
        "layer1.0.conv1",
        "layer2",
        "the input",
        "a skip connection (an addition)",
        "layer1.0",
    ),
    (
        ResNetLike,
        ["stem", "layer1.1.conv2", "layer2", "fc"],
        "layer1.1.conv2",
        "layer2",
        "stem",
        "a skip connection (an addition)",
        "layer1.1",
    ),
    (InceptionLike, ["stem", "mixed.branch1", "head", "fc"], "mixed.branch1", "head", "stem", "a concatenation", "mixed"),
    (DenseNetLike, ["stem", "dense.layer1", "transition", "fc"], "dense.layer1", "transition", "stem", "a concatenation", "dense"),
]
CUTTING = [
    (ResNetLike, ["stem", "layer1.0", "layer1", "layer2", "fc"]),
    (ResNetLike, ["stem", "layer1.0.conv1", "layer1.0.conv2"]),  # inside one block, before the skip joins
    (InceptionLike, ["stem", "mixed", "head", "fc"]),
    (DenseNetLike, ["stem", "dense", "transition", "fc"]),
]


def explainer(net, chain, **kw) -> ft.Explainer:
    return ft.Explainer(seeded(net()), chain, preprocess=Preprocess(size=32), **kw)


def image() -> torch.Tensor:
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("net", "chain", "below", "layer", "source", "kind", "block"), PLANTED)
def test_planted_bypass_is_refused_with_both_layers_named(net, chain, below, layer, source, kind, block):
    with pytest.raises(ChainCutError) as caught:
        explainer(net, chain).analyze(image())
    bypass = caught.value.bypass
    assert (bypass.layer, bypass.below, bypass.source, bypass.kind, bypass.block) == (layer, below, source, kind, block)
    message = str(caught.value)
    assert "\n" not in message
    assert f"chain layer {layer!r} also receives input that bypasses {below!r}" in message
    assert f"use the enclosing block {block!r} instead of {below!r}" in message
    assert "--allow-bypass" in message


@pytest.mark.parametrize(("net", "chain", "below", "layer", "source", "kind", "block"), PLANTED)
def test_allow_bypass_turns_the_error_into_one_warning(net, chain, below, layer, source, kind, block):
    ex = explainer(net, chain, allow_bypass=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        first = ex.analyze(image())
        ex.analyze(image())  # the same explainer warns once per pair of layers
    bypassing = [w for w in seen if issubclass(w.category, BypassWarning)]
    assert len(bypassing) == 1
    assert f"{layer!r} also receives input that bypasses {below!r}" in str(bypassing[0].message)
    assert [(b.layer, b.below) for b in first.bypasses] == [(layer, below)]


@pytest.mark.parametrize(("net", "chain"), CUTTING)
def test_a_chain_that_cuts_gives_no_warning(net, chain):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        analysis = explainer(net, chain).analyze(image())
    assert analysis.bypasses == []


def test_the_suggested_block_cuts():
    """Following the advice (the enclosing block instead of the inner conv) gives a chain that cuts."""
    with pytest.raises(ChainCutError) as caught:
        explainer(ResNetLike, ["layer1.0.conv1", "layer2", "fc"]).analyze(image())
    fixed = ["layer1.0.conv1", "layer2", "fc"]
    fixed[0] = caught.value.bypass.block
    assert explainer(ResNetLike, fixed).analyze(image()).bypasses == []


def test_bypass_from_an_earlier_chain_layer_is_named():
    ex = ft.Explainer(seeded(LinearSkip()), ["a", "b", "out"], preprocess=Preprocess(size=8), allow_bypass=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BypassWarning)
        analysis = ex.analyze(torch.rand(1, 3, 8, 8))
    assert [(b.layer, b.below, b.source) for b in analysis.bypasses] == [("b", "a", "the input"), ("out", "b", "a")]


def test_a_parallel_branch_that_never_reaches_the_layer_above(tmp_path):
    """Chain layers in two parallel branches: the upper one does not receive the lower one at all."""
    with pytest.raises(ChainCutError, match=r"bypasses 'mixed.branch1': from chain layer 'stem', through a parallel path"):
        explainer(InceptionLike, ["stem", "mixed.branch1", "mixed.branch2"]).analyze(image())


def _model_file(tmp_path) -> str:
    path = tmp_path / "resnetlike.py"
    path.write_text(
        "from tests.bypass_models import ResNetLike, seeded\n"
        "from featuretree import ZooModel, Preprocess\n"
        "def build():\n"
        "    return ZooModel('resnetlike', seeded(ResNetLike()), Preprocess(size=32), [f'c{i}' for i in range(10)],"
        " ['stem', 'layer1', 'layer2', 'fc'], 'a planted residual net')\n"
    )
    return f"{path}:build"


def test_cli_refuses_a_chain_that_does_not_cut_and_allow_bypass_warns(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    spec = _model_file(tmp_path)
    args = ["ablate", "--model", spec, "--layers", "layer1.0.conv1,layer2,fc", "--units", "layer2:0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "featuretree: error: chain layer 'layer2' also receives input that bypasses 'layer1.0.conv1'" in err
    assert main([*args, "--allow-bypass"]) == 0
    captured = capsys.readouterr()
    warning_lines = [line for line in captured.err.splitlines() if line.startswith("featuretree: warning:")]
    assert len(warning_lines) == 1 and "bypasses 'layer1.0.conv1'" in warning_lines[0]
    assert "root fc:" in captured.out


@pytest.mark.slow
def test_default_chain_of_lite0_cuts():
    ex = ft.Explainer.from_zoo("efficientnet_lite0")
    assert ex.analyze(torch.rand(1, 3, 224, 224)).bypasses == []


# ----- the bypass share (allow_bypass) ----------------------------------------------------------


def linear_analysis():
    ex = ft.Explainer(seeded(LinearSkip(), seed=3), ["a", "b", "out"], preprocess=Preprocess(size=8), allow_bypass=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BypassWarning)
        return ex.analyze(torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2)))


def test_bypass_share_equals_the_closed_form_on_a_linear_net():
    """a = A x, b = B a + S x, out = C b + T a, no biases: each part of every objective is known exactly.
    Expanding out:k, what goes around 'b' is (T a)_k of out_k; expanding out:k/b:j, what goes around 'a'
    is C_kj (S x)_j of C_kj b_j."""
    analysis = linear_analysis()
    net = analysis.explainer.model
    x = analysis.record.input.detach().double().flatten()
    A, B, S = (w.detach().double() for w in (net.a.weight, net.b.main.weight, net.b.skip.weight))
    C, T = net.out.main.weight.detach().double(), net.out.skip.weight.detach().double()
    a = A @ x
    b = B @ a + S @ x
    out = C @ b + T @ a
    close = {"rel": 1e-4, "abs": 1e-4}  # float32 engine; the terms are of order 1 to 10

    def check(found, around: float, total: float) -> None:
        assert found["total"] == pytest.approx(total, **close)
        assert found["score"] == pytest.approx(around, **close)
        if abs(total) > 0.5:  # a share of a near-zero total says nothing about float32 precision
            assert found["share"] == pytest.approx(around / total, rel=1e-3)

    for k in range(3):
        expansion = analysis.expand((ft.Unit("out", k),), k=2)
        assert expansion.bypass["source"] == "a" and expansion.bypass["kind"] == "a skip connection (an addition)"
        check(expansion.bypass, float((T @ a)[k]), float(out[k]))
        # The children's scores are the part through 'b': with the bypass they add up to the whole.
        scores = analysis.contributions((ft.Unit("out", k),)).double()
        assert float(scores.sum()) + expansion.bypass["score"] == pytest.approx(float(out[k]), **close)
        for j in range(4):
            deeper = analysis.expand((ft.Unit("out", k), ft.Unit("b", j)), k=2)
            assert deeper.bypass["source"] == "the input"
            check(deeper.bypass, float(C[k, j] * (S @ x)[j]), float(C[k, j] * b[j]))


def test_a_chain_that_cuts_reports_no_bypass_share():
    analysis = explainer(ResNetLike, ["stem", "layer1", "layer2", "fc"]).analyze(image())
    tree = analysis.tree(k=2, depth=2, images=False)
    assert all(node.bypass is None for node in tree.walk())


def test_tree_json_carries_the_bypass_share_and_reads_back(tmp_path):
    analysis = linear_analysis()
    tree = analysis.tree(root="out:0", k=2, depth=2, images=False)
    expanded = [node for node in tree.walk() if node.expanded]
    assert expanded and all(
        node.bypass is not None and set(node.bypass) == {"share", "score", "total", "layer", "source", "kind"} for node in expanded
    )
    data = tree.to_dict()
    assert data["version"] == 2 and data["root"]["bypass"]["source"] == "a"
    assert ft.FeatureTree.from_dict(data).root.bypass == tree.root.bypass


def test_version_1_trees_still_load_without_bypass():
    analysis = explainer(ResNetLike, ["stem", "layer1", "layer2", "fc"]).analyze(image())
    data = analysis.tree(k=2, depth=1, images=False).to_dict()
    data["version"] = 1
    for node in (data["root"], *data["root"]["children"]):
        node.pop("bypass")
    loaded = ft.FeatureTree.from_dict(data)
    assert loaded.root.bypass is None and loaded.to_dict()["version"] == 2


def test_explain_prints_and_saves_the_bypass_share(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    spec = _model_file(tmp_path)
    out = tmp_path / "out"
    args = ["explain", "--model", spec, "--layers", "stem,layer1.0.conv1,layer2,fc", "--k", "2", "--depth", "2", "--out", str(out)]
    assert main([*args, "--allow-bypass"]) == 0
    printed = capsys.readouterr().out
    saved = ft.FeatureTree.load(out / "tree.json")
    parents = [node for node in saved.walk() if node.layer == "layer2" and node.expanded]
    assert parents and all(node.bypass["layer"] == "layer1.0.conv1" and node.bypass["source"] == "stem" for node in parents)
    for node in parents:
        assert f"[bypass: {100 * node.bypass['share']:.1f}% of its evidence goes around layer1.0.conv1]" in printed
    assert saved.root.bypass is None  # fc's layer below, layer2, is a cut
    html = (out / "tree.html").read_text()
    assert '"bypass": {"share"' in html or '"bypass":{"share"' in html


@pytest.mark.parametrize("net", [ResNetLike, InceptionLike, DenseNetLike])
def test_the_proposed_chain_of_each_planted_net_cuts(net):
    from featuretree.analysis.discovery import default_chain

    model = seeded(net())
    chain = default_chain(model, 32)
    assert explainer(lambda: model, chain).analyze(image()).bypasses == []
