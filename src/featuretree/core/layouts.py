"""Layer layouts: which axis of an activation is the channel, and what a position is.

Every module that reads or writes an activation per channel goes through a ``Layout``, so a new
layout is added here and nowhere else. Shapes and values carry the batch axis first: ``values``
is [B, ...], ``shape`` is the per-sample shape. Four layouts exist:

- channels-first maps [C, H, W] (convolutions);
- channels-last maps [H, W, C] (Swin stages, permuted ConvNeXt blocks);
- token sequences [N, C]: ``prefix`` leading tokens without a position (class, distillation,
  register tokens), then a patch grid of rows x cols tokens in row-major order (vision transformers);
- vectors [C] (linear layers, pooled features, logits).

A unit is (layer, channel) in every layout; its objective and its score sum over all its positions
(for tokens: every token, the prefix tokens included). Pictures use the positions that have a place
in the image: the map, or the patch grid.

``layout_for`` decides a layer's layout from its shape and the input size, and refuses what it cannot
tell apart (an error that names the ``--layout`` override), never guessing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .errors import LayerError

LAYOUT_NAMES: tuple[str, ...] = ("channels_first", "channels_last", "tokens", "vector")
_MAX_PREFIX_TOKENS = 16  # class + distillation + register tokens


class Layout:
    """How a chain layer's output is laid out. Subclasses define the channel axis and the positions."""

    name = "layout"
    kind = "layout"  # the name used by --layout
    spatial = False  # whether positions have places in the image

    def channels(self, shape: Sequence[int]) -> int:
        raise NotImplementedError

    def grid(self, shape: Sequence[int]) -> tuple[int, int]:
        """(rows, cols) of the positions that have a place in the image."""
        raise LayerError(f"a {self.name} layer has no positions", "pick a layer with a spatial map or tokens")

    def channel_totals(self, values: torch.Tensor) -> torch.Tensor:
        """[B, C]: each channel summed over all its positions."""
        raise NotImplementedError

    def keep_channel(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        """A copy of ``values`` that is zero outside ``channel``."""
        raise NotImplementedError

    def scale_channels(self, values: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """Row b of ``values`` times ``factors[b]`` per channel (factors [B, C])."""
        raise NotImplementedError

    def unit_values(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        """Sample 0's values of one channel at all its positions, flattened (what its objective sums)."""
        raise NotImplementedError

    def unit_map(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        """Sample 0's values of one channel over the image grid ([rows, cols]; [] for vectors)."""
        raise NotImplementedError

    def max_seed(self, like: torch.Tensor, channel: int) -> torch.Tensor:
        """One at the position where ``like``'s channel peaks (of all its positions), zeros elsewhere."""
        raise NotImplementedError

    def position_seed(self, like: torch.Tensor, position: tuple[int, int]) -> torch.Tensor:
        """Ones at every channel of one grid position of sample 0, zeros elsewhere."""
        raise LayerError(f"a {self.name} layer has no positions", "pick a layer with a spatial map or tokens")

    def grid_values(self, values: torch.Tensor) -> torch.Tensor:
        """[B, C, rows * cols]: every sample's channels at the grid positions, row-major (vectors: one position)."""
        raise NotImplementedError

    def point_seed(self, like: torch.Tensor, channel: int, position: tuple[int, int]) -> torch.Tensor:
        """One at ``channel`` and grid ``position`` of sample 0 (vectors: the channel), zeros elsewhere."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.kind


class ChannelsFirst(Layout):
    """Convolutional maps [C, H, W]."""

    name = "channels-first map [C, H, W]"
    kind = "channels_first"
    spatial = True

    def channels(self, shape: Sequence[int]) -> int:
        return int(shape[0])

    def grid(self, shape: Sequence[int]) -> tuple[int, int]:
        return int(shape[1]), int(shape[2])

    def channel_totals(self, values: torch.Tensor) -> torch.Tensor:
        return values.flatten(2).sum(2)

    def keep_channel(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        kept = torch.zeros_like(values)
        kept[:, channel] = values[:, channel]
        return kept

    def scale_channels(self, values: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        return values * factors.view(*factors.shape, 1, 1).to(values.dtype)

    def unit_values(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        return values[0, channel].reshape(-1)

    def unit_map(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        return values[0, channel]

    def max_seed(self, like: torch.Tensor, channel: int) -> torch.Tensor:
        seed = torch.zeros_like(like)
        row, col = divmod(int(self.unit_values(like, channel).argmax()), like.shape[-1])
        seed[0, channel, row, col] = 1.0
        return seed

    def position_seed(self, like: torch.Tensor, position: tuple[int, int]) -> torch.Tensor:
        seed = torch.zeros_like(like)
        seed[0, :, position[0], position[1]] = 1.0
        return seed

    def grid_values(self, values: torch.Tensor) -> torch.Tensor:
        return values.flatten(2)

    def point_seed(self, like: torch.Tensor, channel: int, position: tuple[int, int]) -> torch.Tensor:
        seed = torch.zeros_like(like)
        seed[0, channel, position[0], position[1]] = 1.0
        return seed


class ChannelsLast(Layout):
    """Maps with the channel last, [H, W, C]."""

    name = "channels-last map [H, W, C]"
    kind = "channels_last"
    spatial = True

    def channels(self, shape: Sequence[int]) -> int:
        return int(shape[2])

    def grid(self, shape: Sequence[int]) -> tuple[int, int]:
        return int(shape[0]), int(shape[1])

    def channel_totals(self, values: torch.Tensor) -> torch.Tensor:
        return values.sum((1, 2))

    def keep_channel(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        kept = torch.zeros_like(values)
        kept[..., channel] = values[..., channel]
        return kept

    def scale_channels(self, values: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        return values * factors.view(factors.shape[0], 1, 1, factors.shape[1]).to(values.dtype)

    def unit_values(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        return values[0, :, :, channel].reshape(-1)

    def unit_map(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        return values[0, :, :, channel]

    def max_seed(self, like: torch.Tensor, channel: int) -> torch.Tensor:
        seed = torch.zeros_like(like)
        row, col = divmod(int(self.unit_values(like, channel).argmax()), like.shape[2])
        seed[0, row, col, channel] = 1.0
        return seed

    def position_seed(self, like: torch.Tensor, position: tuple[int, int]) -> torch.Tensor:
        seed = torch.zeros_like(like)
        seed[0, position[0], position[1], :] = 1.0
        return seed

    def grid_values(self, values: torch.Tensor) -> torch.Tensor:
        return values.flatten(1, 2).transpose(1, 2)

    def point_seed(self, like: torch.Tensor, channel: int, position: tuple[int, int]) -> torch.Tensor:
        seed = torch.zeros_like(like)
        seed[0, position[0], position[1], channel] = 1.0
        return seed


class Tokens(Layout):
    """Token sequences [N, C]: ``prefix`` tokens without a place, then a rows x cols patch grid."""

    kind = "tokens"
    spatial = True

    def __init__(self, prefix: int, rows: int, cols: int) -> None:
        self.prefix, self.rows, self.cols = prefix, rows, cols
        self.name = f"tokens [N, C] ({prefix} + {rows}x{cols} patches)"

    def channels(self, shape: Sequence[int]) -> int:
        return int(shape[1])

    def grid(self, shape: Sequence[int]) -> tuple[int, int]:
        return self.rows, self.cols

    def channel_totals(self, values: torch.Tensor) -> torch.Tensor:
        return values.sum(1)

    def keep_channel(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        kept = torch.zeros_like(values)
        kept[:, :, channel] = values[:, :, channel]
        return kept

    def scale_channels(self, values: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        return values * factors.view(factors.shape[0], 1, factors.shape[1]).to(values.dtype)

    def unit_values(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        return values[0, :, channel]

    def unit_map(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        return values[0, self.prefix :, channel].reshape(self.rows, self.cols)

    def max_seed(self, like: torch.Tensor, channel: int) -> torch.Tensor:
        seed = torch.zeros_like(like)
        seed[0, int(self.unit_values(like, channel).argmax()), channel] = 1.0
        return seed

    def position_seed(self, like: torch.Tensor, position: tuple[int, int]) -> torch.Tensor:
        seed = torch.zeros_like(like)
        seed[0, self.prefix + position[0] * self.cols + position[1], :] = 1.0
        return seed

    def grid_values(self, values: torch.Tensor) -> torch.Tensor:
        return values[:, self.prefix :, :].transpose(1, 2)

    def point_seed(self, like: torch.Tensor, channel: int, position: tuple[int, int]) -> torch.Tensor:
        seed = torch.zeros_like(like)
        seed[0, self.prefix + position[0] * self.cols + position[1], channel] = 1.0
        return seed

    def __repr__(self) -> str:
        return f"tokens:{self.prefix}"


class Vector(Layout):
    """Vectors [C]: linear layers, pooled features, logits."""

    name = "vector [C]"
    kind = "vector"

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

    def unit_values(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        return values[0, channel : channel + 1]

    def unit_map(self, values: torch.Tensor, channel: int) -> torch.Tensor:
        return values[0, channel]

    def max_seed(self, like: torch.Tensor, channel: int) -> torch.Tensor:
        return self.keep_channel(torch.ones_like(like), channel)

    def grid_values(self, values: torch.Tensor) -> torch.Tensor:
        return values.unsqueeze(2)

    def point_seed(self, like: torch.Tensor, channel: int, position: tuple[int, int]) -> torch.Tensor:
        return self.keep_channel(torch.ones_like(like), channel)


CHANNELS_FIRST = ChannelsFirst()
CHANNELS_LAST = ChannelsLast()
VECTOR = Vector()


def _fits_image(rows: int, cols: int, input_hw: tuple[int, int]) -> bool:
    """Could a rows x cols grid be the image downsampled by one stride? Rounded down or up, rows / H and
    cols / W differ by less than 1 / min(H, W) (a square image: rows == cols)."""
    height, width = input_hw
    return 1 <= rows <= height and 1 <= cols <= width and abs(rows * width - cols * height) < max(height, width)


def _patch_grids(tokens: int, input_hw: tuple[int, int], prefix: int | None = None) -> list[tuple[int, int, int]]:
    """The (prefix, rows, cols) with prefix + rows * cols == tokens, the grid being the image cut into
    p x p patches (rounded down as a strided patch embedding does, or up as a padded one does). Of
    several, the fewest prefix tokens win (class, distillation and register tokens are few), exact
    patch sizes before rounded ones; ``prefix`` keeps only that count."""
    height, width = input_hw
    found: dict[tuple[int, int, int], bool] = {}  # grid -> whether its patch size divides the image
    for patch in range(1, max(height, width) + 1):
        for rows, cols in ((height // patch, width // patch), (-(-height // patch), -(-width // patch))):
            count = tokens - rows * cols
            if rows >= 1 and cols >= 1 and 0 <= count <= _MAX_PREFIX_TOKENS and (prefix is None or count == prefix):
                divides = height % patch == 0 and width % patch == 0
                found[(count, rows, cols)] = found.get((count, rows, cols), False) or divides
    if not found:
        return []
    fewest = min(grid[0] for grid in found)
    best = [grid for grid in found if grid[0] == fewest]
    exact = [grid for grid in best if found[grid]]
    return sorted(exact or best)


def _override_hint(name: str) -> str:
    return f"say which with --layout {name}=KIND (KIND: {', '.join(LAYOUT_NAMES)}; tokens:P for P leading non-patch tokens)"


def parse_layout(name: str, spec: str, shape: Sequence[int], input_hw: tuple[int, int]) -> Layout:
    """The layout a user named for a layer (``channels_first``, ``channels_last``, ``tokens``,
    ``tokens:P`` or ``vector``), checked against the layer's shape."""
    kind, _, arg = spec.strip().partition(":")
    rank = {"channels_first": 3, "channels_last": 3, "tokens": 2, "vector": 1}.get(kind)
    if rank is None:
        raise LayerError(f"unknown layout {spec!r} for layer {name!r}", f"use one of {', '.join(LAYOUT_NAMES)} (or tokens:P)")
    if len(shape) != rank:
        raise LayerError(
            f"layer {name!r} has output shape {[1, *shape]}, which cannot be a {kind} layout",
            f"a {kind} layer has {rank} axes besides the batch; check --layout",
        )
    if kind == "channels_first":
        return CHANNELS_FIRST
    if kind == "channels_last":
        return CHANNELS_LAST
    if kind == "vector":
        return VECTOR
    if arg and not arg.isdigit():
        raise LayerError(f"bad layout {spec!r} for layer {name!r}", "write tokens:P with P the number of leading non-patch tokens")
    grids = _patch_grids(int(shape[0]), input_hw, int(arg) if arg else None)
    if len(grids) != 1:
        what = "no patch grid" if not grids else f"{len(grids)} patch grids ({', '.join(f'{p} + {r}x{c}' for p, r, c in grids)})"
        raise LayerError(
            f"layer {name!r} has {shape[0]} tokens; {what} of a {input_hw[0]}x{input_hw[1]} image fit that",
            "name the number of leading non-patch tokens with --layout NAME=tokens:P" if grids else "check the input size and the layer",
        )
    return Tokens(*grids[0])


def layout_for(
    name: str, shape: Sequence[int], input_hw: tuple[int, int], producer: str | None = None, override: str | None = None
) -> Layout:
    """The layout of a chain layer's per-sample output ``shape`` for an input of ``input_hw`` pixels.

    A [a, b, c] output is a channels-first map when (b, c) fit the image's proportions and (a, b) do
    not, channels-last in the opposite case; [N, C] is tokens when N is a few prefix tokens plus
    exactly one patch grid of the image. A shape that fits both ways ([8, 8, 8] of an 8 x 8 image) is
    settled by ``producer``, the layout of the op that made the output ("channels_first" after a
    convolution, "channels_last" after a matrix product over the last axis), if known. Anything else is
    refused with the override to use.
    """
    if override is not None:
        return parse_layout(name, override, shape, input_hw)
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        return VECTOR
    if len(shape) == 3:
        first, last = _fits_image(shape[1], shape[2], input_hw), _fits_image(shape[0], shape[1], input_hw)
        if first and last and producer in ("channels_first", "channels_last"):
            return CHANNELS_FIRST if producer == "channels_first" else CHANNELS_LAST
        if first != last:
            return CHANNELS_FIRST if first else CHANNELS_LAST
        why = "either [C, H, W] or [H, W, C]" if first else "neither [C, H, W] nor [H, W, C] of this image"
        raise LayerError(f"layer {name!r} has output shape {[1, *shape]}, which could be {why}", _override_hint(name))
    if len(shape) == 2:
        grids = _patch_grids(shape[0], input_hw)
        if len(grids) == 1:
            return Tokens(*grids[0])
        why = "no patch grid of this image fits its" if not grids else "several patch grids fit its"
        raise LayerError(f"layer {name!r} has output shape {[1, *shape]}: {why} {shape[0]} tokens", _override_hint(name))
    raise LayerError(
        f"layer {name!r} has output shape {[1, *shape]}; a chain layer needs [1, C, H, W], [1, H, W, C], [1, N, C] or [1, C]",
        "pick convolutional, transformer-block or linear layers",
    )


def check_overrides(overrides: Mapping[str, str], layers: Sequence[str]) -> None:
    """Refuse --layout entries for layers that are not in the chain (a typo would otherwise be ignored)."""
    for layer in overrides:
        if layer not in layers:
            raise LayerError(f"--layout names {layer!r}, which is not a chain layer", f"chain layers: {', '.join(layers)}")
