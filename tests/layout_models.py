"""Small float64 networks whose chain layers use each layout, built as explicit stages so that a test
can compute the right answer independently (one stage's Jacobian at a time).

- ``TokenNet``: a vision transformer in miniature: a strided patch embedding to tokens [N, C], a class
  token, pre-norm blocks with softmax attention and a GELU MLP, the class token's logits.
- ``ChannelsLastNet`` and ``ChannelsFirstTwin``: the same function written on [H, W, C] maps (linear
  layers over the last axis, patch merging as in Swin) and on [C, H, W] maps (1x1 convolutions),
  sharing their weights: a unit of one is the unit of the other.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

IMAGE = 32
PATCH = 4
DIM = 6
CLASSES = 4


class PatchTokens(nn.Module):
    """Strided patch embedding, [B, 3, H, W] -> [B, (H/p)(W/p), C] tokens (no class token)."""

    def __init__(self, dim: int = DIM, patch: int = PATCH) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Block(nn.Module):
    """Pre-norm transformer block: one softmax attention head, then a GELU MLP, each with a residual."""

    def __init__(self, dim: int = DIM, with_class_token: bool = False, tokens: int = 0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.cls = nn.Parameter(torch.randn(1, 1, dim)) if with_class_token else None
        self.pos = nn.Parameter(0.1 * torch.randn(1, tokens + 1, dim)) if with_class_token else None

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.cls is not None:  # the first block prepends the class token
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        q, k, v = self.qkv(self.norm1(t)).chunk(3, dim=-1)
        attention = (q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).softmax(-1)
        t = t + self.out(attention @ v)
        return t + self.mlp(self.norm2(t))


class ClassHead(nn.Module):
    def __init__(self, dim: int = DIM, classes: int = CLASSES) -> None:
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(t)[:, 0])


class TokenNet(nn.Sequential):
    """Chain: embed [64, C] tokens (8 x 8 patches), block1 and block2 [65, C] (class token + 64), head [classes]."""

    def __init__(self) -> None:
        tokens = (IMAGE // PATCH) ** 2
        super().__init__()
        self.add_module("embed", PatchTokens())
        self.add_module("block1", Block(with_class_token=True, tokens=tokens))
        self.add_module("block2", Block())
        self.add_module("head", ClassHead())


class ToChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class Mix(nn.Module):
    """Linear over the channels with a ReLU and a residual; ``last``: channels on the last axis."""

    def __init__(self, dim: int, last: bool) -> None:
        super().__init__()
        self.fc, self.last = nn.Linear(dim, dim), last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.last:
            return x + F.relu(self.fc(x))
        return x + F.relu(F.conv2d(x, self.fc.weight[:, :, None, None], self.fc.bias))


class Merge(nn.Module):
    """Swin's patch merging: each 2 x 2 neighbourhood's channels concatenated, then a linear map to 2C."""

    def __init__(self, dim: int, last: bool) -> None:
        super().__init__()
        self.fc, self.last = nn.Linear(4 * dim, 2 * dim), last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.last:
            parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
            return F.relu(self.fc(torch.cat(parts, -1)))
        parts = [x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]]
        return F.relu(F.conv2d(torch.cat(parts, 1), self.fc.weight[:, :, None, None], self.fc.bias))


class PoolHead(nn.Module):
    def __init__(self, dim: int, last: bool) -> None:
        super().__init__()
        self.fc, self.last = nn.Linear(dim, CLASSES), last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((1, 2)) if self.last else x.mean((2, 3)))


def _map_net(last: bool) -> nn.Sequential:
    net = nn.Sequential()
    embed = nn.Sequential(nn.Conv2d(3, DIM, PATCH, stride=PATCH), nn.ReLU())
    if last:
        embed.append(ToChannelsLast())
    net.add_module("embed", embed)  # [8, 8, C] or [C, 8, 8]
    net.add_module("mix", Mix(DIM, last))
    net.add_module("merge", Merge(DIM, last))  # [4, 4, 2C] or [2C, 4, 4]
    net.add_module("head", PoolHead(2 * DIM, last))
    return net


def ChannelsLastNet() -> nn.Sequential:  # noqa: N802 - a factory named as the model it makes
    return _map_net(last=True)


def ChannelsFirstTwin(of: nn.Sequential) -> nn.Sequential:  # noqa: N802
    """The channels-first network computing the same function with ``of``'s weights."""
    twin = _map_net(last=False).double()
    twin.load_state_dict(of.state_dict())
    return twin


CHAIN = ["embed", "mix", "merge", "head"]
TOKEN_CHAIN = ["embed", "block1", "block2", "head"]


def stages(net: nn.Sequential) -> list[nn.Module]:
    return list(net)
