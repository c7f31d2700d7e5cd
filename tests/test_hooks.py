"""No hook (and no torch function mode) outlives a call, also when the call raises."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import featuretree as ft
from featuretree.core.errors import FeatureTreeError, LayerError

from .conftest import all_hooks_removed


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        self.relu(self.conv(x))  # hooks and rectifier gates are active by now
        raise RuntimeError("boom inside forward")


class Reused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        h = self.relu(self.conv(x))
        h = self.relu(self.conv(h))  # same modules twice
        return self.fc(h.mean((2, 3)))


def test_no_hooks_after_a_full_tree(toy_explainer, square_image):
    toy_explainer.analyze(square_image).tree(depth=2)
    assert all_hooks_removed(toy_explainer.model)


def test_no_hooks_after_forward_raises():
    model = Exploding()
    explainer = ft.Explainer(model, ["conv", "relu"], preprocess=ft.Preprocess(size=16))
    with pytest.raises(RuntimeError, match="boom"):
        explainer.analyze(torch.randn(1, 3, 16, 16))
    assert all_hooks_removed(model)


def test_reused_module_is_a_clear_error_and_leaves_no_hooks():
    model = Reused()
    explainer = ft.Explainer(model, ["conv", "fc"], preprocess=ft.Preprocess(size=16))
    with pytest.raises(LayerError, match="more than once"):
        explainer.analyze(torch.randn(1, 3, 16, 16))
    assert all_hooks_removed(model)


def test_wrong_order_and_unknown_layers_are_errors(toy_explainer, square_image):
    with pytest.raises(LayerError, match="input side first"):
        ft.Explainer(toy_explainer.model, ["corners", "edges", "classifier"]).analyze(square_image)
    with pytest.raises(LayerError, match="did you mean 'corners'"):
        ft.Explainer(toy_explainer.model, ["edges", "corner", "classifier"])
    assert all_hooks_removed(toy_explainer.model)


def test_errors_are_one_line(toy_explainer, square_image):
    analysis = toy_explainer.analyze(square_image)
    for spec in ("class:7", "corners:99", "nolayer:1", "garbage", "class:notaclass", "corners:²", "class:²", "corners:--5"):
        with pytest.raises(FeatureTreeError) as info:
            analysis.resolve_root(spec)
        assert "\n" not in str(info.value)
    assert all_hooks_removed(toy_explainer.model)


class Tripwire(nn.Module):
    """Stages a and b, then a tail that must not run once a and b have been watched."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.tail_calls = 0

    def forward(self, x):
        y = self.b(self.a(x))
        self.tail_calls += 1
        return y.sum()


def test_watching_with_stop_ends_the_forward_pass_once_every_output_is_in_and_removes_its_hooks():
    from featuretree.capture.hooks import watching

    net = Tripwire()
    x = torch.randn(2, 3)
    store: dict[str, torch.Tensor] = {}
    with torch.no_grad(), watching({"a": net.a, "b": net.b}, store, stop=True):
        net(x)
        pytest.fail("the with block goes on after the model call")  # never reached: the pass stopped in b's hook
    assert net.tail_calls == 0
    torch.testing.assert_close(store["b"], net.b(net.a(x)))
    assert all_hooks_removed(net)
    # Without stop the whole model runs.
    with torch.no_grad(), watching({"a": net.a}, store):
        net(x)
    assert net.tail_calls == 1
