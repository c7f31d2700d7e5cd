"""Units, paths and the per-layer facts every other module speaks in."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import UnitError
from .layouts import Layout

INTEGER = re.compile(r"-?[0-9]+")  # str.isdigit() also accepts "²", which int() refuses


@dataclass(frozen=True, order=True)
class Unit:
    """One channel of one chain layer; its value is summed over all the layer's positions."""

    layer: str
    channel: int

    def __str__(self) -> str:
        return f"{self.layer}:{self.channel}"

    @classmethod
    def parse(cls, text: str) -> Unit:
        layer, sep, channel = text.rpartition(":")
        if not sep or not layer or not INTEGER.fullmatch(channel.strip()):
            raise UnitError(f"cannot read unit {text!r}", "write it as LAYER:CHANNEL, e.g. _blocks.15:7")
        return cls(layer, int(channel))


Path = tuple[Unit, ...]


def path_id(path: Sequence[Unit]) -> str:
    return "/".join(str(u) for u in path)


def parse_path(text: str) -> Path:
    if not text:
        raise UnitError("empty path", "give at least the root unit, LAYER:CHANNEL")
    return tuple(Unit.parse(part) for part in text.split("/"))


@dataclass(frozen=True)
class LayerInfo:
    name: str
    type: str
    shape: tuple[int, ...]  # without the batch dimension
    layout: Layout  # decided once per analysis by ``layouts.layout_for``

    @property
    def channels(self) -> int:
        return self.layout.channels(self.shape)

    @property
    def spatial(self) -> bool:
        return self.layout.spatial

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the positions with a place in the image (spatial layouts only)."""
        return self.layout.grid(self.shape)


@dataclass(frozen=True)
class ClassScore:
    index: int
    name: str
    probability: float
    logit: float
