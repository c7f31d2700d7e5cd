"""User-facing errors. Each one reads as a single line: the problem, then the fix."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class FeatureTreeError(Exception):
    """Base class for mistakes a user can fix. The CLI prints ``str(err)`` with no traceback."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}; {fix}")


class ImageInputError(FeatureTreeError):
    """The image could not be read or is not acceptable."""


class ModelError(FeatureTreeError):
    """Unknown model, or a model whose structure the engine cannot use."""


class LayerError(FeatureTreeError):
    """A layer name that the model does not have, or that cannot be used in a chain."""


class UnitError(FeatureTreeError):
    """A unit, class or root specification that is malformed or out of range."""


class OptionError(FeatureTreeError):
    """An option value out of its allowed range."""


class GuidedUndefinedError(OptionError):
    """Guided backprop was asked of a model whose nonlinearities give it no meaning (GELU, softmax, ...)."""


class BypassWarning(UserWarning):
    """A chain that does not cut the network, accepted with ``allow_bypass``: shares are of a part."""


class OutputError(FeatureTreeError):
    """The output location cannot be written."""


def did_you_mean(name: str, candidates: list[str], limit: int = 3) -> str:
    """A short hint listing the closest names, for unknown-name errors."""
    close = difflib.get_close_matches(name, candidates, n=limit, cutoff=0.5)
    if not close:
        # Substring matches help with partial names such as "blocks.3".
        close = [c for c in candidates if name in c][:limit]
    return f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def check_choice(value: str, choices: Sequence[str], what: str) -> None:
    """Refuse ``value`` unless it is one of ``choices``, naming them."""
    if value not in choices:
        raise OptionError(f"unknown {what} {value!r}", f"use one of {', '.join(choices)}")
