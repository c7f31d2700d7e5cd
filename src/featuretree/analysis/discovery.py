"""A default layer chain for any model: its block or stage outputs, then its logits.

One forward pass of a blank input records, for every named module, how often it runs, in which
order, and its output shape. The chain is read off the "trunk": of the containers whose parametrised
children hold at least ``TRUNK_COVERAGE`` of the model's parametrised leaf modules, the one with the
most such children (the shallower one on a tie), so a ResNet gives its stem and stages, a ViT its
encoder blocks, a VGG its convolutions. A parametrised child followed by parameter-free children of
the same shape (a convolution, its norm and its ReLU) is represented by the last of them. The last
weighted module whose output is the model's output itself closes the chain as the logits (a model
whose output no single module makes, such as DeiT's averaged two heads, gets no logits layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..capture.hooks import forward_hooks
from ..core.errors import ModelError

TRUNK_COVERAGE = 0.75
# Affine per-channel layers count as parameter-free here: they do not start a new block.
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@dataclass
class _Run:
    order: int
    calls: int
    shape: tuple[int, ...] | None


def _leaves(module: nn.Module) -> list[nn.Module]:
    """The weighted leaf modules (norms aside) of ``module``: what coverage counts."""
    return [
        m
        for m in module.modules()
        if not list(m.children()) and not isinstance(m, _NORMS) and any(True for _ in m.parameters(recurse=False))
    ]


def _has_weights(module: nn.Module) -> bool:
    return not isinstance(module, _NORMS) and any(True for _ in module.parameters())


def record_runs(model: nn.Module, size: int, device: torch.device | str = "cpu") -> tuple[dict[str, _Run], set[str]]:
    """Every named module's first-call order, call count and output shape for one blank input, and
    the modules whose output is the model's output itself (the logits candidates)."""
    runs: dict[str, _Run] = {}
    outputs: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module, inputs, output):
            run = runs.setdefault(name, _Run(len(runs), 0, None))
            run.calls += 1
            run.shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None
            if isinstance(output, torch.Tensor):
                outputs[name] = output

        return hook

    hooks = [(module, make_hook(name)) for name, module in model.named_modules() if name]
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    try:
        with torch.no_grad(), forward_hooks(hooks):
            output = model.eval()(x)
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:
        raise ModelError(
            f"cannot propose a layer chain: the model failed on a {size}x{size} input ({type(err).__name__})",
            "pass --layers (see `featuretree layers`)",
        ) from None
    if not isinstance(output, torch.Tensor):  # a tuple or dict of outputs: no logits module to end the chain with
        return runs, set()
    same = {n for n, o in outputs.items() if o.shape == output.shape and runs[n].calls == 1 and torch.equal(o, output)}
    return runs, same


def default_chain(model: nn.Module, size: int, device: torch.device | str = "cpu") -> list[str]:
    """The proposed chain (input side first) of ``model`` at ``size`` x ``size`` pixels."""
    runs, logits_candidates = record_runs(model, size, device)
    modules = dict(model.named_modules())
    total = len(_leaves(model)) or 1

    def blocks(name: str) -> list[str]:
        prefix = f"{name}." if name else ""
        kids = [f"{prefix}{child}" for child, _ in modules[name].named_children()]
        ran = [k for k in kids if k in runs and runs[k].calls == 1 and runs[k].shape is not None]
        return sorted(ran, key=lambda k: runs[k].order)

    best: tuple[int, int, str] | None = None
    for name in modules:
        kids = blocks(name)
        weighted = [k for k in kids if _has_weights(modules[k])]
        covered = sum(len(_leaves(modules[k])) for k in weighted)
        if len(weighted) >= 2 and covered >= TRUNK_COVERAGE * total:
            score = (len(weighted), -name.count(".") - (1 if name else 0), name)
            if best is None or score[:2] > best[:2]:
                best = score
    if best is None:
        raise ModelError("no stack of blocks found to propose a layer chain", "pass --layers (see `featuretree layers`)")
    kids = blocks(best[2])
    chain: list[str] = []
    for i, kid in enumerate(kids):
        if not _has_weights(modules[kid]):
            continue
        # Represent a block by the last parameter-free module of the same shape right after it (its norm, its ReLU).
        last = kid
        for follower in kids[i + 1 :]:
            if _has_weights(modules[follower]) or runs[follower].shape != runs[kid].shape:
                break
            last = follower
        chain.append(last)
    if logits_candidates:
        # The last weighted module that outputs the model's output (a classifier's fc, not a flatten after it).
        # Leaves first: heads.head rather than the heads container around it.
        weighted = [n for n in logits_candidates if _has_weights(modules[n])]
        leaves = [n for n in weighted if not list(modules[n].children())]
        logits = max(leaves or weighted or logits_candidates, key=lambda n: runs[n].order)
        chain = [n for n in chain if runs[n].order < runs[logits].order]
        chain.append(logits)
    return chain
