"""A tiny CNN with hand-set weights whose right tree is known by construction.

On a white square drawn on black:
- ``edges`` (5 channels): 0 left side, 1 right side, 2 top side, 3 bottom side, 4 brightness (a distractor).
- ``corners`` (5 channels): 0 top-left (from left + top edges), 1 top-right (right + top),
  2 bottom-left (left + bottom), 3 bottom-right (right + bottom), 4 a left-edge-only distractor.
- ``classifier`` (2 logits): "square" = 4 TL + 3 TR + 2 BL + 1 BR - 0.5 distractor, on the spatial mean.

So the tree for "square" must be TL, TR, BL, BR in that order (the distractor is a negative
contributor), and each corner's children are its two edges, the first-named edge first
(its corner weight is 2, the other's 1).
"""

from __future__ import annotations

import torch
from torch import nn

SQUARE_CLASSES = ("square", "line")
# (first edge, second edge) for each corner; the first gets weight 2, the second 1.
CORNER_EDGES = {0: (0, 2), 1: (1, 2), 2: (0, 3), 3: (1, 3)}
CORNER_WEIGHTS = (4.0, 3.0, 2.0, 1.0)


class ToySquareNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.edges = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU())
        self.corners = nn.Sequential(nn.Conv2d(5, 5, 5, padding=2), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(5, 2)
        self._set_weights()

    @torch.no_grad()
    def _set_weights(self) -> None:
        gray = torch.full((3,), 1.0 / 3.0)
        conv = self.edges[0]
        conv.weight.zero_()
        conv.bias.zero_()
        horizontal = torch.tensor([[-1.0, 0.0, 1.0]] * 3) / 3.0  # brightness rising left -> right
        vertical = horizontal.t()  # rising top -> bottom
        for channel, kernel in enumerate((horizontal, -horizontal, vertical, -vertical)):
            conv.weight[channel] = gray.view(3, 1, 1) * kernel
        conv.weight[4, :, 1, 1] = gray  # brightness distractor
        conv.bias[4] = -0.5

        conv = self.corners[0]
        conv.weight.zero_()
        conv.bias.zero_()
        # Corner c at the centre of the 5x5 window looks for its vertical-side edge in the half
        # of the window along that side and its horizontal-side edge in the half along the other.
        for corner, (side, cap) in CORNER_EDGES.items():
            rows = slice(2, 5) if corner in (0, 1) else slice(0, 3)  # side runs down from a top corner
            cols = slice(2, 5) if corner in (0, 2) else slice(0, 3)  # cap runs right from a left corner
            conv.weight[corner, side, rows, 2] = 2.0
            conv.weight[corner, cap, 2, cols] = 1.0
            conv.bias[corner] = -3.5
        conv.weight[4, 0, :, 2] = 1.0  # long left edges only
        conv.bias[4] = -1.0

        fc = self.classifier
        fc.weight.zero_()
        fc.bias.zero_()
        fc.weight[0, :4] = torch.tensor(CORNER_WEIGHTS)
        fc.weight[0, 4] = -0.5
        fc.weight[1, 4] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.corners(self.edges(x))
        return self.classifier(self.pool(h).flatten(1))
