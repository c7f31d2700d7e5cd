"""The node's own contribution map (a * delta at its layer): the same numbers as its score, position by
position, against an independent float64 computation; free once the parent is expanded; and its picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.autograd.functional import jacobian

import featuretree as ft
from featuretree.core.samples import sample_path
from featuretree.core.units import Unit, parse_path
from featuretree.evidence.evidence import NodeEvidence
from featuretree.render.pictures import contribution_image, upsampled_contribution

from .layout_models import IMAGE, TOKEN_CHAIN, TokenNet
from .test_scores_reference import make_net


def reference_map(net: nn.Sequential, x: torch.Tensor, path: list[int], channel_axis: int) -> torch.Tensor:
    """a * delta of the last unit of ``path`` (root logit, then channels) at every position of its layer,
    from explicit float64 Jacobians one stage at a time, the flow masked to each path unit's channel;
    ``channel_axis`` is the channel's axis of the stage outputs below the root (1: [B, C, H, W]; 2: [B, N, C])."""
    with torch.no_grad():
        acts = [x]
        for stage in net:
            acts.append(stage(acts[-1].clone()))
    stages = list(net)
    delta = torch.zeros_like(acts[-1])
    delta[0, path[0]] = 1.0
    level = len(stages)
    for channel in path[1:]:
        below = acts[level - 1]
        jac = jacobian(lambda a, s=stages[level - 1]: s(a.clone()), below)
        grad = (delta.reshape(-1) @ jac.reshape(delta.numel(), -1)).reshape(below.shape)
        keep = torch.zeros(below.shape[channel_axis], dtype=torch.bool)
        keep[channel] = True
        shape = [1] * below.dim()
        shape[channel_axis] = -1
        delta = grad * keep.view(shape)
        level -= 1
    return (acts[level] * delta)[0].select(channel_axis - 1, path[-1])


def test_contribution_map_is_the_scores_terms_position_by_position():
    torch.manual_seed(0)
    net = make_net("plain")
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    analysis = ft.Explainer(net, ["0", "1", "2", "3"], preprocess=ft.Preprocess(size=16)).analyze(x)
    tree = analysis.tree(k=2, depth=3, images=False)
    checked = 0
    for node in tree.walk():
        if node.depth == 0:
            continue
        path = parse_path(node.id)
        ev = analysis.evidence(path, kinds=("contribution",))
        want = reference_map(net, x, [u.channel for u in path], channel_axis=1)
        assert ev.contribution.dtype == np.float64 and ev.contribution.shape == tuple(want.shape)
        np.testing.assert_allclose(ev.contribution, want.numpy(), rtol=1e-9, atol=1e-12)
        # It sums to the node's score as the tree stored it: the same a * delta.
        assert ev.contribution.sum() == pytest.approx(node.score, rel=1e-12, abs=1e-15)
        assert ev.contribution_outside == pytest.approx(0.0, abs=1e-15)
        checked += 1
    assert checked >= 6


def test_token_maps_are_the_patch_grid_and_the_class_token_is_counted_outside():
    torch.manual_seed(0)
    net = TokenNet().double().eval()
    x = torch.randn(1, 3, IMAGE, IMAGE, dtype=torch.float64)
    analysis = ft.Explainer(net, TOKEN_CHAIN, preprocess=ft.Preprocess(size=IMAGE)).analyze(x)
    root = Unit("head", int(analysis.logits.argmax()))
    child = analysis.expand((root,), k=3).children[0]
    path = (root, child.unit)
    ev = analysis.evidence(path, kinds=("contribution",))
    terms = reference_map(net, x, [root.channel, child.unit.channel], channel_axis=2)  # [65]: class token, 8 x 8 patches
    assert ev.contribution.shape == (8, 8) and ev.contribution_patches
    np.testing.assert_allclose(ev.contribution, terms[1:].reshape(8, 8).numpy(), rtol=1e-9, atol=1e-12)
    assert ev.contribution_outside == pytest.approx(float(terms[0]), rel=1e-9, abs=1e-12)
    assert ev.contribution.sum() + ev.contribution_outside == pytest.approx(child.score, rel=1e-12)
    # The logit's map: block2's patch grid, all channels summed; the class token's part counted outside.
    top = analysis.evidence((root,), kinds=("contribution",))
    assert top.contribution.shape == (8, 8) and top.contribution_patches and top.contribution_outside != 0.0
    assert top.contribution.sum() + top.contribution_outside == pytest.approx(float(analysis.contributions((root,)).sum()), rel=1e-12)
    # Patches are drawn as squares: each 4 x 4 pixel block of the upsampled map is one patch's value.
    up = upsampled_contribution(ev, (IMAGE, IMAGE))
    np.testing.assert_allclose(up[::4, ::4], ev.contribution.astype(np.float32))
    np.testing.assert_allclose(up[3::4, 3::4], ev.contribution.astype(np.float32))


def test_a_logits_map_is_the_layer_below_summed_over_channels():
    torch.manual_seed(0)
    net = make_net("plain")
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    analysis = ft.Explainer(net, ["0", "1", "2", "3"], preprocess=ft.Preprocess(size=16)).analyze(x)
    root = analysis.resolve_root()
    ev = analysis.evidence((root,), kinds=("contribution",))
    assert ev.contribution_layer == "2" and ev.contribution.shape == (4, 4)
    # Every channel of layer 2 through the root: the sum of the per-channel maps of an independent computation.
    want = sum(reference_map(net, x, [root.channel, c], channel_axis=1) for c in range(5))
    np.testing.assert_allclose(ev.contribution, want.numpy(), rtol=1e-9, atol=1e-12)
    # It sums to all the root's children's scores, kept or not.
    assert ev.contribution.sum() == pytest.approx(float(analysis.contributions((root,)).sum()), rel=1e-12)


def test_a_vector_above_a_vector_has_no_map_and_the_server_says_why():
    from featuretree.core.errors import OptionError
    from featuretree.server.session import check_view, node_view_problem

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 6), nn.ReLU()),
        nn.Linear(6, 3),
    )
    analysis = ft.Explainer(net.double().eval(), ["0", "1", "2"], preprocess=ft.Preprocess(size=8)).analyze(
        torch.randn(1, 3, 8, 8, dtype=torch.float64)
    )
    root = analysis.resolve_root()
    child = analysis.expand((root,), k=1).children[0].unit
    assert analysis.evidence((root,), kinds=("contribution",)).contribution is None  # "1" below it is a vector too
    assert analysis.evidence((root, child), kinds=("contribution",)).contribution_layer == "0"  # mapped at the conv below
    assert "vector layer" in node_view_problem(analysis, (root,), "contribution")
    assert node_view_problem(analysis, (root, child), "contribution") is None
    with pytest.raises(OptionError, match="no picture of this node"):
        check_view(analysis, "contribution", (root,))


def test_contribution_is_free_once_the_parent_is_expanded(toy_explainer, square_image, monkeypatch):
    analysis = toy_explainer.analyze(square_image)
    root = analysis.resolve_root()
    kids = [(root, c.unit) for c in analysis.expand((root,), k=4).children]
    calls = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or grad(*a, **k))
    evidence = analysis.evidence_many(kids, kinds=("contribution",))
    assert calls == [] and all(ev.contribution is not None for ev in evidence)
    analysis.evidence_many(kids, kinds=("heat",))  # the heatmap is a backward pass to the pixels per node
    assert len(calls) == len(kids)


def _evidence(grid: np.ndarray, patches: bool = False) -> NodeEvidence:
    return NodeEvidence(None, None, None, None, 1.0, 0.0, 0.0, contribution=grid, contribution_patches=patches)


def test_the_picture_is_centred_at_zero_red_for_and_blue_against():
    grid = np.zeros((4, 4))
    grid[0, 0], grid[3, 3], grid[0, 3] = 2.0, -2.0, 1.0
    photo = Image.new("RGB", (64, 64), (128, 128, 128))
    picture = np.asarray(contribution_image(_evidence(grid, patches=True), photo)).astype(int)
    grey = picture[40, 8]  # a zero cell: the dimmed photo only
    assert grey[0] == grey[1] == grey[2]
    red, blue, half = picture[8, 8], picture[56, 56], picture[8, 56]
    assert red[0] > 200 and red[2] < 60  # +2: strongly red
    assert blue[2] > 200 and blue[0] < 60  # -2: as strongly blue, one scale for both signs
    # Centred at zero: negating the map swaps red and blue, cell for cell.
    flipped = np.asarray(contribution_image(_evidence(-grid, patches=True), photo)).astype(int)
    assert np.array_equal(flipped[56, 56], red) and np.array_equal(flipped[8, 8], blue)
    assert grey[0] < half[0] < red[0] and half[2] < grey[2]  # +1: half as strong, still red
    flat = np.asarray(contribution_image(_evidence(np.zeros((4, 4))), photo)).astype(int)
    assert np.ptp(flat) == 0  # nothing to show: the dimmed photo


def test_maps_are_smoothed_between_position_centres():
    grid = np.array([[0.0, 1.0]])
    up = upsampled_contribution(_evidence(grid), (8, 2))
    assert up[0, 0] == pytest.approx(0.0) and up[0, -1] == pytest.approx(1.0)
    assert np.all(np.diff(up[0]) >= 0) and 0 < up[0, 4] < 1


@pytest.mark.slow
def test_efficientnet_contribution_maps_sum_to_the_stored_scores(lite0):
    analysis = lite0.analyze(sample_path("chelsea"))
    tree = analysis.tree(k=3, depth=3, images=False)
    for node in list(tree.walk())[1:]:
        ev = analysis.evidence(parse_path(node.id), kinds=("contribution",))
        assert ev.contribution.shape == tuple(analysis.layer_info(node.layer).layout.grid(analysis.layer_info(node.layer).shape))
        assert ev.contribution.sum() == pytest.approx(node.score, rel=1e-9, abs=1e-12)
