"""Where in a model things happen: how often each module runs, and which modules compute the
nonlinearities that are not rectifiers (so `featuretree check` can say "gelu in blocks.*.mlp.act").

A separate forward pass from the analysis's, with a pre- and a post-hook on every module (only here:
the analysis's capture stays as cheap as it is); all of them are removed in ``finally``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .gates import RectifierGates
from .hooks import forward_hooks, forward_pre_hooks
from .rectifiers import BackwardRule


@dataclass(frozen=True)
class ModelSites:
    calls: dict[str, int]  # named module -> calls in one forward pass
    nonlinearities: dict[str, tuple[str, ...]]  # function name -> modules (innermost running) that called it
    # Every input-dependent call that keeps receptive fields from being shared (nonlinearities, max pooling,
    # ops not on capture.linearity's list), with the modules that called it.
    unlisted: dict[str, tuple[str, ...]]


def scan_model(model: nn.Module, x: torch.Tensor) -> ModelSites:
    """One forward pass of ``x`` recording module calls and where each non-rectifier nonlinearity ran."""
    named = [(name, module) for name, module in model.named_modules() if name]
    calls: dict[str, int] = {}
    stack: list[str] = []

    def enter(name: str):
        def hook(module, inputs) -> None:
            calls[name] = calls.get(name, 0) + 1
            stack.append(name)

        return hook

    def leave(name: str):
        def hook(module, inputs, output) -> None:
            if stack and stack[-1] == name:
                stack.pop()

        return hook

    gates = RectifierGates(BackwardRule())
    gates.scope = lambda: stack[-1] if stack else "(the model's own forward)"
    x = x.detach().clone().requires_grad_(True)
    gates.input = x
    pre, post = ((m, enter(n)) for n, m in named), ((m, leave(n)) for n, m in named)
    with forward_pre_hooks(pre), forward_hooks(post), torch.enable_grad(), gates:
        model(x)
    return ModelSites(
        calls,
        {name: tuple(sorted(where)) for name, where in sorted(gates.sites.items())},
        {name: tuple(sorted(where)) for name, where in sorted(gates.unlisted_sites.items())},
    )


def name_patterns(names: Iterable[str]) -> list[str]:
    """Module names with the numbered parts that differ starred, each pattern once: blocks.0.mlp.act,
    blocks.1.mlp.act -> blocks.*.mlp.act; encoder_layer_0, encoder_layer_1 -> encoder_layer_*."""
    groups: dict[str, list[list[str]]] = {}
    for name in names:
        parts = name.split(".")
        groups.setdefault(".".join(re.sub(r"\d+", "*", p) for p in parts), []).append(parts)
    patterns = []
    for template, members in groups.items():
        starred = template.split(".")
        patterns.append(".".join(col[0] if len(set(col)) == 1 else starred[i] for i, col in enumerate(zip(*members))))
    return sorted(patterns)
