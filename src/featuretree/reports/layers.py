"""Listing a model's layers: named_modules names, types and output shapes for one input."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..capture.hooks import forward_hooks


@dataclass(frozen=True)
class LayerRow:
    name: str
    type: str
    shape: tuple[int, ...] | None  # output shape without batch; None if not a tensor or not run
    calls: int
    in_chain: bool


def list_layers(model: nn.Module, size: int = 224, chain: Sequence[str] = (), device: str | torch.device = "cpu") -> list[LayerRow]:
    """Run one blank input through ``model`` and report every named module's output shape."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: dict[str, int] = {}

    def make_hook(name: str):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None

        return hook

    hooks = [(module, make_hook(name)) for name, module in model.named_modules() if name]
    with torch.no_grad(), forward_hooks(hooks):
        model.eval()(torch.zeros(1, 3, size, size, device=device))
    chain_set = set(chain)
    return [
        LayerRow(name, type(module).__name__, shapes.get(name), calls.get(name, 0), name in chain_set)
        for name, module in model.named_modules()
        if name
    ]


def format_layers(rows: Sequence[LayerRow], chain_only: bool = False, layouts: Mapping[str, str] | None = None, given: bool = False) -> str:
    """The listing; ``layouts`` gives each chain layer's layout (or the error that names --layout);
    ``given``: the chain is the user's (--layers), not the default."""
    layouts = layouts or {}
    lines = [f"{'':2}{'name':<32} {'type':<18} {'output shape':<18} note"]
    for row in rows:
        if chain_only and not row.in_chain:
            continue
        shape = "x".join(str(s) for s in row.shape) if row.shape else "-"
        note = f"called {row.calls} times (reused)" if row.calls > 1 else ("not run" if row.calls == 0 else "")
        if row.name in layouts:
            note = f"{layouts[row.name]} {note}".strip()
        lines.append(f"{'*' if row.in_chain else '':2}{row.name:<32} {row.type:<18} {shape:<18} {note}".rstrip())
    which = "the chain given with --layers" if given else "the default chain"
    lines.append(f"* = in {which} (input side first; the tree goes down it from the root)")
    return "\n".join(lines)
