"""Extra rules for scoring the children of a node, beside gradient x activation.

Both score channel c of the chain layer below node N through the parent's objective
``J_path = delta(path) . a_N`` (the path-conditioned gradient at N's layer, true-gradient rule):

- ``integrated``: integrated gradients at the child layer, from a zero baseline to the actual
  activation a: ``s_c = sum_hw a_c * mean_alpha dJ/da_c(alpha * a)`` (midpoint rule, ``steps``
  points). Completeness: the scores sum to ``J(a) - J(0)`` up to the quadrature error.
- ``ablation``: ``s_c = J(a) - J(a with channel c zeroed)``, exact and measured, one batched
  forward pass per chunk of channels (see featuretree.verify).

Where J is linear in the child layer (e.g. the logits over an average pool), both equal
gradient x activation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from .capture import resolve_modules
from .errors import OptionError
from .verify import DEFAULT_BATCH, _objective, _watch, ablate

if TYPE_CHECKING:
    from .engine import Analysis, Unit

DEFAULT_STEPS = 16


@contextlib.contextmanager
def _replaced(module: nn.Module, value: torch.Tensor) -> Iterator[None]:
    """Inside: ``module`` returns ``value`` instead of its output."""

    def hook(mod: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return value

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def integrated_gradients(
    analysis: Analysis,
    path: Sequence[Unit],
    seed_mode: str = "sum",
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH,
) -> torch.Tensor:
    """Integrated gradients of J_path at the child layer, per channel, float64 [C]."""
    if steps < 1:
        raise OptionError(f"integrated gradients needs at least 1 step, got {steps}", "use 16 or more")
    path = analysis.validate_path(path)
    index = analysis.layers.index(path[-1].layer)
    child_layer = analysis.layers[index - 1]
    parent = path[-1]
    modules = resolve_modules(analysis.explainer.model, [child_layer, parent.layer])
    weight = analysis.delta(path, "gradient", seed_mode)
    act = analysis.activation(child_layer)
    x = analysis.record.input.detach()
    alphas = (torch.arange(steps, dtype=act.dtype, device=act.device) + 0.5) / steps
    total = torch.zeros_like(act[0], dtype=torch.float64)
    for start in range(0, steps, batch_size):
        chunk = alphas[start : start + batch_size]
        z = (chunk.view(-1, *([1] * (act.dim() - 1))) * act).requires_grad_(True)
        store: dict[str, torch.Tensor] = {}
        with torch.enable_grad(), _replaced(modules[child_layer], z), _watch({parent.layer: modules[parent.layer]}, store):
            try:
                analysis.explainer.model(x)
            except RuntimeError:
                store.clear()  # the model needs a full batch mid-network: stack the input instead
                analysis.explainer.model(x.expand(len(chunk), *x.shape[1:]))
            objective = _objective(store[parent.layer], weight).sum()
            (grad,) = torch.autograd.grad(objective, z, allow_unused=True)
        if grad is not None:
            total += grad.double().sum(0)
    prod = act[0].double() * total / steps
    return (prod.flatten(1).sum(1) if prod.dim() == 3 else prod).cpu()


def ablation_scores(analysis: Analysis, path: Sequence[Unit], seed_mode: str = "sum", batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
    """Measured drop of J_path when each child channel alone is zeroed, float64 [C]."""
    path = analysis.validate_path(path)
    index = analysis.layers.index(path[-1].layer)
    channels = analysis.layer_info(analysis.layers[index - 1]).channels
    drops, _, _, _ = ablate(analysis, path, [[c] for c in range(channels)], seed_mode=seed_mode, batch_size=batch_size)
    return drops


def child_scores(analysis: Analysis, path: Sequence[Unit], rule: str, seed_mode: str = "sum") -> torch.Tensor:
    """Scores of the children of ``path[-1]`` under ``rule`` ("integrated" or "ablation"), memoised."""
    key = ("scores", rule, seed_mode, tuple(path))
    cached = analysis._memo.get(key)
    if cached is not None:
        return cached
    if rule not in ("integrated", "ablation"):
        raise OptionError(f"unknown scoring rule {rule!r}", "use integrated or ablation")
    # Both run forward passes with hooks on the shared model: one forward pass at a time (e.g. the explorer's threads).
    with analysis.explainer.forward_lock:
        cached = analysis._memo.get(key)  # another thread may have finished it meanwhile
        if cached is not None:
            return cached
        scores = integrated_gradients(analysis, path, seed_mode) if rule == "integrated" else ablation_scores(analysis, path, seed_mode)
    analysis._memo.put(key, scores)
    return scores
