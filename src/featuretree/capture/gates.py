"""The torch-function mode active during a captured forward pass."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from .linearity import is_inference_affine, is_linear_call
from .rectifiers import BackwardRule, Rectifier, in_place, rectifier_bounds


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
        self.input: torch.Tensor | None = None  # set by capture_forward

    def _depends_on_input(self, value: object) -> bool:
        return isinstance(value, torch.Tensor) and (value.grad_fn is not None or value is self.input)

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
        if self.fixed_linearisation and not self._keeps_fixed(func, args, kwargs, result):
            self.fixed_linearisation = False
        return result
