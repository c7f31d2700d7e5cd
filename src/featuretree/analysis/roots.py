"""Reading a root: the top class, ``class:N`` / ``class:NAME``, ``LAYER:CHANNEL`` or a Unit; and
contrastive roots, ``class:A-class:B`` or ``LAYER:A-LAYER:B`` (the first minus the second)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..core.errors import UnitError, did_you_mean
from ..core.units import INTEGER, Unit

if TYPE_CHECKING:
    from .image_analysis import ImageAnalysis


def resolve_root(analysis: ImageAnalysis, root: str | Unit | None = None) -> Unit:
    """``None`` -> the top class logit (or, without logits in the chain, the top layer's strongest unit)."""
    if root is None or root == "":
        layer = analysis.logits_layer
        if layer is None:
            top = analysis.layers[-1]
            info = analysis.layer_info(top)
            act = analysis.activation(top)
            strength = torch.stack([info.layout.unit_values(act, c).max() for c in range(info.channels)])
            return Unit(top, int(strength.argmax()))
        return Unit(layer, int(analysis.logits.argmax()))
    if isinstance(root, Unit):
        unit = root
    elif root.startswith("class:"):
        first, sep, second = root[len("class:") :].partition("-class:")
        unit = class_unit(analysis, first.strip())
        if sep:
            other = class_unit(analysis, second.strip())
            if other.channel == unit.channel:
                raise UnitError(f"{root!r} contrasts a class with itself", "name two different classes")
            unit = Unit(unit.layer, unit.channel, other.channel)
    else:
        unit = Unit.parse(root)
    info = analysis.layer_info(unit.layer)
    for channel in unit.channels:
        if not 0 <= channel < info.channels:
            raise UnitError(f"unit {channel} is out of range for layer {unit.layer!r}", f"it has channels 0..{info.channels - 1}")
    return unit


def unit_label(analysis: ImageAnalysis, unit: Unit) -> str | None:
    """A logits unit's class name ("Egyptian cat", or "Egyptian cat − tabby" for a contrast); None elsewhere."""
    if unit.layer != analysis.logits_layer:
        return None
    return " − ".join(analysis.class_name(c) for c in unit.channels)


def class_unit(analysis: ImageAnalysis, text: str) -> Unit:
    """The logits unit of a class given by index or name."""
    layer = analysis.logits_layer
    if not analysis.has_classes:
        raise UnitError(
            f"this model has no classes: its output is {analysis.record.output_description}, not one [1, classes] tensor",
            "give the root as LAYER:CHANNEL (see `featuretree layers`)",
        )
    if layer is None:
        raise UnitError(
            "class roots need the logits layer at the top of the chain",
            "end --layers with the model's output layer, or give the root as LAYER:CHANNEL",
        )
    n = analysis.logits.numel()
    if INTEGER.fullmatch(text):
        index = int(text)
        if not 0 <= index < n:
            raise UnitError(f"class {index} is out of range", f"the model has classes 0..{n - 1}")
        return Unit(layer, index)
    class_names = analysis.explainer.class_names or []
    names = [s.lower() for s in class_names]
    if text.lower() in names:
        return Unit(layer, names.index(text.lower()))
    hint = did_you_mean(text, list(class_names))
    raise UnitError(f"unknown class {text!r}", hint or "give the class index, e.g. class:285")
