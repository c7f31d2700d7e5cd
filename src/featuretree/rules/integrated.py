"""``integrated``: integrated gradients at the child layer, through the parent's path objective.

Children of node N are scored through ``J_path = delta(path) . a_N`` (the path-conditioned gradient
at N's layer, true-gradient rule): ``s_c = sum_hw a_c * mean_alpha dJ/da_c(alpha * a)``, from a zero
baseline to the actual activation a (midpoint rule, ``steps`` points). Completeness: the scores
sum to ``J(a) - J(0)`` up to the quadrature error. Where J is linear in the child layer (e.g. the
logits over an average pool) this equals gradient x activation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..analysis.interventions import DEFAULT_BATCH, needs_stacked_input, objective
from ..capture.forward import resolve_modules
from ..capture.hooks import copying_hook, forward_hooks, recording_hook
from ..core.errors import OptionError
from .memo import memoised_scores

if TYPE_CHECKING:
    from ..analysis.image_analysis import ImageAnalysis
    from ..core.units import Path, Unit

DEFAULT_STEPS = 16


def integrated_gradients(
    analysis: ImageAnalysis,
    path: Sequence[Unit],
    seed_mode: str = "sum",
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH,
) -> torch.Tensor:
    """Integrated gradients of J_path at the child layer, per channel, float64 [C]."""
    if steps < 1:
        raise OptionError(f"integrated gradients needs at least 1 step, got {steps}", "use 16 or more")
    path = analysis.validate_path(path)
    child_layer = analysis.layer_below(path[-1])
    parent = path[-1]
    modules = resolve_modules(analysis.explainer.model, [child_layer, parent.layer])
    weight = analysis.delta(path, "gradient", seed_mode)
    act = analysis.activation(child_layer)
    x = analysis.record.input.detach()
    alphas = (torch.arange(steps, dtype=act.dtype, device=act.device) + 0.5) / steps
    total = torch.zeros_like(act, dtype=torch.float64)
    for start in range(0, steps, batch_size):
        chunk = alphas[start : start + batch_size]
        z = (chunk.view(-1, *([1] * (act.dim() - 1))) * act).requires_grad_(True)
        store: dict[str, torch.Tensor] = {}
        # Downstream gets a fresh non-leaf copy of z on every forward: models that rectify the layer's output in
        # place (DenseNet's F.relu(features, inplace=True)) cannot modify a leaf, and a retried forward starts clean.
        hooks = [
            (modules[child_layer], copying_hook(z)),
            (modules[parent.layer], recording_hook(store, parent.layer)),
        ]
        with torch.enable_grad(), forward_hooks(hooks):
            try:
                analysis.explainer.model(x)
            except RuntimeError as err:
                if not needs_stacked_input(err):
                    raise
                store.clear()  # the model needs a full batch mid-network: stack the input instead
                analysis.explainer.model(x.expand(len(chunk), *x.shape[1:]))
            (grad,) = torch.autograd.grad(objective(store[parent.layer], weight).sum(), z, allow_unused=True)
        if grad is not None:
            total += grad.double().sum(0, keepdim=True)
    return analysis.layer_info(child_layer).layout.channel_totals(act.double() * total / steps)[0].cpu()


class IntegratedRule:
    name = "integrated"
    summary = f"integrated gradients at the child layer from a zero baseline ({DEFAULT_STEPS} steps)"
    backward = "gradient"

    def scores(self, analysis: ImageAnalysis, path: Path, seed_mode: str) -> torch.Tensor:
        return memoised_scores(analysis, self.name, path, seed_mode, lambda: integrated_gradients(analysis, path, seed_mode))
