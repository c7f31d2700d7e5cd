"""Cascading weight randomisation (featuretree.reports.sanity) on the hand-set toy net."""

from __future__ import annotations

import torch

import featuretree as ft
from featuretree.reports.sanity import parameter_segments, sanity_check, save_report, spearman

from .conftest import square_picture


def test_segments_follow_the_chain():
    explainer = ft.Explainer.from_zoo("toy_squares")
    model = explainer.model
    x = torch.zeros(1, 3, 32, 32)
    segments = parameter_segments(model, x, explainer.layers)
    assert segments == [[model.edges[0]], [model.corners[0]], [model.classifier]]
    assert all(not m._forward_hooks for m in model.modules())


def test_randomised_net_changes_the_trees(tmp_path):
    explainer = ft.Explainer.from_zoo("toy_squares")
    before = {name: p.clone() for name, p in explainer.model.named_parameters()}
    report = sanity_check(explainer, square_picture(), k=5, depth=2, seed=0)
    assert [s.randomised for s in report.steps] == [[], ["classifier"], ["classifier", "corners"], ["classifier", "corners", "edges"]]
    assert report.steps[0].root_children == ["corners:0", "corners:1", "corners:2", "corners:3"]
    last = report.steps[-1]
    assert last.children_kept < 1.0
    assert last.root_children != report.steps[0].root_children
    assert last.guided_rank < 0.9 and last.heat_rank < 0.9
    # Randomising more layers moves the pictures further from the trained model's.
    assert report.steps[-1].guided_rank < report.steps[1].guided_rank
    # The caller's model is untouched (the check works on a copy).
    for name, p in explainer.model.named_parameters():
        assert torch.equal(p, before[name])
    out = save_report(report, tmp_path / "sanity")
    assert (out / "sanity.png").stat().st_size > 0
    assert "| 3 | edges |" in (out / "sanity.md").read_text()


def test_spearman_identities():
    a = torch.randn(100).numpy()
    assert spearman(a, a) == 1.0 or abs(spearman(a, a) - 1.0) < 1e-12
    assert abs(spearman(a, -a) + 1.0) < 1e-12
    assert abs(spearman(a, a**3) - 1.0) < 1e-12  # monotone transform keeps ranks
    assert spearman(a, 0 * a) == 0.0


def test_cli_sanity(tmp_path, capsys):
    from featuretree.cli import main

    photo = tmp_path / "square.png"
    square_picture().save(photo)
    assert main(["sanity", str(photo), "--model", "toy_squares", "--k", "4", "--depth", "1", "--out", str(tmp_path / "s")]) == 0
    text = capsys.readouterr().out
    assert "guided rank corr" in text and "classifier" in text
    assert (tmp_path / "s" / "sanity.csv").exists()


def test_spearman_gives_ties_their_average_rank():
    import numpy as np
    from pytest import approx
    from scipy.stats import spearmanr

    from featuretree.reports.sanity import spearman

    rng = np.random.default_rng(0)
    # Two magnitude maps that share exact zeros (e.g. letterbox padding) and are unrelated elsewhere.
    a = np.concatenate([np.zeros(50), np.abs(rng.normal(size=50))])
    b = np.concatenate([np.zeros(50), np.abs(rng.normal(size=50))])
    assert spearman(a, b) == approx(spearmanr(a, b).statistic, abs=1e-12)
    # Breaking the shared ties by position would rank the zeros identically in both maps.
    order_broken = np.corrcoef(np.argsort(np.argsort(a, kind="stable")), np.argsort(np.argsort(b, kind="stable")))[0, 1]
    assert order_broken > spearman(a, b) + 0.01
