"""Which calls keep a network's linearised backward the same for every image.

With every rectifier open, a network made only of the calls listed here has one fixed linear
backward for all images, so receptive fields are a property of the model and its weights.
Anything not on the list turns the sharing off: add a call only with a test in
tests/test_receptive_fields.py that shows the linearised backward is the same for two images.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# Calls that are linear in every input-dependent argument, whatever the image: with the rectifiers
# open, a network made only of these has one fixed linear backward ("linear" mode) for all images.
_T = torch.Tensor
LINEAR_FUNCS = {
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


def is_linear_call(func, args, kwargs, depends) -> bool:
    """Conservatively: does this call keep the linearised backward independent of the image?
    ``depends(value)`` tells whether a value was computed from the input."""
    if getattr(func, "__name__", "") == "__get__":  # tensor properties: .shape, .dtype, ...
        return True
    if func not in LINEAR_FUNCS:
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


def is_inference_affine(func, args, kwargs, depends) -> bool:
    """batch_norm with fixed running statistics and parameters, and dropout in eval mode, are affine."""
    if func is F.batch_norm:
        fixed = not any(depends(a) for a in (*args[1:5], *(v for k, v in kwargs.items() if k != "input")))
        return fixed and not kwargs.get("training", args[5] if len(args) > 5 else False)
    if func in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d):
        return not kwargs.get("training", args[2] if len(args) > 2 else True)
    return False


def has_foreign_functions(output: torch.Tensor, ours: type) -> bool:
    """Whether the graph holds custom autograd functions other than ``ours``: their backward is
    invisible to the torch-function mode and may read saved values of the image."""
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction) and node._forward_cls is not ours:
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False
