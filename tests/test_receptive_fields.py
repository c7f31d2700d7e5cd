"""Receptive-field boxes are shared between images only when the linearised backward cannot
depend on the image, and sharing them never changes a box."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import featuretree as ft
from featuretree.capture.forward import capture_forward
from featuretree.core.samples import sample_path


class Probe(nn.Module):
    """conv -> (op under test) -> conv: the chain layers are 'first' and 'second'."""

    def __init__(self, op) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 2, 3, padding=1)
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.op(self.first(x)))


LINEAR_OPS = {
    "relu": F.relu,
    "relu6": F.relu6,
    "scale and shift": lambda h: 2.0 * h - h / 3.0 + 1.0,
    "eval batch norm": nn.BatchNorm2d(4).eval(),
    "eval dropout": nn.Dropout(0.5).eval(),
    "average pool": lambda h: F.interpolate(F.avg_pool2d(h, 2), scale_factor=2.0, mode="bilinear"),
    "reshape": lambda h: h.flatten(2).reshape(h.shape).contiguous(),
    "constant pad": lambda h: F.pad(h, (1, 1, 1, 1))[..., 1:-1, 1:-1],
    "float casts": lambda h: h.to(torch.float64).to(dtype=torch.float32).float(),
}
NONLINEAR_OPS = {
    "silu": F.silu,
    "max pool": lambda h: F.interpolate(F.max_pool2d(h, 2), scale_factor=2.0),
    "square": lambda h: h * h,
    "divide by the input": lambda h: h / (h.abs().sum() + 1.0),
    "training batch norm": lambda h: F.batch_norm(h, None, None, training=True),
    "training dropout": nn.Dropout(0.5).train(),
    "hardtanh(-1, 1)": F.hardtanh,
    "squeeze-excite": lambda h: h * torch.sigmoid(h.mean((2, 3), keepdim=True)),
    "mask from a comparison": lambda h: h * (h > 0).float(),
    "cast to bool": lambda h: h * F.relu(h).to(torch.bool),
    "cast to int": lambda h: h * F.relu(h).to(torch.int64),
    "boolean indexing": lambda h: h.flatten()[h.flatten() > 0].sum() + h,
}


def linear_mode_gradient(model: nn.Module, image: torch.Tensor) -> tuple[bool, torch.Tensor]:
    record = capture_forward(model, image, ["first", "second"])
    seed = torch.zeros_like(record.activations["second"])
    seed[0, :, 4, 5] = 1.0
    with record.rule.use("linear"):
        (grad,) = torch.autograd.grad(record.activations["second"], record.input, seed)
    return record.fixed_linearisation, grad


@pytest.mark.parametrize("name", LINEAR_OPS)
def test_linear_ops_give_one_linearisation_for_every_image(name):
    model = Probe(LINEAR_OPS[name]).eval()
    images = torch.rand(2, 1, 3, 12, 12, generator=torch.Generator().manual_seed(1)) * 4 - 2
    (fixed_a, grad_a), (fixed_b, grad_b) = (linear_mode_gradient(model, x) for x in images)
    assert fixed_a and fixed_b
    torch.testing.assert_close(grad_a, grad_b)  # the premise that lets boxes be shared


@pytest.mark.parametrize("name", NONLINEAR_OPS)
def test_image_dependent_ops_are_detected(name):
    model = Probe(NONLINEAR_OPS[name])
    images = torch.rand(2, 1, 3, 12, 12, generator=torch.Generator().manual_seed(1)) * 4 - 2
    results = [linear_mode_gradient(model, x) for x in images]
    assert not any(fixed for fixed, _ in results)
    if name != "training dropout":  # random masks differ anyway
        assert not torch.allclose(results[0][1], results[1][1]), "this op should make the linearisation image-dependent"


@pytest.mark.slow
def test_efficientnet_boxes_shared_between_images_equal_cold_ones(lite0):
    warm = ft.Explainer(lite0.model, lite0.layers, preprocess=lite0.preprocess, class_names=lite0.class_names)
    assert warm.analyze(sample_path("chelsea")).record.fixed_linearisation
    warm.analyze(sample_path("chelsea")).tree(depth=2, k=3)
    hits_before = warm.receptive_fields.hits
    shared = warm.analyze(sample_path("coffee")).tree(depth=2, k=3)
    assert warm.receptive_fields.hits > hits_before, "the second image should reuse boxes"

    cold = ft.Explainer(lite0.model, lite0.layers, preprocess=lite0.preprocess, class_names=lite0.class_names)
    fresh = cold.analyze(sample_path("coffee")).tree(depth=2, k=3)
    assert [(n.id, n.location, n.box) for n in shared.walk()] == [(n.id, n.location, n.box) for n in fresh.walk()]


def test_changed_weights_do_not_reuse_boxes(square_image):
    explainer = ft.Explainer.from_zoo("toy_squares")
    before = explainer.weights_version()
    explainer.analyze(square_image).tree(depth=2)
    stored = len(explainer.receptive_fields)
    assert stored > 0
    with torch.no_grad():
        next(explainer.model.parameters()).mul_(1.0)  # in place: same values, new version
    assert explainer.weights_version() != before
    misses = explainer.receptive_fields.misses
    explainer.analyze(square_image).tree(depth=2)
    assert explainer.receptive_fields.misses > misses


def test_image_dependent_model_keeps_boxes_per_analysis(square_image):
    toy = ft.load_model("toy_squares")
    model = nn.Sequential(nn.SiLU(), toy.module)  # SiLU on the input: no fixed linearisation
    layers = [f"1.{name}" for name in toy.default_layers]
    explainer = ft.Explainer(model, layers, preprocess=toy.preprocess)
    analysis = explainer.analyze(square_image)
    assert not analysis.record.fixed_linearisation
    tree = analysis.tree(depth=2)
    assert all(n.box is not None for n in tree.walk())
    assert len(explainer.receptive_fields) == 0


class KeepsInput(torch.autograd.Function):
    """A custom function whose forward runs out of the mode's sight (like a compiled extension)
    and whose backward reads its input from ctx."""

    @staticmethod
    def forward(ctx, x):
        with torch._C.DisableTorchFunction():
            ctx.x = x.detach()
            return x * 1.0

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.x


RUNNING_MEAN, RUNNING_VAR = torch.zeros(4), torch.ones(4)  # made outside the forward pass
HIDDEN_OPS = {
    ".data": lambda h: h * h.data.mean((2, 3), keepdim=True),
    "view as another dtype": lambda h: h * h.view(torch.int32).float() * 1e-9,
    "batch norm with an input-dependent weight": lambda h: F.batch_norm(
        h, RUNNING_MEAN, RUNNING_VAR, weight=h.mean((0, 2, 3)), training=False
    ),
    "custom autograd function": KeepsInput.apply,
}


@pytest.mark.parametrize("name", HIDDEN_OPS)
def test_image_dependence_that_leaves_the_graph_is_detected(name):
    """Found in review: values that leave the graph, or a backward the mode cannot see."""
    model = Probe(HIDDEN_OPS[name]).eval()
    images = torch.rand(2, 1, 3, 12, 12, generator=torch.Generator().manual_seed(1)) * 4 - 2
    results = [linear_mode_gradient(model, x) for x in images]
    assert not torch.allclose(results[0][1], results[1][1]), "this op should make the linearisation image-dependent"
    assert not any(fixed for fixed, _ in results)
