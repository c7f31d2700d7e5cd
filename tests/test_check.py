"""`featuretree check` / Explainer.check() on planted nets whose answers are known by construction."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import featuretree as ft
from featuretree.cli import main
from featuretree.core.errors import GuidedUndefinedError
from featuretree.core.images import Preprocess
from featuretree.core.samples import sample_path
from tests.bypass_models import ResNetLike, seeded

from .conftest import all_hooks_removed


class GeluNet(nn.Module):
    """Two blocks whose MLPs use GELU: gradient approximate, guided unavailable, boxes per image."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(6, 6, 1), nn.Sequential(nn.Conv2d(6, 6, 1), nn.GELU())) for _ in range(2)])
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class Reused(nn.Module):
    """One conv called twice per forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.shared = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.shared(torch.relu(self.shared(self.stem(x)))).mean((2, 3)))


class Softmaxed(nn.Module):
    """Returns probabilities, with dropout left on, and a batch norm in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6))
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.dropout(self.stem(x).mean((2, 3)), 0.5, training=True)).softmax(1)


def checked(net: nn.Module, chain: list[str], **kw) -> ft.ModelCheck:
    ex = ft.Explainer(seeded(net), chain, preprocess=Preprocess(size=32), **kw)
    result = ex.check(speed=False)
    assert all_hooks_removed(ex.model)
    return result


def test_a_relu_net_whose_chain_cuts():
    result = checked(ResNetLike(), ["stem", "layer1", "layer2", "fc"])
    assert [(r.name, r.layout, r.shape, r.cuts, r.calls) for r in result.layers] == [
        ("stem", "channels_first", [8, 16, 16], True, 1),
        ("layer1", "channels_first", [8, 16, 16], True, 1),
        ("layer2", "channels_first", [16, 8, 8], True, 1),
        ("fc", "vector", [10], True, 1),
    ]
    assert {r.rule: r.verdict for r in result.rules} == {
        "gradient": "exact",
        "guided": "exact",
        "integrated": "approximate",
        "ablation": "exact",
    }
    assert result.receptive_fields["shared"] is True  # convolutions, sums, averages and ReLUs only
    assert result.state == [] and result.problems == []


def test_a_bypass_is_shown_on_its_row_and_as_a_problem():
    result = checked(ResNetLike(), ["layer1.0.conv1", "layer2", "fc"])
    rows = {r.name: r for r in result.layers}
    assert rows["layer2"].cuts is False and rows["fc"].cuts is True and rows["layer1.0.conv1"].cuts is True
    assert rows["layer2"].bypass == "receives the input around 'layer1.0.conv1', through a skip connection (an addition)"
    assert len(result.problems) == 1 and "use the enclosing block 'layer1.0'" in result.problems[0]
    assert "NO" in result.format() and "problems (an explanation would stop here)" in result.format()
    allowed = checked(ResNetLike(), ["layer1.0.conv1", "layer2", "fc"], allow_bypass=True)
    assert allowed.problems == [] and {r.name: r.cuts for r in allowed.layers}["layer2"] is False


def test_gelu_makes_gradient_approximate_and_guided_unavailable_naming_the_modules():
    result = checked(GeluNet(), ["stem", "blocks.0", "blocks.1", "fc"])
    assert result.rule("guided").verdict == "unavailable"
    assert result.rule("guided").reason.startswith("gelu in blocks.*.1.1: not rectifiers")
    assert result.rule("gradient").verdict == "approximate" and "gelu in blocks.*.1.1" in result.rule("gradient").reason
    assert result.receptive_fields["shared"] is False and "gelu in blocks.*.1.1" in result.receptive_fields["reason"]
    # What check says is what the engine then does.
    analysis = ft.Explainer(seeded(GeluNet()), ["stem", "blocks.0", "blocks.1", "fc"], preprocess=Preprocess(size=32)).analyze(
        torch.rand(1, 3, 32, 32)
    )
    with pytest.raises(GuidedUndefinedError):
        analysis.tree(depth=1, rule="guided", images=False)


def test_a_module_called_twice_is_reported_not_raised():
    result = checked(Reused(), ["stem", "shared", "fc"])
    rows = {r.name: r for r in result.layers}
    assert rows["shared"].calls == 2 and rows["stem"].calls == 1
    assert rows["shared"].cuts is None and rows["shared"].layout is None  # the capture refused the chain
    assert any("runs more than once" in p for p in result.problems)
    assert "2 (more than once: pick its parent block)" in result.format()
    assert all(r.verdict == "unavailable" for r in result.rules)


def test_model_state_problems():
    net = seeded(Softmaxed())
    ex = ft.Explainer(net, ["stem", "fc"], preprocess=Preprocess(size=32))
    assert not any("training mode" in s for s in ex.check(speed=False).state)
    net.stem[1].train()  # after the explainer put the model in eval mode
    state = ex.check(speed=False).state
    assert any(s.startswith("batch norm in training mode: stem.1") for s in state)
    assert any("output changes between two runs" in s for s in state)
    assert any("looks like probabilities" in s for s in state)
    assert any("does not end at the logits" in s for s in state)  # fc's output is not the model's (the softmax comes after)


def test_a_clean_model_has_no_state_problems_and_a_speed_estimate():
    ex = ft.Explainer.from_zoo("toy_squares")
    result = ex.check()
    assert result.state == [] and result.problems == []
    speed = result.speed
    assert speed["depth"] == min(3, len(ex.layers) - 1) and speed["k"] == 5
    levels = speed["levels"]
    # The first two levels' node counts are the real tree's on the same photo.
    tree = ex.explain(sample_path("chelsea"), k=5, depth=speed["depth"], images=False)
    assert [lv["nodes"] for lv in levels[:2]] == [1, len(tree.root.children)]
    assert speed["seconds"] == pytest.approx(
        speed["forward_seconds"] + sum(lv["first_seconds"] + (lv["nodes"] - 1) * lv["later_seconds"] for lv in levels)
    )
    assert speed["text"].startswith("estimate: ")


def test_cli_check_table_and_json(capsys):
    assert main(["check", "--model", "toy_squares", "--no-speed", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    api = ft.Explainer.from_zoo("toy_squares").check(speed=False).to_dict()
    assert data == api
    assert main(["check", "--model", "toy_squares", "--no-speed"]) == 0
    table = capsys.readouterr().out
    for row in api["layers"]:
        assert row["name"] in table
    assert "rules" in table and "receptive fields:" in table


def test_cli_check_reports_a_bypass_without_failing(tmp_path, capsys):
    assert main(["check", "--model", "toy_squares", "--input-size", "4"]) == 2
    assert "--input-size must be at least 8" in capsys.readouterr().err


class InPlaceAfter(nn.Module):
    """DenseNet's head: the last chain layer's output is rectified in place (``F.relu(features, inplace=True)``)."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.Conv2d(6, 6, 3, padding=1))
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.features(x), inplace=self.in_place).mean((2, 3)))


def test_every_rule_check_calls_available_runs_on_an_in_place_rectified_chain_layer():
    """check calls integrated available; it must then run where the model rectifies a chain layer's output in place
    (it crashed on torchvision's DenseNet), and give what the out-of-place twin gives."""
    scores = {}
    for in_place in (True, False):
        ex = ft.Explainer(seeded(InPlaceAfter(in_place)), ["features", "fc"], preprocess=Preprocess(size=32))
        assert ex.check(speed=False).rule("integrated").verdict == "approximate"
        analysis = ex.analyze(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        scores[in_place] = analysis.contributions((ft.Unit("fc", 0),), rule="integrated")
    torch.testing.assert_close(scores[True], scores[False])


class MaxPooled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).mean((2, 3)))


def test_max_pooling_keeps_guided_but_makes_receptive_fields_per_image_naming_the_module():
    result = checked(MaxPooled(), ["conv", "fc"])
    assert result.rule("guided").verdict == "exact" and result.rule("gradient").verdict == "exact"
    assert result.receptive_fields == {
        "shared": False,
        "reason": "per image: max_pool2d in pool make the linearised network depend on the image",
    }


class MostActive:
    name, summary, backward = "most_active_check", "the child's total activation", "guided"

    def scores(self, analysis, path, seed_mode):
        layer = analysis.layer_below(path[-1])
        return analysis.layer_info(layer).layout.channel_totals(analysis.activation(layer).double())[0].cpu()


def test_a_registered_rule_is_judged_by_its_backward():
    from featuretree.rules import registered

    with registered(MostActive()):
        gelu = checked(GeluNet(), ["stem", "blocks.0", "blocks.1", "fc"]).rule("most_active_check")
        relu = checked(MaxPooled(), ["conv", "fc"]).rule("most_active_check")
    assert gelu.verdict == "unavailable" and gelu.reason.startswith("judged by its guided backward only (a registered rule): gelu in")
    assert relu.verdict == "exact"


class Picky(nn.Module):
    """Fails on any input but 16 x 16."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 14 * 14, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def test_a_model_that_fails_gives_one_line_and_leaves_no_hook(tmp_path, capsys):
    ex = ft.Explainer(Picky(), ["conv", "fc"], preprocess=Preprocess(size=32))
    with pytest.raises(ft.FeatureTreeError, match=r"the model failed on a 32x32 input \(RuntimeError: "):
        ex.check(speed=False)
    assert all_hooks_removed(ex.model)
    assert ft.Explainer(Picky(), ["conv", "fc"], preprocess=Preprocess(size=16)).check(speed=False).problems == []
