"""Rectifiers (ReLU, ReLU6, hardtanh(0, t)) whose backward follows a per-forward switch.

One forward pass then serves the true gradient, guided backprop and the linearised
(receptive-field) pass: ``BackwardRule.use(mode)`` picks the backward while a pass runs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch.nn import functional as F

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


class Rectifier(torch.autograd.Function):
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


def in_place(func, args, kwargs) -> bool:
    position = _INPLACE_FLAG_POSITION.get(func)
    flag = args[position] if position is not None and len(args) > position else False
    return func in _IN_PLACE_RECTIFIERS or bool(kwargs.get("inplace", flag))


def rectifier_bounds(func, args, kwargs) -> tuple[float, float | None] | None:
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
