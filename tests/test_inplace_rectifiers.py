"""In-place rectifiers whose return value the model ignores still rectify under capture."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from featuretree.capture.forward import capture_forward

STATEMENTS = {
    "torch.relu_": lambda y: torch.relu_(y),
    "F.relu_": lambda y: F.relu_(y),
    "Tensor.relu_": lambda y: y.relu_(),
    "F.relu(inplace=True)": lambda y: F.relu(y, inplace=True),
    "F.relu6(y, True)": lambda y: F.relu6(y, True),
    "F.hardtanh_(0, 6)": lambda y: F.hardtanh_(y, 0.0, 6.0),
    "nn.ReLU(inplace=True)": nn.ReLU(inplace=True),
}


class IgnoresReturn(nn.Module):
    def __init__(self, statement) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 6, 3, padding=1)
        self.second = nn.Conv2d(6, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)
        self.statement = statement

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.first(x)
        self.statement(y)  # the rectified value is only in y
        return self.head(self.second(y).mean((2, 3)))


@pytest.mark.parametrize("name", STATEMENTS)
def test_capture_keeps_in_place_semantics(name):
    torch.manual_seed(0)
    model = IgnoresReturn(STATEMENTS[name]).eval()
    x = torch.randn(1, 3, 10, 10) * 3
    plain_x = x.clone().requires_grad_(True)
    plain = model(plain_x)
    (plain_grad,) = torch.autograd.grad(plain[0, 1], plain_x)

    record = capture_forward(model, x, ["first", "second"])
    assert record.rectifier_count == 1
    torch.testing.assert_close(record.output, plain)
    (grad,) = torch.autograd.grad(record.output[0, 1], record.input, retain_graph=True)
    torch.testing.assert_close(grad, plain_grad)
    with record.rule.use("guided"):  # the rule switch reaches the in-place rectifier too
        (guided,) = torch.autograd.grad(record.output[0, 1], record.input, retain_graph=True)
    assert not torch.allclose(guided, grad)
