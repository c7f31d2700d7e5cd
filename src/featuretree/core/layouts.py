"""Layer layouts: which axis of an activation is the channel, and what a position is.

Every module that reads or writes an activation per channel goes through a ``Layout``, so a new
layout (token sequences, channels-last maps) is added here and nowhere else. Shapes and values
carry the batch axis first: ``values`` is [B, ...], ``shape`` is the per-sample shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import LayerError


class Layout:
    """How a chain layer's output is laid out. Subclasses define the channel axis."""

    name = "layout"
    spatial = False  # whether positions form a 2-D map over the image

    def channels(self, shape: Sequence[int]) -> int:
        raise NotImplementedError

    def channel_totals(self, values: torch.Tensor) -> torch.Tensor:
        """[B, C]: each channel summed over all its positions."""
        raise NotImplementedError

    def keep_channel(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        """A copy of ``values`` that is zero outside ``channel``."""
        raise NotImplementedError

    def scale_channels(self, values: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """Row b of ``values`` times ``factors[b]`` per channel (factors [B, C])."""
        raise NotImplementedError

    def unit_map(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        """Sample 0's values of one channel over its positions ([H, W] for maps, [] for vectors)."""
        raise NotImplementedError

    def position_seed(self, like: torch.Tensor, position: tuple[int, int]) -> torch.Tensor:
        """Ones at every channel of one position of sample 0, zeros elsewhere."""
        raise LayerError(f"a {self.name} layer has no positions", "pick a layer with a spatial map")


class ChannelsFirst(Layout):
    """Convolutional maps [C, H, W]."""

    name = "channels-first map [C, H, W]"
    spatial = True

    def channels(self, shape: Sequence[int]) -> int:
        return int(shape[0])

    def channel_totals(self, values: torch.Tensor) -> torch.Tensor:
        return values.flatten(2).sum(2)

    def keep_channel(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        kept = torch.zeros_like(values)
        kept[:, channel] = values[:, channel]
        return kept

    def scale_channels(self, values: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        return values * factors.view(*factors.shape, 1, 1).to(values.dtype)

    def unit_map(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        return values[0, channel]

    def position_seed(self, like: torch.Tensor, position: tuple[int, int]) -> torch.Tensor:
        seed = torch.zeros_like(like)
        seed[0, :, position[0], position[1]] = 1.0
        return seed


class Vector(Layout):
    """Vectors [C]: linear layers, pooled features, logits."""

    name = "vector [C]"

    def channels(self, shape: Sequence[int]) -> int:
        return int(shape[0])

    def channel_totals(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def keep_channel(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        kept = torch.zeros_like(values)
        kept[:, channel] = values[:, channel]
        return kept

    def scale_channels(self, values: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        return values * factors.to(values.dtype)

    def unit_map(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        return values[0, channel]


CHANNELS_FIRST = ChannelsFirst()
VECTOR = Vector()


def layout_for(name: str, shape: Sequence[int]) -> Layout:
    """The layout of a chain layer's per-sample output shape; unknown shapes are refused, never guessed."""
    if len(shape) == 3:
        return CHANNELS_FIRST
    if len(shape) == 1:
        return VECTOR
    raise LayerError(
        f"layer {name!r} has output shape {[1, *shape]}; a chain layer needs [1, C, H, W] or [1, C]",
        "pick convolutional or linear layers",
    )
