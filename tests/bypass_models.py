"""Small nets for the cut check: a residual stage, two parallel branches, a dense (concatenating) block,
and a linear net with a skip whose first-order contributions are exact."""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """conv1 -> relu -> conv2, plus the block's input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(self.relu(self.conv1(x))))


class ResNetLike(nn.Module):
    """stem -> layer1 (two residual blocks) -> layer2 (strided conv + residual block) -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.layer1 = nn.Sequential(Residual(8), Residual(8))
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), Residual(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer2(self.layer1(self.stem(x)))).flatten(1))


class Mixed(nn.Module):
    """Inception-style: two branches of the same input, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.branch1 = nn.Sequential(nn.Conv2d(8, 6, 1), nn.ReLU())
        self.branch2 = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x)], 1)


class InceptionLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.mixed = Mixed()
        self.head = nn.Conv2d(12, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.mixed(self.stem(x))).mean((2, 3)))


class DenseBlock(nn.Module):
    """DenseNet-style: each layer sees the concatenation of the block input and every earlier layer."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(channels, growth, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(channels + growth, growth, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.layer1(x)
        return torch.cat([x, first, self.layer2(torch.cat([x, first], 1))], 1)


class DenseNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.dense = DenseBlock(8, 6)
        self.transition = nn.Conv2d(20, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.transition(self.dense(self.stem(x))).mean((2, 3)))


class Join(nn.Module):
    """main(m) + skip(s), both linear without bias."""

    def __init__(self, main_in: int, skip_in: int, out: int) -> None:
        super().__init__()
        self.main = nn.Linear(main_in, out, bias=False)
        self.skip = nn.Linear(skip_in, out, bias=False)

    def forward(self, main: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.main(main) + self.skip(skip)


class LinearSkip(nn.Module):
    """No biases, no nonlinearity: a = A x, b = B a + S x, out = C b + T a. Every first-order
    contribution is exact, so the share of the evidence that goes around a layer is known in closed form:
    'b' is bypassed by T a (from chain layer 'a'), 'a' by S x (from the input)."""

    def __init__(self, size: int = 8) -> None:
        super().__init__()
        pixels = 3 * size * size
        self.a = nn.Linear(pixels, 5, bias=False)
        self.b = Join(5, pixels, 4)
        self.out = Join(4, 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        a = self.a(flat)
        return self.out(self.b(a, flat), a)


def seeded(net: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in net.parameters():
        nn.init.normal_(p, std=0.3)
    return net.eval()
