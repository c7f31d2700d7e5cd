"""Edge verification by ablation (featuretree.tree.verify) on the hand-set toy net and EfficientNet-Lite0."""

from __future__ import annotations

import math

import pytest
import torch

import featuretree as ft
from featuretree.analysis.interventions import ablation
from featuretree.core.samples import sample_path
from featuretree.core.units import Unit
from featuretree.tree.model import FeatureTree
from featuretree.tree.verify import verify_edges, verify_tree

from .conftest import all_hooks_removed, square_picture


@pytest.fixture
def toy() -> ft.Analysis:
    return ft.Explainer.from_zoo("toy_squares").analyze(square_picture())


def test_root_children_ablation_equals_gradient_x_activation(toy):
    # Logit = W . mean(corners): linear in the corner maps, so zeroing a corner drops the logit by
    # exactly its gradient x activation, for every channel (the negative distractor included).
    root = toy.resolve_root()
    estimates = toy.contributions((root,))
    checks = verify_edges(toy, (root,), list(range(estimates.numel())))
    for check in checks:
        (c,) = check.channels
        assert check.estimate == pytest.approx(float(estimates[c]), rel=1e-12)
        assert check.parent_drop == pytest.approx(check.estimate, rel=1e-5, abs=1e-7)
        assert check.root_drop == pytest.approx(check.estimate, rel=1e-5, abs=1e-7)
    assert checks[0].parent_value == pytest.approx(float(toy.logits[root.channel]), rel=1e-6)
    assert any(check.parent_drop < 0 for check in checks), "the distractor raises the logit when removed"


def test_joint_ablation_is_additive_where_linear(toy):
    root = toy.resolve_root()
    parent = ablation(toy, (root,), [[0], [1], [2], [3], [0, 1, 2, 3]]).parent_drop
    assert float(parent[-1]) == pytest.approx(float(parent[:4].sum()), rel=1e-5)


def test_nonlinear_edge_is_measured_not_estimated(toy):
    # Corner units have a -3.5 bias before their ReLU: removing an edge switches the corner off,
    # so the measured drop is the whole corner contribution, not the linear estimate.
    root = toy.resolve_root()
    path = (root, Unit("corners", 0))
    checks = verify_edges(toy, path, [0, 2])
    corner_value = checks[0].parent_value
    assert corner_value == pytest.approx(float(toy.contributions((root,))[0]), rel=1e-5)
    assert checks[0].parent_drop == pytest.approx(corner_value, rel=1e-5)
    assert not math.isclose(checks[0].estimate, checks[0].parent_drop, rel_tol=0.1)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_batched_equals_one_at_a_time(toy, share_prefix):
    root = toy.resolve_root()
    for path in [(root,), (root, Unit("corners", 1))]:
        sets = [[0], [1], [2], [3], [4], [0, 2], [1, 3, 4]]
        batched = ablation(toy, path, sets, share_prefix=share_prefix)
        singles = [ablation(toy, path, [s], batch_size=2, share_prefix=share_prefix) for s in sets]
        torch.testing.assert_close(batched.parent_drop, torch.cat([s.parent_drop for s in singles]), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(batched.root_drop, torch.cat([s.root_drop for s in singles]), rtol=1e-6, atol=1e-7)
        # Sharing the layers below the child gives the same numbers as stacking the input.
        stacked = ablation(toy, path, sets, share_prefix=not share_prefix)
        torch.testing.assert_close(batched.parent_drop, stacked.parent_drop, rtol=1e-6, atol=1e-7)


def test_verify_tree_fills_json_and_leavesall_hooks_removed(toy):
    tree = toy.tree(depth=2, images=False, verify=True)
    assert all_hooks_removed(toy.explainer.model)
    for node in tree.walk():
        if node.depth > 0:
            assert set(node.verification) >= {"estimate", "parent_drop", "root_drop"}
        if node.children:
            assert node.verification_all["parent_drop"] > 0
            assert node.rest is not None
    again = FeatureTree.from_dict(tree.to_dict())
    assert again.to_dict() == tree.to_dict()
    assert again.root.children[0].verification == tree.root.children[0].verification


def test_hooks_removed_after_an_error(toy):
    model = toy.explainer.model

    def boom(module, inputs, output):
        raise RuntimeError("model failed mid-forward")

    handle = model.classifier.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="mid-forward"):
            verify_tree(toy, toy.tree(depth=1, images=False))
        for m in model.modules():
            expected = 1 if m is model.classifier else 0
            assert len(m._forward_hooks) == expected
    finally:
        handle.remove()
    assert all_hooks_removed(model)


def test_out_of_range_channel_is_a_clear_error(toy):
    root = toy.resolve_root()
    with pytest.raises(ft.FeatureTreeError, match="out of range"):
        verify_edges(toy, (root,), [7])
    assert all_hooks_removed(toy.explainer.model)


@pytest.mark.slow
def test_lite0_top5_children_drop_parent_more_than_random():
    explainer = ft.Explainer.from_zoo("efficientnet_lite0")
    analysis = explainer.analyze(sample_path("chelsea"))
    root = analysis.resolve_root()
    expansion = analysis.expand((root,), k=5)
    node = (root, expansion.children[0].unit)  # a _head_act unit; its children live in _blocks.14
    top = [c.unit.channel for c in analysis.expand(node, k=5).children]
    channels = analysis.layer_info("_blocks.14").channels
    generator = torch.Generator().manual_seed(0)
    randoms = [torch.randperm(channels, generator=generator)[:5].tolist() for _ in range(20)]
    measured = ablation(analysis, node, [top, *randoms])
    parent, value = measured.parent_drop, measured.parent_value
    assert value > 0
    assert float(parent[0]) > float(parent[1:].mean())
    assert float(parent[0]) > float(parent[1:].median())
    assert all_hooks_removed(explainer.model)


def test_cli_explain_verify_reports_drops(tmp_path, capsys):
    from featuretree.cli import main

    photo = tmp_path / "square.png"
    square_picture().save(photo)
    out = tmp_path / "out"
    assert main(["explain", str(photo), "--model", "toy_squares", "--depth", "1", "--verify", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ablation drop: parent" in text
    tree = FeatureTree.load(out / "tree.json")
    drops = [c.verification["parent_drop"] for c in tree.root.children]
    assert drops == sorted(drops, reverse=True) and drops[0] > 0
    page = (out / "tree.html").read_text()
    assert '"parent_drop"' in page and "ft-badge" in page


def test_rest_is_what_the_shown_children_leave_out(toy):
    tree = toy.tree(depth=1, k=2, negatives=1, images=False)
    root = tree.root
    shown = sum(c.score for c in root.children)
    assert root.rest["share"] == pytest.approx(1.0 - root.coverage)
    assert root.rest["score"] == pytest.approx(root.total_positive - shown)
    # Corners 2 and 3 (weights 2 and 1 of 4+3+2+1) are the rest; the distractor is the negative part.
    assert root.rest["share"] == pytest.approx(3 / 10, rel=1e-5)
    assert root.rest["negative"] == pytest.approx(root.negatives[0].score)


def test_class_effects_name_the_classes_whose_logits_a_hand_masked_forward_pass_lowers_most():
    """Each verified child carries the classes whose logits fall most when it alone is zeroed (and the
    joint check when all are); checked against this test's own masked forward pass in float64."""
    from .test_scores_reference import make_net

    torch.manual_seed(4)
    net = make_net("residual")
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    names = ["ant", "bee", "cat", "dog"]
    analysis = ft.Explainer(net, ["0", "1", "2", "3"], preprocess=ft.Preprocess(size=16), class_names=names).analyze(x)
    tree = analysis.tree(depth=2, k=3, images=False, verify=True)

    def masked_logits(layer: str, channels: list[int]) -> torch.Tensor:
        def zero(module, inputs, output):
            output = output.clone()
            output[:, channels] = 0.0
            return output

        handle = dict(net.named_modules())[layer].register_forward_hook(zero)
        try:
            with torch.no_grad():
                return net(x)[0]
        finally:
            handle.remove()

    with torch.no_grad():
        before = net(x)[0]
    checked = 0
    for node in tree.walk():
        for child in node.children:
            drops = before - masked_logits(child.layer, [child.unit])
            after = (before - drops).softmax(0)
            # Lowered: the logit falls and so does the probability (runners-up can gain while their logits fall).
            lowered = [int(i) for i in drops.argsort(descending=True) if drops[i] > 0 and after[i] < before.softmax(0)[i]]
            expected = lowered[:3]
            got = child.verification["classes"]
            assert [c["index"] for c in got] == expected and [c["name"] for c in got] == [names[i] for i in expected]
            for c in got:
                assert c["drop"] == pytest.approx(float(drops[c["index"]]), rel=1e-6, abs=1e-9)
                assert c["probability_after"] == pytest.approx(float(after[c["index"]]), rel=1e-6)
            checked += 1
        if len(node.children) > 1:
            joint = before - masked_logits(node.children[0].layer, [c.unit for c in node.children])
            falls = (joint > 0) & ((before - joint).softmax(0) < before.softmax(0))
            got = [c["index"] for c in node.verification_all["classes"]]
            assert got == [int(i) for i in joint.argsort(descending=True) if falls[i]][:3]
    assert checked == 3 + 9
    assert all_hooks_removed(net)
