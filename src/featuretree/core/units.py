"""Units, paths and the per-layer facts every other module speaks in."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import UnitError
from .layouts import Layout

INTEGER = re.compile(r"-?[0-9]+")  # str.isdigit() also accepts "²", which int() refuses


# "L:A-L:B": a contrastive unit, channel A minus channel B of one layer (the layer name may hold "-").
_CONTRAST = re.compile(r"(?P<layer>.+):(?P<a>[0-9]+)-(?P<other>.+):(?P<b>[0-9]+)")


@dataclass(frozen=True, order=True)
class Unit:
    """One channel of one chain layer; its value is summed over all the layer's positions.

    With ``contrast`` (a root only), the unit is channel ``channel`` minus channel ``contrast`` of the
    same layer: "why Egyptian cat rather than tabby" is ``Unit("_fc", 285, contrast=281)``.
    """

    layer: str
    channel: int
    contrast: int | None = None

    def __str__(self) -> str:
        if self.contrast is None:
            return f"{self.layer}:{self.channel}"
        return f"{self.layer}:{self.channel}-{self.layer}:{self.contrast}"

    @property
    def channels(self) -> tuple[int, ...]:
        """The channels the unit reads: its own, then the one it is contrasted with."""
        return (self.channel,) if self.contrast is None else (self.channel, self.contrast)

    @property
    def signs(self) -> tuple[float, ...]:
        """The weight of each of ``channels`` in the unit's value."""
        return (1.0,) if self.contrast is None else (1.0, -1.0)

    @classmethod
    def parse(cls, text: str) -> Unit:
        contrast = _CONTRAST.fullmatch(text.strip())
        if contrast:
            if contrast["layer"] != contrast["other"]:
                raise UnitError(
                    f"cannot contrast units of two layers ({contrast['layer']!r} and {contrast['other']!r})",
                    "both sides of LAYER:A-LAYER:B name one layer",
                )
            if contrast["a"] == contrast["b"]:
                raise UnitError(f"{text!r} contrasts a unit with itself", "name two different channels")
            return cls(contrast["layer"], int(contrast["a"]), int(contrast["b"]))
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
