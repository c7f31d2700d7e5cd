"""Interventions fall back to a stacked input only when the model cannot take a batch mid-network;
any other error is the model's own and surfaces at once. Integrated gradients refuses first-layer nodes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import featuretree as ft
from featuretree.analysis.interventions import ablation
from featuretree.core.errors import UnitError
from featuretree.core.units import Unit
from featuretree.rules.integrated import integrated_gradients

from .conftest import all_hooks_removed, square_picture


class Concatenating(nn.Module):
    """Concatenates a batch-1 tensor from before the chain layer with one after it: a broadcast
    batch at ``mid`` cannot meet ``early`` (a size mismatch), so the input must be stacked."""

    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Conv2d(3, 2, 3, padding=1)
        self.mid = nn.Conv2d(2, 4, 3, padding=1)
        self.top = nn.Conv2d(6, 3, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        early = torch.relu(self.early(x))
        mid = torch.relu(self.mid(early))
        return self.fc(torch.relu(self.top(torch.cat([early, mid], 1))).mean((2, 3)))


class FailsOnBatches(nn.Module):
    """A model fault that only shows with more than one row (not a size mismatch)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = torch.relu(self.conv(x))
        if self.calls > 1 and h.shape[0] > 1:
            raise RuntimeError("a genuine fault in the model")
        return self.fc(h.mean((2, 3)))


def test_size_mismatch_falls_back_to_a_stacked_input():
    torch.manual_seed(0)
    model = Concatenating()
    # 'early' reaches 'top' around 'mid' (that is what makes the batches mismatch): a chain that does not cut, accepted.
    explainer = ft.Explainer(model, ["mid", "top", "fc"], preprocess=ft.Preprocess(size=16), allow_bypass=True)
    with pytest.warns(ft.BypassWarning, match="'top' also receives input that bypasses 'mid'"):
        analysis = explainer.analyze(torch.randn(1, 3, 16, 16))
    path = (Unit("fc", 0), Unit("top", 1))
    sets = [[0], [1], [2, 3]]
    automatic = ablation(analysis, path, sets)  # tries the shared prefix, meets the size mismatch, stacks
    stacked = ablation(analysis, path, sets, share_prefix=False)
    torch.testing.assert_close(automatic.parent_drop, stacked.parent_drop)
    # The same drops as zeroing by hand in a plain forward pass.
    x = analysis.record.input.detach()
    with torch.no_grad():
        early = torch.relu(model.early(x))
        mid = model.mid(early)
        weight = analysis.delta(path, "gradient")
        for row, group in enumerate(sets):
            zeroed = mid.clone()
            zeroed[:, group] = 0
            top = model.top(torch.cat([early, torch.relu(zeroed)], 1))
            before = model.top(torch.cat([early, torch.relu(mid)], 1))
            drop = float(((before - top).double() * weight.double()).sum())
            assert float(automatic.parent_drop[row]) == pytest.approx(drop, rel=1e-5, abs=1e-8)
    assert all_hooks_removed(model)


def test_other_runtime_errors_are_raised_once_not_retried():
    model = FailsOnBatches()
    analysis = ft.Explainer(model, ["conv", "fc"], preprocess=ft.Preprocess(size=16)).analyze(torch.randn(1, 3, 16, 16))
    calls_before = model.calls
    with pytest.raises(RuntimeError, match="genuine fault"):
        ablation(analysis, (Unit("fc", 0),), [[0], [1]])
    assert model.calls == calls_before + 1  # no second, stacked run hiding the fault
    with pytest.raises(RuntimeError, match="genuine fault"):
        integrated_gradients(analysis, (Unit("fc", 0),), steps=4)
    assert model.calls == calls_before + 2
    assert all_hooks_removed(model)


def test_integrated_gradients_refuses_a_first_layer_node():
    analysis = ft.Explainer.from_zoo("toy_squares").analyze(square_picture())
    with pytest.raises(UnitError, match="first chain layer"):
        integrated_gradients(analysis, (Unit("classifier", 0), Unit("corners", 0), Unit("edges", 0)))
