"""The scoring-rule registry: every surface (CLI, server, evaluate, docs) lists rules from here.

A rule scores the children of a node: one float64 value per channel of the chain layer below
the node's, its signed contribution to the node's path objective. Add a rule by writing a module
with a class that follows ``ScoringRule`` and calling ``register`` (see rules/__init__.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from ..analysis.gradients import PATH_BACKWARDS
from ..core.errors import OptionError, check_choice

if TYPE_CHECKING:
    import torch

    from ..analysis.image_analysis import ImageAnalysis
    from ..core.units import Path


class ScoringRule(Protocol):
    name: str  # what users type: --rule NAME, ?rule=NAME
    summary: str  # one line for help texts, the OpenAPI schema and the docs table
    # The rectifier backward ("gradient" or "guided") that conditions paths and draws the
    # rule's pictures; rules that only change how children are scored use "gradient".
    backward: str

    def scores(self, analysis: ImageAnalysis, path: Path, seed_mode: str) -> torch.Tensor:
        """[C] float64 on the CPU: each channel of the layer below ``path[-1]``, scored."""
        ...


_RULES: dict[str, ScoringRule] = {}


def register(rule: ScoringRule) -> ScoringRule:
    """Add ``rule``; its name must be new."""
    if rule.name in _RULES:
        raise OptionError(f"a scoring rule named {rule.name!r} is already registered", "pick another name")
    check_choice(rule.backward, PATH_BACKWARDS, f"backward of rule {rule.name!r}")
    _RULES[rule.name] = rule
    return rule


def unregister(name: str) -> None:
    _RULES.pop(name, None)


@contextmanager
def registered(rule: ScoringRule) -> Iterator[ScoringRule]:
    """Inside: ``rule`` is registered (for tests and experiments)."""
    register(rule)
    try:
        yield rule
    finally:
        unregister(rule.name)


def rule_names() -> tuple[str, ...]:
    return tuple(_RULES)


def get_rule(name: str) -> ScoringRule:
    check_choice(name, rule_names(), "rule")
    return _RULES[name]


def rules_help() -> str:
    """``name (summary)`` for every rule, for help texts."""
    return "; ".join(f"{rule.name}: {rule.summary}" for rule in _RULES.values())
