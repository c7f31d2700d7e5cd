"""``guided``: gradient x activation with guided backprop's rectifier rule, as the 2015 original did."""

from __future__ import annotations

from .gradient import GradientRule


class GuidedRule(GradientRule):
    """The same score as ``gradient``; paths are conditioned with guided backprop's backward."""

    name = "guided"
    summary = "the original's guided backprop (negative gradients stopped at every rectifier)"
    backward = "guided"
