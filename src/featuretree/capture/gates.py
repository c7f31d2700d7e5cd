"""The torch-function mode active during a captured forward pass."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode

from .autograd_walk import children, postorder
from .linearity import is_inference_affine, is_linear_call
from .rectifiers import BackwardRule, Rectifier, in_place, rectifier_bounds

# Max pooling passes the gradient to the selected input unchanged, as guided backprop's original
# networks (AlexNet, VGG) did: it keeps guided backprop defined.
_SELECTIONS = ("max_pool", "adaptive_max_pool")
# Reshaping and splitting calls move values without changing them: never a nonlinearity (they are kept
# off linearity.LINEAR_FUNCS only until a receptive-field test covers them).
_SHAPE_OPS = (
    *("unbind", "split", "split_with_sizes", "chunk", "expand", "expand_as", "repeat", "narrow", "select"),
    *("unflatten", "movedim", "t", "flip", "roll", "tile", "transpose", "permute", "squeeze", "unsqueeze"),
    *("view", "view_as", "reshape", "reshape_as", "flatten", "contiguous", "clone", "setitem", "getitem"),
    *("type_as", "half", "float", "double", "bfloat16", "to", "detach"),
)


class RectifierGates(TorchFunctionMode):
    """Routes every ReLU-family call (module or functional) through ``Rectifier``, and notes
    whether every other call is linear (see ``ForwardRecord.fixed_linearisation``).

    In-place variants are computed out of place and copied back into their argument, so code
    that ignores the return value still sees the rectified tensor.
    """

    def __init__(self, rule: BackwardRule) -> None:
        super().__init__()
        self.rule = rule
        self.count = 0
        self.fixed_linearisation = True
        # Names of input-dependent calls that are neither rectifiers, nor linear, nor max-pooling
        # selections: where any ran, guided backprop has no defined meaning (see ForwardRecord).
        self.nonlinearities: set[str] = set()
        # Optional: the name of the module running now (``capture.sites``), to say where each nonlinearity is.
        self.scope: Callable[[], str] | None = None
        self.sites: dict[str, set[str]] = {}
        self.unlisted_sites: dict[str, set[str]] = {}  # every input-dependent call that turned fixed_linearisation off
        self.input: torch.Tensor | None = None  # set by capture_forward
        # Whether an autograd node's graph reaches the input, memoised per node: a weight view computed
        # from parameters alone (``w[:, :, None, None]``) has a grad_fn, but no path to the input.
        self._reaches: dict[object, bool] = {}

    def _depends_on_input(self, value: object) -> bool:
        if not isinstance(value, torch.Tensor):
            return False
        return value is self.input or (value.grad_fn is not None and self._reaches_input(value.grad_fn))

    def _reaches_input(self, node) -> bool:
        """A walk of the graph below ``node`` (in-place writes and TorchScript outputs included, since they
        are in the graph), each node decided once."""
        memo = self._reaches
        for top in postorder(node, memo, _is_accumulator):
            if _is_accumulator(top):
                memo[top] = top.variable is self.input
            else:
                memo[top] = any(memo[child] for child in children(top))
        return memo[node]

    def _keeps_fixed(self, func, args, kwargs, result) -> bool:
        depends = self._depends_on_input
        if not (is_linear_call(func, args, kwargs, depends) or is_inference_affine(func, args, kwargs, depends)):
            return False
        # A value computed from the input that leaves the graph (.data, a view as another dtype)
        # can scale later ops by image-dependent amounts that the graph does not show.
        detached = isinstance(result, torch.Tensor) and not result.requires_grad
        return not (detached and any(depends(a) for a in (*args, *kwargs.values())))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bounds = rectifier_bounds(func, args, kwargs) if args else None
        x = args[0] if args else None
        if bounds is not None and isinstance(x, torch.Tensor) and x.requires_grad:
            self.count += 1
            out = Rectifier.apply(x, bounds[0], bounds[1], self.rule)
            if in_place(func, args, kwargs) and not x.is_leaf:
                # Keep in-place semantics for code that ignores the return value (``F.relu_(y); return y``).
                x.copy_(out)
                return x
            return out
        result = func(*args, **kwargs)
        touches = self._touches_input(args, kwargs)
        keeps_fixed = self._keeps_fixed(func, args, kwargs, result)
        if not keeps_fixed:
            self.fixed_linearisation = False
            name = getattr(func, "__name__", type(func).__name__)
            bare = name.strip("_")
            if self.scope is not None and touches:
                self.unlisted_sites.setdefault(name, set()).add(self.scope())
            if not bare.startswith(_SELECTIONS) and bare not in _SHAPE_OPS and touches:
                self.nonlinearities.add(name)
                if self.scope is not None:
                    self.sites.setdefault(name, set()).add(self.scope())
        return result

    def _touches_input(self, args, kwargs) -> bool:
        values = (*args, *kwargs.values())
        flat = [v for value in values for v in (value if isinstance(value, (list, tuple)) else (value,))]
        return any(self._depends_on_input(v) for v in flat)


def _is_accumulator(node) -> bool:
    """A leaf of the graph: where a parameter's or the input's gradient accumulates."""
    return type(node).__name__ == "AccumulateGrad"
