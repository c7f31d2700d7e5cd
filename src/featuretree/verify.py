"""Edge verification by intervention: zero child channels in a real forward pass and measure.

For a node N reached by ``path`` (root first) and a set S of channels of the chain layer below N:

- ``parent_drop(S) = J_path(x) - J_path(x | a_S = 0)`` where ``J_path = delta(path) . a_N`` is the
  parent's objective, i.e. N's activation weighted by the path-conditioned gradient (for the root
  this *is* the root objective). Gradient x activation is the first-order estimate of this drop.
- ``root_drop(S)``: the drop of the root objective itself (seed . a_root), with no path conditioning.

Many ablations run as one batched forward pass: a forward hook on the child layer's module
broadcasts its (batch-1) output to B rows and multiplies each row by its own channel mask, so the
layers below the child run once (``share_prefix=True``). If the model cannot take a batch that
appears mid-network (e.g. it concatenates an earlier batch-1 tensor), the input is stacked B times
instead. Hooks exist only inside ``_masked_child`` and are removed in ``finally``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .capture import resolve_modules
from .errors import OptionError, UnitError

if TYPE_CHECKING:
    from .engine import Analysis, Unit
    from .tree import FeatureTree

DEFAULT_BATCH = 64


@dataclass(frozen=True)
class EdgeCheck:
    """Measured effect of zeroing one child (or a set of children) beside its estimate."""

    channels: tuple[int, ...]
    estimate: float  # gradient x activation (sum over the channels) through the path
    parent_drop: float  # J_path(x) - J_path(x with the channels zeroed)
    root_drop: float  # root objective(x) - root objective(x with the channels zeroed)
    parent_value: float  # J_path(x), the scale of parent_drop
    root_value: float

    def to_dict(self) -> dict[str, float]:
        data = asdict(self)
        data.pop("channels")
        return data


@contextlib.contextmanager
def _masked_child(module: nn.Module, masks: torch.Tensor, share_prefix: bool) -> Iterator[None]:
    """Inside: ``module``'s output row b is multiplied by ``masks[b]`` (shape [B, C])."""

    def hook(mod: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        if share_prefix:
            output = output.expand(masks.shape[0], *output.shape[1:])
        shape = (masks.shape[0], masks.shape[1]) + (1,) * (output.dim() - 2)
        return output * masks.view(shape).to(output.dtype)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _watch(modules: dict[str, nn.Module], store: dict[str, torch.Tensor]) -> Iterator[None]:
    handles = []

    def make(name: str):
        def hook(mod: nn.Module, inputs, output: torch.Tensor) -> None:
            store[name] = output

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def masked_forward(
    analysis: Analysis,
    child_layer: str,
    masks: torch.Tensor,
    watch: Sequence[str],
    *,
    share_prefix: bool = True,
) -> dict[str, torch.Tensor]:
    """One no-grad forward pass of the analysed image with ``child_layer`` scaled per row by ``masks``.

    Returns the outputs of the ``watch`` layers, each with ``masks.shape[0]`` rows.
    """
    model = analysis.explainer.model
    modules = resolve_modules(model, [child_layer, *watch])
    x = analysis.record.input.detach()
    masks = masks.to(x.device)
    rows = masks.shape[0]
    store: dict[str, torch.Tensor] = {}
    watched = {name: modules[name] for name in watch}
    if share_prefix:
        try:
            with torch.no_grad(), _masked_child(modules[child_layer], masks, True), _watch(watched, store):
                model(x)
            if all(store[name].shape[0] == rows for name in watch):
                return store
        except RuntimeError:
            pass  # the model mixes the broadcast batch with earlier batch-1 tensors: stack the input instead
        store.clear()
    with torch.no_grad(), _masked_child(modules[child_layer], masks, False), _watch(watched, store):
        model(x.expand(rows, *x.shape[1:]))
    return store


def _objective(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Row-wise sum(weight * values); weight has one row."""
    return (values.double() * weight.double()).flatten(1).sum(1)


def ablate(
    analysis: Analysis,
    path: Sequence[Unit],
    channel_sets: Sequence[Sequence[int]],
    *,
    seed_mode: str = "sum",
    batch_size: int = DEFAULT_BATCH,
    share_prefix: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Zero each set of child channels (jointly) below ``path[-1]``.

    Returns (parent_drop [n], root_drop [n], J_path(x), root objective(x)), float64 on the CPU.
    """
    if batch_size < 1:
        raise OptionError(f"batch size must be at least 1, got {batch_size}", "use 1 or more")
    path = analysis.validate_path(path)
    index = analysis.layers.index(path[-1].layer)
    if index == 0:
        raise UnitError(f"{path[-1]} is in the first chain layer; there is nothing below it to ablate", "verify a deeper node")
    child_layer = analysis.layers[index - 1]
    channels = analysis.layer_info(child_layer).channels
    for group in channel_sets:
        for c in group:
            if not 0 <= int(c) < channels:
                raise UnitError(f"channel {c} is out of range for layer {child_layer!r}", f"it has channels 0..{channels - 1}")
    parent, root = path[-1], path[0]
    parent_weight = analysis.delta(path, "gradient", seed_mode)
    root_weight = analysis.seed(root, seed_mode)
    parent_value = float(_objective(analysis.activation(parent.layer), parent_weight)[0])
    root_value = float(_objective(analysis.activation(root.layer), root_weight)[0])
    watch = list(dict.fromkeys([parent.layer, root.layer]))
    parent_drops, root_drops = [], []
    # Row 0 of every chunk is the unablated image, so each drop compares two rows of one batched pass.
    for start in range(0, len(channel_sets), max(1, batch_size - 1)):
        chunk = channel_sets[start : start + max(1, batch_size - 1)]
        masks = torch.ones(len(chunk) + 1, channels)
        for row, group in enumerate(chunk, start=1):
            masks[row, list(group)] = 0.0
        out = masked_forward(analysis, child_layer, masks, watch, share_prefix=share_prefix)
        p = _objective(out[parent.layer], parent_weight).cpu()
        r = _objective(out[root.layer], root_weight).cpu()
        parent_drops.append(p[0] - p[1:])
        root_drops.append(r[0] - r[1:])
    if not parent_drops:
        empty = torch.zeros(0, dtype=torch.float64)
        return empty, empty.clone(), parent_value, root_value
    return torch.cat(parent_drops), torch.cat(root_drops), parent_value, root_value


def verify_children(
    analysis: Analysis,
    path: Sequence[Unit],
    channels: Sequence[int],
    *,
    seed_mode: str = "sum",
    batch_size: int = DEFAULT_BATCH,
    share_prefix: bool = True,
    joint: bool = True,
) -> tuple[list[EdgeCheck], EdgeCheck | None]:
    """Ablate each child channel alone and (with ``joint``, for two or more) all of them together,
    in one batched pass; each measured drop sits beside its gradient x activation estimate."""
    channels = [int(c) for c in channels]
    sets = [[c] for c in channels] + ([channels] if joint and len(channels) > 1 else [])
    # The ablation hooks sit on the shared model: no other forward pass may run meanwhile.
    with analysis.explainer.forward_lock:
        estimates = analysis.contributions(path, "gradient", seed_mode)
        parent_drop, root_drop, parent_value, root_value = ablate(
            analysis, path, sets, seed_mode=seed_mode, batch_size=batch_size, share_prefix=share_prefix
        )
    checks = [
        EdgeCheck((c,), float(estimates[c]), float(parent_drop[i]), float(root_drop[i]), parent_value, root_value)
        for i, c in enumerate(channels)
    ]
    together = None
    if len(sets) > len(channels):
        together = EdgeCheck(
            tuple(channels), float(estimates[channels].sum()), float(parent_drop[-1]), float(root_drop[-1]), parent_value, root_value
        )
    return checks, together


def verify_edges(
    analysis: Analysis,
    path: Sequence[Unit],
    children: Sequence[Unit | int],
    *,
    seed_mode: str = "sum",
    batch_size: int = DEFAULT_BATCH,
    share_prefix: bool = True,
) -> list[EdgeCheck]:
    """Ablate each child alone (batched) and return its measured drops beside its gradient x activation."""
    channels = [c if isinstance(c, int) else c.channel for c in children]
    checks, _ = verify_children(
        analysis, path, channels, seed_mode=seed_mode, batch_size=batch_size, share_prefix=share_prefix, joint=False
    )
    return checks


def verify_tree(analysis: Analysis, tree: FeatureTree, *, batch_size: int = DEFAULT_BATCH) -> FeatureTree:
    """Fill ``node.verification`` for every non-root node (its edge from the parent) and
    ``node.verification_all`` on every expanded node (all shown children zeroed together). One
    batched forward pass per expanded node."""
    from .engine import parse_path

    seed_mode = tree.settings.get("seed_mode", "sum")
    for node in tree.walk():
        if not node.children:
            continue
        checks, together = verify_children(
            analysis, parse_path(node.id), [child.unit for child in node.children], seed_mode=seed_mode, batch_size=batch_size
        )
        for child, check in zip(node.children, checks):
            child.verification = check.to_dict()
        node.verification_all = (together or checks[0]).to_dict()  # one child: zeroing "all" is zeroing it
    tree.settings["verified"] = True
    return tree
