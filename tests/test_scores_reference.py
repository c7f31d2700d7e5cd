"""Engine scores against an independent float64 computation with explicit Jacobians."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

import featuretree as ft
from featuretree.core.units import Unit


class Residual(nn.Module):
    def __init__(self, channels: int, inplace: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=inplace)

    def forward(self, x):
        return self.relu(self.conv(x)) + x


class Head(nn.Module):
    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels * 4 * 4, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def make_net(kind: str) -> nn.Sequential:
    inplace = kind == "inplace"
    layers = [
        nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=inplace)),
        nn.Sequential(nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2)),
        Residual(5, inplace) if kind == "residual" else nn.Sequential(nn.Conv2d(5, 5, 1), nn.ReLU(inplace=inplace)),
        Head(5, 4),
    ]
    net = nn.Sequential(*layers).double().eval()
    return net


def reference_scores(net: nn.Sequential, x: torch.Tensor, path: list[int], layouts: list[str] | None = None) -> list[torch.Tensor]:
    """Each level's child scores along ``path`` (root logit, then channels), from explicit Jacobians of
    one stage at a time; a score sums gradient x activation over every position of the channel.
    ``layouts`` gives each stage output's layout ("channels_first", "channels_last", "tokens", "vector";
    default: channels-first), i.e. which axis is the channel."""
    with torch.no_grad():
        acts = [x]
        for stage in net:
            acts.append(stage(acts[-1].clone()))
    stages = list(net)
    layouts = layouts or ["channels_first"] * len(stages)
    delta = torch.zeros_like(acts[-1])
    delta[0, path[0]] = 1.0
    results, level = [], len(stages)
    for depth in range(len(path)):
        below = acts[level - 1]
        jac = jacobian(lambda a, s=stages[level - 1]: s(a.clone()), below)  # out dims x in dims
        grad = (delta.reshape(-1) @ jac.reshape(delta.numel(), -1)).reshape(below.shape)
        axis = 1 if layouts[level - 2] == "channels_first" or below.dim() == 2 else below.dim() - 1
        terms = (below * grad)[0].movedim(axis - 1, -1)
        results.append(terms.reshape(-1, terms.shape[-1]).sum(0))
        if depth + 1 < len(path):
            keep = torch.zeros(below.shape[axis], dtype=torch.bool)
            keep[path[depth + 1]] = True
            shape = [1] * below.dim()
            shape[axis] = -1
            delta = grad * keep.view(shape)
        level -= 1
    return results


@pytest.mark.parametrize("kind", ["plain", "residual", "inplace"])
def test_scores_match_float64_jacobian(kind):
    net = make_net(kind)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    explainer = ft.Explainer(net, ["0", "1", "2", "3"], preprocess=ft.Preprocess(size=16))
    analysis = explainer.analyze(x)
    root = int(analysis.logits.argmax())
    first = analysis.expand((Unit("3", root),), k=5)
    assert first.children, "random net should have a positive contributor"
    second_unit = first.children[0].unit
    second = analysis.expand((Unit("3", root), second_unit), k=5)
    third_unit = second.children[0].unit
    ref = reference_scores(net, x, [root, second_unit.channel, third_unit.channel])
    got = [
        analysis.contributions((Unit("3", root),)),
        analysis.contributions((Unit("3", root), second_unit)),
        analysis.contributions((Unit("3", root), second_unit, third_unit)),
    ]
    for level, (g, r) in enumerate(zip(got, ref)):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g.cpu(), r, rtol=1e-9, atol=1e-12, msg=f"level {level}")


def test_inplace_and_out_of_place_relu_agree():
    torch.manual_seed(3)
    plain = make_net("plain")
    inplace = make_net("inplace")
    inplace.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    trees = [ft.Explainer(n, ["0", "1", "2", "3"]).analyze(x).tree(depth=3, k=3, images=False) for n in (plain, inplace)]
    assert trees[0].to_dict() == trees[1].to_dict()


@contextlib.contextmanager
def guided_relus(net: nn.Module):
    """An independent guided backprop: ReLU backward hooks that keep only positive gradient."""
    handles = []
    try:
        for m in net.modules():
            if isinstance(m, nn.ReLU):
                handles.append(m.register_full_backward_hook(lambda mod, gin, gout: (gin[0].clamp(min=0),)))
        yield
    finally:
        for h in handles:
            h.remove()


def test_guided_rule_matches_backward_hook_guided_backprop():
    """Guided scores against an independent guided backprop built from ReLU backward hooks."""
    net = make_net("plain")
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    analysis = ft.Explainer(net, ["0", "1", "2", "3"]).analyze(x)
    root = int(analysis.logits.argmax())
    got = analysis.contributions((Unit("3", root),), rule="guided")

    with guided_relus(net), torch.enable_grad():
        a2 = net[:3](x).detach().requires_grad_(True)
        out = net[3](a2)
        (grad,) = torch.autograd.grad(out[0, root], a2)
    # Stage "3" is linear, so guided and plain gradients agree there; go one level deeper.
    torch.testing.assert_close(got, (a2 * grad)[0].flatten(1).sum(1).detach())

    child = analysis.expand((Unit("3", root),), k=1).children[0].unit
    got_deeper = analysis.contributions((Unit("3", root), child), rule="guided")
    with guided_relus(net), torch.enable_grad():
        a1 = net[:2](x).detach().requires_grad_(True)
        a2 = net[2](a1)
        mask = torch.zeros_like(a2)
        mask[:, child.channel] = grad[:, child.channel]
        (g1,) = torch.autograd.grad(a2, a1, mask)
    torch.testing.assert_close(got_deeper, (a1 * g1)[0].flatten(1).sum(1).detach())


def test_rescaling_the_root_does_not_change_rankings():
    net = make_net("residual")
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    base = ft.Explainer(net, ["0", "1", "2", "3"]).analyze(x).tree(depth=3, k=3, images=False)
    scaled_net = make_net("residual")
    scaled_net.load_state_dict(net.state_dict())
    with torch.no_grad():
        scaled_net[3].fc.weight.mul_(7.0)
        scaled_net[3].fc.bias.mul_(7.0)
    root = base.root.id
    for seed_mode in ("sum", "max"):
        a = ft.Explainer(net, ["0", "1", "2", "3"]).analyze(x).tree(root=root, depth=3, k=3, images=False, seed_mode=seed_mode)
        b = ft.Explainer(scaled_net, ["0", "1", "2", "3"]).analyze(x).tree(root=root, depth=3, k=3, images=False, seed_mode=seed_mode)
        assert [n.id for n in a.walk()] == [n.id for n in b.walk()]
        for na, nb in zip(a.walk(), b.walk()):
            if na.score is not None:
                assert nb.score == pytest.approx(7.0 * na.score, rel=1e-9)
                assert nb.share == pytest.approx(na.share, rel=1e-9)
