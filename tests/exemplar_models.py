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
