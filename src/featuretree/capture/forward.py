"""One forward pass that keeps the autograd graph and every chain activation.

Hooks exist only inside ``capture_forward`` (``forward_hooks``), removed even when the model
raises. Rectifiers are routed through ``Rectifier`` by the ``RectifierGates`` mode, so one forward
pass serves every backward rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.errors import LayerError, did_you_mean
from .gates import RectifierGates
from .hooks import forward_hooks
from .linearity import has_foreign_functions
from .rectifiers import BackwardRule, Rectifier


@dataclass
class ForwardRecord:
    """Everything one forward pass leaves behind for the backward passes that follow."""

    input: torch.Tensor
    output: torch.Tensor | None  # None when the model returns no single tensor (a tuple, a dict of maps)
    activations: dict[str, torch.Tensor]
    rule: BackwardRule
    rectifier_count: int
    module_types: dict[str, str] = field(default_factory=dict)
    graph_bytes: int = 0  # tensors the retained autograd graph keeps alive (for cache accounting)
    # True when every op besides the rectifiers is linear with image-independent coefficients: the
    # "linear" backward (rectifiers open) is then the same for every image, so receptive fields
    # are a property of the model and weights and may be shared between images.
    fixed_linearisation: bool = False
    # Input-dependent nonlinear calls other than the rectifiers and max pooling (gelu, silu, softmax,
    # layer_norm, ...; "custom autograd function" for Functions the capture cannot see into).
    nonlinearities: tuple[str, ...] = ()
    output_description: str = ""  # "shape [1, 1000]", or "a tuple": for errors about class roots


def resolve_modules(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    """Map layer names to modules, with a close-name hint for typos."""
    named = dict(model.named_modules())
    resolved: dict[str, nn.Module] = {}
    for name in layers:
        if name not in named or name == "":
            hint = did_you_mean(name, [n for n in named if n])
            raise LayerError(
                f"model has no layer named {name!r}",
                hint or "run `featuretree layers` (or featuretree.list_layers) to see the names",
            )
        resolved[name] = named[name]
    return resolved


def capture_forward(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> ForwardRecord:
    """Run ``model(x)`` once, keeping the graph and the outputs of ``layers`` (input side first)."""
    modules = resolve_modules(model, layers)
    activations: dict[str, torch.Tensor] = {}
    order: list[str] = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs, output):
            if name in activations:
                raise LayerError(
                    f"layer {name!r} runs more than once in one forward pass (a reused module)",
                    "pick a layer that is called once, e.g. its parent block",
                )
            if not isinstance(output, torch.Tensor):
                raise LayerError(
                    f"layer {name!r} returns {type(output).__name__}, not a tensor",
                    "pick a layer whose output is a single tensor",
                )
            activations[name] = output
            order.append(name)
            # Hand a copy downstream so in-place ops later cannot modify the saved activation.
            return output.clone()

        return hook

    rule = BackwardRule()
    gates = RectifierGates(rule)
    x = x.detach().clone().requires_grad_(True)
    gates.input = x
    saved: dict[int, int] = {}  # storage address -> bytes of every tensor the graph saves

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    hooks = [(modules[name], make_hook(name)) for name in layers]
    with forward_hooks(hooks), torch.enable_grad(), gates, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = model(x)
    # A model that returns a tuple or a dict (auxiliary heads, feature maps) has no classes here:
    # its roots are units of the chain layers.
    kind = type(output).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    output_description = f"shape {list(output.shape)}" if isinstance(output, torch.Tensor) else f"{article} {kind}"
    output = output if isinstance(output, torch.Tensor) else None
    missing = [name for name in layers if name not in activations]
    if missing:
        raise LayerError(
            f"layer {missing[0]!r} did not run in the forward pass",
            "choose layers that the model's forward() actually calls",
        )
    if order != list(layers):
        raise LayerError(
            f"layers must be listed input side first; the model runs them as {', '.join(order)}",
            "reorder --layers",
        )
    for name, act in activations.items():
        if act.shape[0] != 1:
            raise LayerError(f"layer {name!r} has output shape {list(act.shape)}; expected batch size 1", "pass one image at a time")
        if not act.requires_grad:
            raise LayerError(f"layer {name!r} output does not depend on the input", "pick a layer inside the network")
    foreign = has_foreign_functions(output if output is not None else activations[layers[-1]], Rectifier)
    return ForwardRecord(
        input=x,
        output=output,
        activations=activations,
        rule=rule,
        rectifier_count=gates.count,
        module_types={name: type(modules[name]).__name__ for name in layers},
        graph_bytes=sum(saved.values()),
        fixed_linearisation=gates.fixed_linearisation and not foreign,
        nonlinearities=tuple(sorted(gates.nonlinearities)) + (("custom autograd function",) if foreign else ()),
        output_description=output_description,
    )


def guided_problem(record: ForwardRecord) -> str | None:
    """Why guided backprop has no meaning on this forward pass's model (None where it has one)."""
    found = record.nonlinearities
    if not found:
        return None
    shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
    return f"guided backprop is defined only for networks whose nonlinearities are ReLU-family rectifiers and max pooling; this model also computes {shown}"


# Autograd nodes that keep each value's axes where they were (elementwise maps, normalisation per
# channel, the capture hook's clone): the walk in ``producer_layout`` looks through them.
_AXIS_KEEPING = (
    *("Rectifier", "Relu", "Gelu", "Silu", "Hardswish", "Hardsigmoid", "Sigmoid", "Tanh", "Elu", "LeakyRelu", "Hardtanh"),
    *("Add", "Sub", "Mul", "Div", "Neg", "Clone", "ToCopy", "Clamp", "NativeBatchNorm", "CudnnBatchNorm"),
    *("BackwardHookFunction",),
)
_CONVOLUTIONS = ("Convolution", "MkldnnConvolution", "SlowConv", "CudnnConvolution", "MiopenConvolution")
_LAST_AXIS_OPS = ("Addmm", "Mm", "Bmm", "NativeLayerNorm")


def producer_layout(tensor: torch.Tensor, max_steps: int = 64) -> str | None:
    """Which op made ``tensor``, read off its autograd graph through axis-keeping ops: a convolution
    ("channels_first"), a matrix product or layer norm over the last axis ("channels_last"), or None
    when another op (a view, a permute, a pooling) comes first. Settles shapes like [8, 8, 8] only."""
    node = tensor.grad_fn
    for _ in range(max_steps):
        if node is None:
            return None
        name = type(node).__name__
        if name.startswith(_CONVOLUTIONS):
            return "channels_first"
        if name.startswith(_LAST_AXIS_OPS):
            return "channels_last"
        below = next((fn for fn, _ in node.next_functions if fn is not None and type(fn).__name__ != "AccumulateGrad"), None)
        if name.startswith(("View", "UnsafeView")) and below is not None and type(below).__name__.startswith(("Addmm", "Mm")):
            return "channels_last"  # nn.Linear on [B, H, W, C]: a matrix product over the flattened positions, viewed back
        if not name.startswith(_AXIS_KEEPING):
            return None
        node = below
    return None
