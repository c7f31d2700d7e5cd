"""Interventions: re-run the analysed image with one chain layer's channels scaled per row.

Many interventions run as one batched forward pass: a hook on the chain layer's module
broadcasts its (batch-1) output to B rows and scales each row's channels by its own factors,
so the layers below run once (``share_prefix=True``). A model that mixes that batch with an
earlier batch-1 tensor (e.g. concatenates them) fails with a size mismatch; only then is the
input stacked B times instead. Any other error is the model's own and is raised at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..capture.forward import resolve_modules
from ..capture.hooks import forward_hooks, watching
from ..core.errors import OptionError, UnitError
from ..core.layouts import Layout

if TYPE_CHECKING:
    from ..core.units import Unit
    from .image_analysis import ImageAnalysis

DEFAULT_BATCH = 64

# PyTorch's wording when tensors of batch B and batch 1 meet where they cannot broadcast.
_SIZE_MISMATCH = re.compile(r"[Ss]izes? of tensors? .*must match|must match the size of tensor|size mismatch|shape .* is invalid for input")


def needs_stacked_input(err: RuntimeError) -> bool:
    """Whether a shared-prefix pass failed only because the model cannot take a batch mid-network."""
    return not isinstance(err, torch.OutOfMemoryError) and bool(_SIZE_MISMATCH.search(str(err)))


def _scaling_hook(layout: Layout, factors: torch.Tensor, share_prefix: bool):
    def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        if share_prefix:
            output = output.expand(factors.shape[0], *output.shape[1:])
        return layout.scale_channels(output, factors)

    return hook


def scaled_forward(
    analysis: ImageAnalysis,
    layer: str,
    factors: torch.Tensor,
    watch: Sequence[str],
    *,
    share_prefix: bool = True,
) -> dict[str, torch.Tensor]:
    """One no-grad forward pass of the analysed image with ``layer``'s channels multiplied per row
    by ``factors`` [B, C]. Returns the outputs of the ``watch`` layers, each with B rows."""
    model = analysis.explainer.model
    modules = resolve_modules(model, [layer, *watch])
    layout = analysis.layer_info(layer).layout
    x = analysis.record.input.detach()
    factors = factors.to(x.device)
    rows = factors.shape[0]
    store: dict[str, torch.Tensor] = {}
    watched = {name: modules[name] for name in watch}
    if share_prefix:
        try:
            with (
                torch.no_grad(),
                forward_hooks([(modules[layer], _scaling_hook(layout, factors, True))]),
                watching(watched, store, stop=True),
            ):
                model(x)
            if all(store[name].shape[0] == rows for name in watch):
                return store
        except RuntimeError as err:
            if not needs_stacked_input(err):
                raise
        store.clear()
    with torch.no_grad(), forward_hooks([(modules[layer], _scaling_hook(layout, factors, False))]), watching(watched, store, stop=True):
        model(x.expand(rows, *x.shape[1:]))
    return store


def objective(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Row-wise sum(weight * values) in float64; weight has one row."""
    return (values.double() * weight.double()).flatten(1).sum(1)


@dataclass(frozen=True)
class Ablation:
    """What zeroing each set of child channels did, measured in one batched pass per chunk."""

    parent_drop: torch.Tensor  # [n] float64: J_path(x) - J_path(x | a_S = 0)
    root_drop: torch.Tensor  # [n] float64: root objective(x) - root objective(x | a_S = 0)
    parent_value: float  # J_path(x)
    root_value: float  # root objective(x)
    logit_drops: torch.Tensor | None = None  # [n, classes] float64: logits(x) - logits(x | a_S = 0), when asked


def ablation(
    analysis: ImageAnalysis,
    path: Sequence[Unit],
    channel_sets: Sequence[Sequence[int]],
    *,
    seed_mode: str = "sum",
    batch_size: int = DEFAULT_BATCH,
    share_prefix: bool = True,
    logits: bool = False,
) -> Ablation:
    """Zero each set of child channels (jointly) below ``path[-1]``.

    - parent_drop(S) = J_path(x) - J_path(x | a_S = 0), where J_path = delta(path) . a_N is the
      parent's objective (for the root, the root objective itself); gradient x activation is its
      first-order estimate.
    - root_drop(S): the drop of the root objective (seed . a_root), with no path conditioning.
    - with ``logits`` (a chain that ends in the model's logits), every class's logit drop too: what the
      child does for each class on this image, from the same passes.
    """
    if batch_size < 1:
        raise OptionError(f"batch size must be at least 1, got {batch_size}", "use 1 or more")
    path = analysis.validate_path(path)
    if path[-1].layer == analysis.layers[0]:
        raise UnitError(f"{path[-1]} is in the first chain layer; there is nothing below it to ablate", "verify a deeper node")
    child_layer = analysis.layer_below(path[-1])
    channels = analysis.layer_info(child_layer).channels
    for group in channel_sets:
        for c in group:
            if not 0 <= int(c) < channels:
                raise UnitError(f"channel {c} is out of range for layer {child_layer!r}", f"it has channels 0..{channels - 1}")
    parent, root = path[-1], path[0]
    parent_weight = analysis.delta(path, "gradient", seed_mode)
    root_weight = analysis.seed(root, seed_mode)
    parent_value = float(objective(analysis.activation(parent.layer), parent_weight)[0])
    root_value = float(objective(analysis.activation(root.layer), root_weight)[0])
    logits_layer = analysis.logits_layer if logits else None
    watch = list(dict.fromkeys([parent.layer, root.layer, *([logits_layer] if logits_layer else [])]))
    parent_drops, root_drops, logit_drops = [], [], []
    # Row 0 of every chunk is the unablated image, so each drop compares two rows of one batched pass.
    step = max(1, batch_size - 1)
    for start in range(0, len(channel_sets), step):
        chunk = channel_sets[start : start + step]
        masks = torch.ones(len(chunk) + 1, channels)
        for row, group in enumerate(chunk, start=1):
            masks[row, list(group)] = 0.0
        out = scaled_forward(analysis, child_layer, masks, watch, share_prefix=share_prefix)
        p = objective(out[parent.layer], parent_weight).cpu()
        r = objective(out[root.layer], root_weight).cpu()
        parent_drops.append(p[0] - p[1:])
        root_drops.append(r[0] - r[1:])
        if logits_layer:
            rows = out[logits_layer].double().flatten(1).cpu()
            logit_drops.append(rows[:1] - rows[1:])
    if not parent_drops:
        empty = torch.zeros(0, dtype=torch.float64)
        return Ablation(empty, empty.clone(), parent_value, root_value, None)
    return Ablation(
        torch.cat(parent_drops), torch.cat(root_drops), parent_value, root_value, torch.cat(logit_drops) if logit_drops else None
    )


def intervene(analysis: ImageAnalysis, units: Sequence[Unit], scale: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The analysed image's output with every unit of ``units`` (any chain layers, several at once)
    multiplied by ``scale``: one no-grad forward pass with a scaling hook on each touched layer.

    Returns the model output (batch 1) and the outputs of every chain layer, after the intervention.
    """
    if not units:
        raise UnitError("no units to intervene on", "name at least one, e.g. --units _blocks.14:6")
    per_layer: dict[str, list[int]] = {}
    for unit in units:
        if unit.contrast is not None:
            raise UnitError(f"{unit} is a contrast, not a unit to scale", "name each unit as LAYER:CHANNEL")
        info = analysis.layer_info(unit.layer)
        if not 0 <= unit.channel < info.channels:
            raise UnitError(f"unit {unit.channel} is out of range for layer {unit.layer!r}", f"it has channels 0..{info.channels - 1}")
        per_layer.setdefault(unit.layer, []).append(unit.channel)
    model = analysis.explainer.model
    modules = resolve_modules(model, analysis.layers)
    x = analysis.record.input.detach()
    hooks = []
    for layer, channels in per_layer.items():
        factors = torch.ones(1, analysis.layer_info(layer).channels, device=x.device)
        factors[0, channels] = float(scale)
        hooks.append((modules[layer], _scaling_hook(analysis.layer_info(layer).layout, factors, False)))
    store: dict[str, torch.Tensor] = {}
    with analysis.explainer.forward_lock, torch.no_grad(), forward_hooks(hooks), watching(modules, store):
        output = model(x)
    return output, store


@dataclass(frozen=True)
class InterventionResult:
    """What scaling some units did to the prediction and to the root objective, on one image."""

    units: list[str]
    scale: float
    root: str
    root_before: float
    root_after: float
    top_before: list[dict[str, object]]  # each: index, name, logit, probability
    top_after: list[dict[str, object]]
    # The classes of top_before, in its order, after the intervention (a class may leave the top 5).
    top_before_after: list[dict[str, object]]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _top(analysis: ImageAnalysis, logits: torch.Tensor, n: int) -> list[dict[str, object]]:
    _, indices = logits.double().topk(min(n, logits.numel()))
    return _classes(analysis, logits, [int(i) for i in indices])


def _classes(analysis: ImageAnalysis, logits: torch.Tensor, indices: Sequence[int]) -> list[dict[str, object]]:
    probabilities = logits.double().softmax(0)
    return [
        {"index": i, "name": analysis.class_name(i), "logit": float(logits[i]), "probability": float(probabilities[i])} for i in indices
    ]


def intervention_result(
    analysis: ImageAnalysis, units: Sequence[Unit], scale: float = 0.0, root: str | Unit | None = None, top: int = 5
) -> InterventionResult:
    """``intervene`` and compare: the top classes before and after, and the root objective (the sum of
    the root unit's map, or its logit) before and after."""
    root_unit = analysis.resolve_root(root)
    output, store = intervene(analysis, units, scale)
    seed = analysis.seed(root_unit, "sum")
    before = float(objective(analysis.activation(root_unit.layer), seed)[0])
    after = float(objective(store[root_unit.layer], seed)[0])
    has_classes = analysis.has_classes
    before_top = _top(analysis, analysis.logits, top) if has_classes else []
    after_logits = output.detach()[0].float().cpu() if has_classes else None
    return InterventionResult(
        units=[str(u) for u in units],
        scale=float(scale),
        root=str(root_unit),
        root_before=before,
        root_after=after,
        top_before=before_top,
        top_after=_top(analysis, after_logits, top) if has_classes else [],
        top_before_after=_classes(analysis, after_logits, [c["index"] for c in before_top]) if has_classes else [],
    )
