"""Receptive fields: the one algorithm the engine and the exemplar index share.

The receptive field of a position of a chain layer is the central 90% of the input-gradient mass
of all the layer's channels there, with every rectifier open (the "linear" backward), so saturated
or dead units still show where they look. It depends on the layer and position only (and, unless
the linearisation is fixed, on the image), so boxes are cached per (layer, position): per analysis,
or per model and weights when no op but the rectifiers depends on the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..analysis.image_analysis import ImageAnalysis

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in input pixels
Position = tuple[int, int]  # (row, col) in a layer's map
MASS = 0.9


def central_interval(marginal: torch.Tensor, mass: float = MASS) -> tuple[int, int]:
    """[lo, hi) indices holding the central ``mass`` of a non-negative 1-D distribution."""
    cdf = marginal.cumsum(0) / marginal.sum()
    tail = (1.0 - mass) / 2
    lo = int(torch.searchsorted(cdf, torch.tensor(tail, dtype=cdf.dtype)))
    hi = int(torch.searchsorted(cdf, torch.tensor(1.0 - tail, dtype=cdf.dtype)))
    return lo, min(hi + 1, marginal.numel())


def mass_box(mass: torch.Tensor, position: Position, shape: Sequence[int]) -> Box:
    """The box holding the central mass of an input-gradient magnitude map [H, W]; with no mass at
    all, the position's footprint under a uniform stride."""
    height, width = mass.shape
    if float(mass.sum()) == 0.0:
        sy, sx = height / shape[0], width / shape[1]
        return (
            int(position[1] * sx),
            int(position[0] * sy),
            int(math.ceil((position[1] + 1) * sx)),
            int(math.ceil((position[0] + 1) * sy)),
        )
    top, bottom = central_interval(mass.sum(1))
    left, right = central_interval(mass.sum(0))
    return (left, top, right, bottom)


def receptive_fields(analysis: ImageAnalysis, layer: str, positions: Sequence[Position | None]) -> list[Box]:
    """The box of each position of ``layer`` (None: the whole image), computed once per position."""
    height, width = (int(s) for s in analysis.record.input.shape[-2:])
    if analysis.record.fixed_linearisation:
        model = analysis.explainer
        cache, scope = model.receptive_fields, ("rf", model.weights_version(), (height, width))
    else:
        cache, scope = analysis.memo, ("rf",)
    boxes: dict[Position, Box] = {}
    todo = []
    for pos in positions:
        if pos is None or pos in boxes:
            continue
        cached = cache.get((*scope, layer, pos))
        if cached is not None:
            boxes[pos] = cached
        else:
            boxes[pos] = (0, 0, 0, 0)
            todo.append(pos)
    if todo:
        act = analysis.activation(layer)
        info = analysis.layer_info(layer)
        seeds = [info.layout.position_seed(act, pos) for pos in todo]
        shape = info.grid
        for pos, grad in zip(todo, analysis.backward_many(layer, None, seeds, "linear")):
            boxes[pos] = mass_box(grad[0].abs().sum(0).double().cpu(), pos, shape)
            cache.put((*scope, layer, pos), boxes[pos])
    return [(0, 0, width, height) if pos is None else boxes[pos] for pos in positions]
