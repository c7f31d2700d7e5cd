"""Models loaded by the exemplar tests through ``--model tests/exemplar_models.py:FUNCTION``."""

from __future__ import annotations

import time

import torch

from featuretree.models.toy import ToySquareNet
from featuretree.models.zoo import ZooModel, load_model


class SlowToySquareNet(ToySquareNet):
    """The hand-set toy net, slowed down so a test can kill the indexer between batches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.15)
        return super().forward(x)


def slow_toy() -> ZooModel:
    zoo = load_model("toy_squares")
    zoo.module = SlowToySquareNet().eval()
    zoo.name = "slow_toy"
    return zoo


def draw_weights(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter drawn from N(0, 0.5^2), in parameter order: the random test nets' weights."""
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


class SiluMaxPoolNet(torch.nn.Module):
    """Random weights, SiLU and max-pool: its linearised backward (so a receptive field) depends on the image."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.SiLU())
        self.pooled = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.deep = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.SiLU())
        self.fc = nn.Linear(8, 3)
        draw_weights(self, torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.deep(self.pooled(self.stem(x))).mean((2, 3)))


def silu_maxpool() -> ZooModel:
    zoo = load_model("toy_squares")  # its 32 px preprocessing
    return ZooModel(
        name="silu_maxpool",
        module=SiluMaxPoolNet().eval(),
        preprocess=zoo.preprocess,
        class_names=["a", "b", "c"],
        default_layers=["stem", "pooled", "deep", "fc"],
        description="random SiLU / max-pool net (tests)",
    )


class VariedClassNet(torch.nn.Module):
    """Random ReLU convolutions (a chain that cuts) whose three logits are centred on coloured block images,
    so such images are predicted as different classes (``--predicted`` makes several graphs)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.deep = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 3)
        generator = torch.Generator().manual_seed(2)
        draw_weights(self, generator)
        with torch.no_grad():
            blocks = torch.rand(64, 3, 4, 4, generator=generator).repeat_interleave(8, 2).repeat_interleave(8, 3)
            centre = self.deep(self.mid(self.stem(blocks))).mean((2, 3)).mean(0)
            self.fc.bias.copy_(-self.fc.weight @ centre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.deep(self.mid(self.stem(x))).mean((2, 3)))


def varied_classes() -> ZooModel:
    zoo = load_model("toy_squares")  # its 32 px preprocessing, inputs in [0, 1]
    return ZooModel(
        name="varied_classes",
        module=VariedClassNet().eval(),
        preprocess=zoo.preprocess,
        class_names=["red-ish", "green-ish", "blue-ish"],
        default_layers=["stem", "mid", "deep", "fc"],
        description="random ReLU net with centred logits (tests)",
    )
