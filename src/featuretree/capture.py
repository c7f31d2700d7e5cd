"""One forward pass that keeps the autograd graph and every chain activation.

Hooks exist only inside ``capture_forward``; they are removed in ``finally`` even
when the model raises. Rectifiers (ReLU, ReLU6, hardtanh(0, t)), whether modules or
functional calls, are routed through one autograd function whose backward reads a
per-forward ``BackwardRule`` switch, so one forward pass serves the true gradient,
guided backprop and the linearised receptive-field pass.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .errors import LayerError, ModelError, did_you_mean

BACKWARD_MODES = ("gradient", "guided", "linear")


class BackwardRule:
    """Which rectifier backward to use; owned by one forward pass, guarded by its lock.

    - gradient: the true derivative, delta * 1[lower < x < upper];
    - guided: guided backprop, additionally keeping only delta > 0;
    - linear: every rectifier open (delta passes unchanged), for receptive-field geometry.
    """

    def __init__(self) -> None:
        self.mode = "gradient"
        self.lock = threading.RLock()

    @contextlib.contextmanager
    def use(self, mode: str) -> Iterator[None]:
        if mode not in BACKWARD_MODES:
            raise ValueError(f"unknown backward mode {mode!r}")
        with self.lock:
            previous = self.mode
            self.mode = mode
            try:
                yield
            finally:
                self.mode = previous


class _Rectifier(torch.autograd.Function):
    """clamp(x, lower, upper) whose backward follows the forward pass's BackwardRule."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lower: float, upper: float | None, rule: BackwardRule) -> torch.Tensor:  # type: ignore[override]
        # The derivative (1 where open, 0 where closed), computed once here rather than in every
        # backward; kept in x's dtype and memory layout so the backward is a single multiply.
        open_ = x > lower if upper is None else (x > lower) & (x < upper)
        ctx.save_for_backward(open_.to(x.dtype))
        ctx.rule = rule
        return x.clamp(min=lower) if upper is None else x.clamp(min=lower, max=upper)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        mode = ctx.rule.mode
        if mode == "linear":
            return grad, None, None, None
        (derivative,) = ctx.saved_tensors
        grad = grad * derivative
        if mode == "guided":
            grad = grad.clamp_(min=0)
        return grad, None, None, None


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu_, torch.Tensor.relu, torch.Tensor.relu_}
_HARDTANH_FUNCS = {F.hardtanh, F.hardtanh_, F.relu6}
_IN_PLACE_RECTIFIERS = {torch.relu_, F.relu_, torch.Tensor.relu_, F.hardtanh_}
_INPLACE_FLAG_POSITION = {F.relu: 1, F.relu6: 1, F.hardtanh: 3}


def _in_place(func, args, kwargs) -> bool:
    position = _INPLACE_FLAG_POSITION.get(func)
    flag = args[position] if position is not None and len(args) > position else False
    return func in _IN_PLACE_RECTIFIERS or bool(kwargs.get("inplace", flag))


def _rectifier_bounds(func, args, kwargs) -> tuple[float, float | None] | None:
    """(lower, upper) if this call is a ReLU-family rectifier, else None."""
    if func in _RELU_FUNCS:
        return 0.0, None
    if func is F.relu6:
        return 0.0, 6.0
    if func in _HARDTANH_FUNCS:
        lower = float(kwargs.get("min_val", args[1] if len(args) > 1 else -1.0))
        upper = float(kwargs.get("max_val", args[2] if len(args) > 2 else 1.0))
        return (lower, upper) if lower == 0.0 else None
    return None


# Calls that are linear in every input-dependent argument, whatever the image: with the rectifiers
# open, a network made only of these has one fixed linear backward ("linear" mode) for all images.
_T = torch.Tensor
_LINEAR_FUNCS = {
    *(torch.conv1d, torch.conv2d, torch.conv3d, F.conv1d, F.conv2d, F.conv3d),
    *(torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d),
    *(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.linear),
    *(F.pad, F.interpolate, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d),
    *(F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, torch.cat, torch.stack, torch.flatten, torch.reshape),
    *(torch.add, torch.sub, torch.mean, torch.sum, torch.mul, torch.div, torch.matmul),
    *(_T.add, _T.add_, _T.__add__, _T.__radd__, _T.__iadd__, _T.sub, _T.sub_, _T.__sub__, _T.__isub__, _T.neg, _T.__neg__),
    *(_T.mul, _T.mul_, _T.__mul__, _T.__rmul__, _T.__imul__, _T.div, _T.div_, _T.__truediv__, _T.__itruediv__),
    *(_T.matmul, _T.__matmul__, _T.mean, _T.sum, _T.flatten, _T.view, _T.reshape, _T.permute, _T.transpose),
    *(_T.contiguous, _T.squeeze, _T.unsqueeze, _T.__getitem__, _T.clone, _T.to, _T.float, _T.size, _T.dim, _T.numel),
    *(_T.__len__, _T.is_contiguous),
}
# Of these, products are linear only while at most one factor depends on the input, and
# divisions only while the divisor does not.
_PRODUCTS = {torch.mul, torch.matmul, _T.mul, _T.mul_, _T.__mul__, _T.__rmul__, _T.__imul__, _T.matmul, _T.__matmul__}
_PRODUCTS |= {F.linear, torch.conv1d, torch.conv2d, torch.conv3d, F.conv1d, F.conv2d, F.conv3d}
_DIVISIONS = {torch.div, _T.div, _T.div_, _T.__truediv__, _T.__itruediv__}


def _is_linear_call(func, args, kwargs, depends) -> bool:
    """Conservatively: does this call keep the linearised backward independent of the image?
    ``depends(value)`` tells whether a value was computed from the input."""
    if getattr(func, "__name__", "") == "__get__":  # tensor properties: .shape, .dtype, ...
        return True
    if func not in _LINEAR_FUNCS:
        return False
    operands = (*args[:2], *kwargs.values())
    if func in (_T.to, _T.__getitem__):
        # Casts to integer or bool types round; tensor indices select by value: both nonlinear.
        values = (*args[1:], *kwargs.values())
        return not any(
            (isinstance(v, torch.dtype) and not v.is_floating_point)
            or (isinstance(v, torch.Tensor) and (func is _T.__getitem__ or not v.dtype.is_floating_point))
            or (isinstance(v, (tuple, list)) and any(isinstance(i, torch.Tensor) for i in v))
            for v in values
        )
    if func in _PRODUCTS:
        return sum(depends(a) for a in operands) <= 1
    if func in _DIVISIONS:
        return not depends(args[1] if len(args) > 1 else kwargs.get("other"))
    return True


def _is_inference_affine(func, args, kwargs, depends) -> bool:
    """batch_norm with fixed running statistics and parameters, and dropout in eval mode, are affine."""
    if func is F.batch_norm:
        fixed = not any(depends(a) for a in (*args[1:5], *(v for k, v in kwargs.items() if k != "input")))
        return fixed and not kwargs.get("training", args[5] if len(args) > 5 else False)
    if func in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d):
        return not kwargs.get("training", args[2] if len(args) > 2 else True)
    return False


class _RectifierGates(TorchFunctionMode):
    """Routes every ReLU-family call (module or functional) through ``_Rectifier``, and notes
    whether every other call is linear (see ``ForwardRecord.fixed_linearisation``).

    In-place variants are computed out of place and copied back into their argument, so code
    that ignores the return value still sees the rectified tensor.
    """

    def __init__(self, rule: BackwardRule) -> None:
        super().__init__()
        self.rule = rule
        self.count = 0
        self.fixed_linearisation = True
        self.input: torch.Tensor | None = None  # set by capture_forward

    def _depends_on_input(self, value: object) -> bool:
        return isinstance(value, torch.Tensor) and (value.grad_fn is not None or value is self.input)

    def _keeps_fixed(self, func, args, kwargs, result) -> bool:
        depends = self._depends_on_input
        if not (_is_linear_call(func, args, kwargs, depends) or _is_inference_affine(func, args, kwargs, depends)):
            return False
        # A value computed from the input that leaves the graph (.data, a view as another dtype)
        # can scale later ops by image-dependent amounts that the graph does not show.
        detached = isinstance(result, torch.Tensor) and not result.requires_grad
        return not (detached and any(depends(a) for a in (*args, *kwargs.values())))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bounds = _rectifier_bounds(func, args, kwargs) if args else None
        x = args[0] if args else None
        if bounds is not None and isinstance(x, torch.Tensor) and x.requires_grad:
            self.count += 1
            out = _Rectifier.apply(x, bounds[0], bounds[1], self.rule)
            if _in_place(func, args, kwargs) and not x.is_leaf:
                # Keep in-place semantics for code that ignores the return value (``F.relu_(y); return y``).
                x.copy_(out)
                return x
            return out
        result = func(*args, **kwargs)
        if self.fixed_linearisation and not self._keeps_fixed(func, args, kwargs, result):
            self.fixed_linearisation = False
        return result


@dataclass
class ForwardRecord:
    """Everything one forward pass leaves behind for the backward passes that follow."""

    input: torch.Tensor
    output: torch.Tensor
    activations: dict[str, torch.Tensor]
    rule: BackwardRule
    rectifier_count: int
    module_types: dict[str, str] = field(default_factory=dict)
    graph_bytes: int = 0  # tensors the retained autograd graph keeps alive (for cache accounting)
    # True when every op besides the rectifiers is linear with image-independent coefficients: the
    # "linear" backward (rectifiers open) is then the same for every image, so receptive fields
    # are a property of the model and weights and may be shared between images.
    fixed_linearisation: bool = False


def _has_foreign_functions(output: torch.Tensor) -> bool:
    """Whether the graph holds custom autograd functions other than ours: their backward is
    invisible to the torch-function mode and may read saved values of the image."""
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction) and node._forward_cls is not _Rectifier:
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


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


@contextlib.contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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
    gates = _RectifierGates(rule)
    x = x.detach().clone().requires_grad_(True)
    gates.input = x
    saved: dict[int, int] = {}  # storage address -> bytes of every tensor the graph saves

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    handles: list = []
    with _hooks(handles), torch.enable_grad(), gates, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        handles += [modules[name].register_forward_hook(make_hook(name)) for name in layers]
        output = model(x)
    if not isinstance(output, torch.Tensor):
        raise ModelError(
            f"the model returns {type(output).__name__}, not a tensor of logits",
            "wrap it so forward() returns one [N, classes] tensor",
        )
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
        if act.dim() not in (2, 4) or act.shape[0] != 1:
            raise LayerError(
                f"layer {name!r} has output shape {list(act.shape)}; a chain layer needs [1, C, H, W] or [1, C]",
                "pick convolutional or linear layers",
            )
        if not act.requires_grad:
            raise LayerError(f"layer {name!r} output does not depend on the input", "pick a layer inside the network")
    return ForwardRecord(
        input=x,
        output=output,
        activations=activations,
        rule=rule,
        rectifier_count=gates.count,
        module_types={name: type(modules[name]).__name__ for name in layers},
        graph_bytes=sum(saved.values()),
        fixed_linearisation=gates.fixed_linearisation and not _has_foreign_functions(output),
    )
