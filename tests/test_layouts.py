"""Layer layouts: token sequences and channels-last maps give the scores of an independent float64
computation that uses the right channel axis, a channels-last network explains exactly as its
channels-first twin, and shapes that cannot be told apart are refused with the override to use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import featuretree as ft
from featuretree.core.errors import LayerError, OptionError
from featuretree.core.layouts import CHANNELS_FIRST, CHANNELS_LAST, VECTOR, Tokens, layout_for
from featuretree.core.units import Unit

from .layout_models import CHAIN, IMAGE, PATCH, TOKEN_CHAIN, ChannelsFirstTwin, ChannelsLastNet, ToChannelsLast, TokenNet
from .test_scores_reference import reference_scores


def check_against_reference(net: nn.Sequential, chain: list[str], layouts: list[str], seed: int) -> None:
    torch.manual_seed(seed)
    x = torch.randn(1, 3, IMAGE, IMAGE, dtype=torch.float64)
    analysis = ft.Explainer(net, chain, preprocess=ft.Preprocess(size=IMAGE)).analyze(x)
    assert [info.layout.kind for info in analysis.chain] == layouts
    root = Unit(chain[-1], int(analysis.logits.argmax()))
    second = analysis.expand((root,), k=3).children[0].unit
    third = analysis.expand((root, second), k=3).children[0].unit
    ref = reference_scores(net, x, [root.channel, second.channel, third.channel], layouts)
    paths = [(root,), (root, second), (root, second, third)]
    for level, (path, expected) in enumerate(zip(paths, ref)):
        got = analysis.contributions(path)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-9, atol=1e-12, msg=f"level {level}")


def test_token_scores_match_float64_jacobians_summed_over_every_token():
    torch.manual_seed(0)
    net = TokenNet().double().eval()
    check_against_reference(net, TOKEN_CHAIN, ["tokens", "tokens", "tokens", "vector"], seed=1)


def test_channels_last_scores_match_float64_jacobians_on_the_last_axis():
    torch.manual_seed(0)
    net = ChannelsLastNet().double().eval()
    check_against_reference(net, CHAIN, ["channels_last", "channels_last", "channels_last", "vector"], seed=2)


def test_a_channels_last_network_explains_exactly_as_its_channels_first_twin():
    torch.manual_seed(4)
    last = ChannelsLastNet().double().eval()
    first = ChannelsFirstTwin(last).eval()
    x = torch.randn(1, 3, IMAGE, IMAGE, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(last(x), first(x))
    trees = [ft.Explainer(net, CHAIN, preprocess=ft.Preprocess(size=IMAGE)).analyze(x).tree(depth=3, k=3) for net in (last, first)]
    nodes = [[(n.id, n.score or 0.0, n.share or 0.0) for n in tree.walk()] for tree in trees]
    assert [n[0] for n in nodes[0]] == [n[0] for n in nodes[1]]
    torch.testing.assert_close(torch.tensor([n[1:] for n in nodes[0]]), torch.tensor([n[1:] for n in nodes[1]]), rtol=1e-9, atol=1e-12)
    # The pictures agree too: the heatmaps, strongest positions and receptive fields of every node.
    for node in trees[0].walk():
        a, b = trees[0].evidence[node.id], trees[1].evidence[node.id]
        assert a.location == b.location and a.box == b.box, node.id
        assert a.heat.shape == (IMAGE, IMAGE)
        torch.testing.assert_close(torch.from_numpy(a.heat), torch.from_numpy(b.heat), rtol=1e-5, atol=1e-6)


def test_patch_tokens_map_to_their_squares_of_the_image():
    torch.manual_seed(0)
    net = TokenNet().double().eval()
    analysis = ft.Explainer(net, TOKEN_CHAIN, preprocess=ft.Preprocess(size=IMAGE)).analyze(
        torch.rand(1, 3, IMAGE, IMAGE, dtype=torch.float64)
    )
    info = analysis.layer_info("embed")
    assert info.grid == (IMAGE // PATCH, IMAGE // PATCH)
    from featuretree.evidence.receptive_field import receptive_fields

    positions = [(0, 0), (3, 5), (7, 7)]
    for (row, col), (left, top, right, bottom) in zip(positions, receptive_fields(analysis, "embed", positions)):
        square = (col * PATCH, row * PATCH, (col + 1) * PATCH, (row + 1) * PATCH)
        # Inside the patch's square (the central 90 % of the gradient mass may trim an edge pixel).
        assert square[0] <= left < right <= square[2] and square[1] <= top < bottom <= square[3], (row, col)
    # Attention makes the linearised backward depend on the image: boxes are per analysis.
    assert not analysis.record.fixed_linearisation


@pytest.mark.parametrize("make, chain", [(TokenNet, TOKEN_CHAIN), (ChannelsLastNet, CHAIN)])
def test_explain_save_and_verify_on_token_and_channels_last_chains(make, chain, tmp_path):
    torch.manual_seed(5)
    net = make().double().eval()
    explainer = ft.Explainer(net, chain, preprocess=ft.Preprocess(size=IMAGE))
    analysis = explainer.analyze(torch.rand(1, 3, IMAGE, IMAGE, dtype=torch.float64))
    tree = analysis.verify(analysis.tree(depth=2, k=2))
    out = tree.save(tmp_path / "out")
    assert (out / "tree.json").is_file() and (out / "tree.html").stat().st_size > 10_000
    for node in tree.walk():
        assert {"heatmap", "rf_box"} <= set(node.images), node.id
    checked = [n for n in tree.walk() if n.verification is not None]
    assert checked, "verification ran on no edge"


# ----- detection ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "size", "expected"),
    [
        ((256, 56, 56), 224, CHANNELS_FIRST),  # ResNet stage
        ((1280, 7, 7), 224, CHANNELS_FIRST),
        ((64, 147, 147), 299, CHANNELS_FIRST),  # Inception's unpadded convolutions
        ((56, 56, 96), 224, CHANNELS_LAST),  # Swin stage 1
        ((7, 7, 768), 224, CHANNELS_LAST),
        ((1000,), 224, VECTOR),
    ],
)
def test_maps_and_vectors_are_detected_from_their_shape_and_the_image(shape, size, expected):
    assert layout_for("layer", shape, (size, size)) is expected


@pytest.mark.parametrize(
    ("tokens", "size", "prefix", "grid"),
    [(197, 224, 1, 14), (198, 224, 2, 14), (50, 224, 1, 7), (50, 240, 1, 7), (201, 224, 5, 14), (577, 384, 1, 24), (3136, 224, 0, 56)],
)
def test_token_sequences_are_detected_with_their_prefix_tokens_and_patch_grid(tokens, size, prefix, grid):
    layout = layout_for("blocks.3", (tokens, 384), (size, size))
    assert isinstance(layout, Tokens) and (layout.prefix, layout.rows, layout.cols) == (prefix, grid, grid)


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ((56, 56, 56), ("either [C, H, W] or [H, W, C]", "--layout layer=")),
        ((40, 30, 20), ("neither", "--layout layer=")),
        ((5000, 64), ("5000 tokens", "--layout layer=")),
        ((2, 3, 4, 5), ("[1, C, H, W], [1, H, W, C], [1, N, C] or [1, C]",)),
    ],
)
def test_shapes_that_cannot_be_told_apart_are_refused_naming_the_override(shape, words):
    with pytest.raises(LayerError) as err:
        layout_for("layer", shape, (224, 224))
    text = str(err.value)
    assert all(w in text for w in words), text


def test_a_convolution_settles_a_shape_that_fits_both_ways_and_a_permute_does_not():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.ReLU())  # [8, 8, 8] after a convolution
    explainer = ft.Explainer(nn.Sequential(conv, nn.Flatten(), nn.Linear(512, 3)), ["0", "2"], preprocess=ft.Preprocess(size=32))
    assert explainer.analyze(torch.rand(1, 3, 32, 32)).layer_info("0").layout is CHANNELS_FIRST

    permuted = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), ToChannelsLast()), nn.Flatten(), nn.Linear(512, 3))
    with pytest.raises(LayerError, match="--layout 0="):
        ft.Explainer(permuted, ["0", "2"], preprocess=ft.Preprocess(size=32)).analyze(torch.rand(1, 3, 32, 32))
    told = ft.Explainer(permuted, ["0", "2"], preprocess=ft.Preprocess(size=32), layouts={"0": "channels_last"})
    assert told.analyze(torch.rand(1, 3, 32, 32)).layer_info("0").layout is CHANNELS_LAST
    # A linear layer over the last axis of a permuted map writes [H, W, C].
    linear = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), ToChannelsLast(), nn.Linear(8, 8)), nn.Flatten(), nn.Linear(512, 3))
    explainer = ft.Explainer(linear, ["0", "2"], preprocess=ft.Preprocess(size=32))
    assert explainer.analyze(torch.rand(1, 3, 32, 32)).layer_info("0").layout is CHANNELS_LAST


def test_maps_of_non_square_images_fit_with_either_rounding():
    from featuretree.core.layouts import _fits_image

    assert _fits_image(3, 5, (240, 320)) and _fits_image(4, 5, (240, 320))  # stride 64 rounded down, up
    assert not _fits_image(5, 3, (240, 320)) and not _fits_image(5, 4, (16, 16))


@pytest.mark.parametrize(
    ("layouts", "words"),
    [
        ({"nope": "tokens"}, "not a chain layer"),
        ({"embed": "diagonal"}, "unknown layout"),
        ({"embed": "channels_first"}, "cannot be a channels_first layout"),
        ({"embed": "tokens:3"}, "no patch grid"),
    ],
)
def test_bad_layout_overrides_are_refused(layouts, words):
    net = TokenNet().double().eval()
    with pytest.raises(LayerError, match=words):
        ft.Explainer(net, TOKEN_CHAIN, preprocess=ft.Preprocess(size=IMAGE), layouts=layouts).analyze(
            torch.rand(1, 3, IMAGE, IMAGE, dtype=torch.float64)
        )


# ----- nonlinearities other than rectifiers ----------------------------------------------------
def test_guided_is_refused_where_gelu_softmax_or_layer_norm_run_and_its_pictures_are_left_out(tmp_path):
    torch.manual_seed(0)
    net = TokenNet().double().eval()
    analysis = ft.Explainer(net, TOKEN_CHAIN, preprocess=ft.Preprocess(size=IMAGE)).analyze(
        torch.rand(1, 3, IMAGE, IMAGE, dtype=torch.float64)
    )
    assert {"gelu", "softmax", "layer_norm"} <= set(analysis.record.nonlinearities)
    root = Unit("head", 0)
    with pytest.raises(OptionError, match="guided backprop is defined only for .* gelu"):
        analysis.expand((root,), rule="guided")
    tree = analysis.tree(depth=1, k=2)
    tree.save(tmp_path / "out")
    for node in tree.walk():
        assert tree.evidence[node.id].guided is None
        assert "guided" not in node.images and "guided_original" not in node.images and "heatmap" in node.images


@pytest.mark.parametrize(
    ("extra", "defined"),
    [
        (nn.Identity(), True),
        (nn.Dropout(0.5), True),  # eval mode: the identity
        (nn.MaxPool2d(1), True),  # max pooling: a selection, as in AlexNet and VGG
        (nn.SiLU(), False),
        (nn.Hardswish(), False),
        (nn.Sigmoid(), False),
    ],
)
def test_guided_stays_defined_for_rectifiers_dropout_and_max_pooling_only(extra, defined):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), extra), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    analysis = ft.Explainer(net, ["0", "2"], preprocess=ft.Preprocess(size=8)).analyze(torch.rand(1, 3, 8, 8))
    assert (analysis.guided_problem is None) == defined, analysis.record.nonlinearities
    if defined:
        assert analysis.expand((Unit("2", 0),), rule="guided").children is not None
    else:
        with pytest.raises(OptionError, match=type(extra).__name__.lower()):
            analysis.contributions((Unit("2", 0),), rule="guided")


# ----- every rule, verification, evaluate and sanity on every layout -------------------------------
@pytest.mark.parametrize("rule", ft.rule_names())
def test_every_rule_scores_a_channels_last_net_as_its_channels_first_twin(rule):
    torch.manual_seed(6)
    last = ChannelsLastNet().double().eval()
    first = ChannelsFirstTwin(last).eval()
    x = torch.rand(1, 3, IMAGE, IMAGE, dtype=torch.float64)
    analyses = [ft.Explainer(net, CHAIN, preprocess=ft.Preprocess(size=IMAGE)).analyze(x) for net in (last, first)]
    root = Unit("head", int(analyses[0].logits.argmax()))
    for path in ((root,), (root, analyses[0].expand((root,), k=1, rule=rule).children[0].unit)):
        scores = [a.contributions(path, rule=rule) for a in analyses]
        torch.testing.assert_close(scores[0], scores[1], rtol=1e-7, atol=1e-10)
    trees = [a.verify(a.tree(depth=2, k=2, rule=rule, images=False)) for a in analyses]
    ids = [[n.id for n in t.walk()] for t in trees]
    assert ids[0] == ids[1]
    measured = [[v for n in t.walk() if n.verification for k, v in n.verification.items() if k != "classes"] for t in trees]
    assert measured[0] and measured[0] == pytest.approx(measured[1], rel=1e-7, abs=1e-10)
    effects = [[(c["index"], c["drop"]) for n in t.walk() if n.verification for c in n.verification["classes"]] for t in trees]
    assert [i for i, _ in effects[0]] == [i for i, _ in effects[1]]
    assert [d for _, d in effects[0]] == pytest.approx([d for _, d in effects[1]], rel=1e-6, abs=1e-10)


@pytest.mark.parametrize("rule", ["gradient", "integrated", "ablation"])
def test_every_rule_but_guided_runs_on_tokens(rule):
    torch.manual_seed(7)
    analysis = ft.Explainer(TokenNet().double().eval(), TOKEN_CHAIN, preprocess=ft.Preprocess(size=IMAGE)).analyze(
        torch.rand(1, 3, IMAGE, IMAGE, dtype=torch.float64)
    )
    root = Unit("head", int(analysis.logits.argmax()))
    scores = analysis.contributions((root,), rule=rule)
    assert scores.shape == (6,) and torch.isfinite(scores).all()
    if rule == "gradient":  # the root's children's scores add up to the logit's gradient x activation over every token
        block = analysis.activation("block2")
        (grad,) = torch.autograd.grad(analysis.record.output[0, root.channel], analysis.record.activations["block2"], retain_graph=True)
        torch.testing.assert_close(scores.sum(), (block * grad).sum().double())


def test_evaluate_and_sanity_run_on_a_token_chain():
    from featuretree.reports.evaluate import evaluate_children
    from featuretree.reports.sanity import sanity_check

    torch.manual_seed(8)
    explainer = ft.Explainer(TokenNet().double().eval(), TOKEN_CHAIN, preprocess=ft.Preprocess(size=IMAGE))
    x = torch.rand(1, 3, IMAGE, IMAGE, dtype=torch.float64)
    analysis = explainer.analyze(x)
    root = Unit("head", int(analysis.logits.argmax()))
    rows = evaluate_children(analysis, (root,), 2, ["gradient", "ablation"], 3, torch.Generator().manual_seed(0))
    assert rows and all(r is not None for r in rows)
    report = sanity_check(explainer, x, k=2, depth=1, steps=1)
    assert report.to_markdown()


def test_a_model_without_classes_takes_roots_on_its_layers_and_refuses_class_roots():
    torch.manual_seed(9)
    segmenter = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()), nn.Sequential(nn.Conv2d(6, 4, 1), nn.ReLU()), nn.Conv2d(4, 3, 1)
    )
    analysis = ft.Explainer(segmenter, ["0", "1", "2"], preprocess=ft.Preprocess(size=16)).analyze(torch.rand(1, 3, 16, 16))
    assert analysis.top_classes() == [] and analysis.logits_layer is None
    tree = analysis.tree(root="2:1", depth=2, k=2, images=False)
    assert tree.root.id == "2:1" and tree.root.children and tree.root.children[0].layer == "1"
    assert analysis.resolve_root(None).layer == "2"
    with pytest.raises(ft.core.errors.UnitError, match=r"no classes: its output is shape \[1, 3, 16, 16\]"):
        analysis.resolve_root("class:0")


def test_a_model_returning_a_tuple_takes_roots_on_its_layers():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.main, self.aux = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 3, 1)

        def forward(self, x):
            h = self.body(x)
            return self.main(h), self.aux(h)

    torch.manual_seed(10)
    analysis = ft.Explainer(TwoHeads(), ["body", "main"], preprocess=ft.Preprocess(size=16)).analyze(torch.rand(1, 3, 16, 16))
    assert analysis.resolve_root(None).layer == "main" and analysis.top_classes() == []
    tree = analysis.tree(root="main:0", depth=1, k=2)
    assert tree.root.children and all(tree.evidence[n.id].heat is not None for n in tree.walk())
    with pytest.raises(ft.core.errors.UnitError, match="its output is a tuple"):
        analysis.resolve_root("class:1")
