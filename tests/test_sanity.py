"""Cascading weight randomisation (featuretree.reports.sanity) on the hand-set toy net."""

from __future__ import annotations

import pytest
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


def _record_explainers(monkeypatch) -> list[ft.Explainer]:
    """Every Explainer built from now on (the given one and those sanity_check builds)."""
    built: list[ft.Explainer] = []
    init = ft.Explainer.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(ft.Explainer, "__init__", recording_init)
    return built


def test_randomised_explainers_use_the_given_device(monkeypatch):
    # "cpu:0" is a device the user can ask for (--device cpu:0) and, unlike a GPU, exists here; it
    # differs from Explainer's default "cpu", so an explainer built without the device shows up.
    built = _record_explainers(monkeypatch)
    explainer = ft.Explainer.from_zoo("toy_squares", device="cpu:0")
    report = sanity_check(explainer, square_picture(), k=2, depth=1, steps=2)
    randomised = built[1:]
    assert len(randomised) == len(report.steps) - 1 == 2
    assert [e.device for e in randomised] == [torch.device("cpu:0")] * 2
    assert all(e.batch_backward == explainer.batch_backward for e in randomised)


def test_cli_sanity_passes_device_to_every_explainer(tmp_path, monkeypatch):
    from featuretree.cli import main

    built = _record_explainers(monkeypatch)
    photo = tmp_path / "square.png"
    square_picture().save(photo)
    args = ["sanity", str(photo), "--model", "toy_squares", "--k", "2", "--depth", "1", "--steps", "1", "--device", "cpu:0"]
    assert main([*args, "--out", str(tmp_path / "s")]) == 0
    assert len(built) == 2  # the CLI's explainer and the randomised one
    assert {e.device for e in built} == {torch.device("cpu:0")}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_randomised_model_runs_on_the_gpu(monkeypatch):
    analysed: list[tuple[torch.device, torch.device]] = []
    analyze = ft.Explainer.analyze

    def recording_analyze(self, image, *args, **kwargs):
        analysis = analyze(self, image, *args, **kwargs)
        analysed.append((next(self.model.parameters()).device, analysis.record.input.device))
        return analysis

    monkeypatch.setattr(ft.Explainer, "analyze", recording_analyze)
    explainer = ft.Explainer.from_zoo("toy_squares", device="cuda")
    sanity_check(explainer, square_picture(), k=2, depth=1, steps=2)
    assert len(analysed) == 3
    assert all(params.type == "cuda" and x.type == "cuda" for params, x in analysed)


def test_report_picture_charts_each_step_above_its_pictures(tmp_path):
    import numpy as np

    from featuretree.render.pictures import guided_image, heatmap_image
    from featuretree.reports.sanity import contact_sheet

    from .chart_checks import assert_readable_chart, expected_size, png_size, tick_labels

    explainer = ft.Explainer.from_zoo("toy_squares")
    report = sanity_check(explainer, square_picture(), k=4, depth=2, seed=0)
    fig = contact_sheet(report)
    chart, *cells = fig.axes
    assert_readable_chart(fig, chart)  # draws the figure, which settles each picture's box
    # One point per step, at the report's numbers, over ticks naming the layer randomised last.
    assert [t.get_text() for t in tick_labels(chart.xaxis)] == ["trained", "classifier", "corners", "edges"]
    lines = {line.get_gid(): line for line in chart.get_lines() if line.get_gid()}
    for key in ("guided_rank", "heat_rank", "children_kept"):
        assert list(lines[key].get_ydata()) == pytest.approx([getattr(s, key) for s in report.steps])
        assert list(lines[key].get_xdata()) == [0, 1, 2, 3]
    low, high = chart.get_ylim()
    assert low <= min(min(line.get_ydata()) for line in lines.values()) and high >= 1.0  # nothing off the chart
    # The grid: a row per step, labelled with it; the root's guided picture and heatmap, then each
    # child's guided picture, as that step's model picks the children.
    columns = len(cells) // len(report.steps)
    assert columns == 2 + max(len(s.tree.root.children) for s in report.steps)
    for row, step in enumerate(report.steps):
        row_cells = cells[row * columns : (row + 1) * columns]
        assert row_cells[0].get_ylabel().startswith(f"step {step.step}\n")
        tree = step.tree
        expected = [
            ("guided", tree.root, np.asarray(guided_image(tree.evidence[tree.root.id]))),
            ("heatmap", tree.root, np.asarray(heatmap_image(tree.evidence[tree.root.id], tree.picture))),
        ] + [("guided", child, np.asarray(guided_image(tree.evidence[child.id]))) for child in tree.root.children]
        for cell, (what, node, picture) in zip(row_cells, expected):
            (image,) = cell.get_images()
            assert image.get_gid() == f"{what}:{node.id}"
            assert np.array_equal(image.get_array(), picture)
            assert f"{node.layer}:{node.unit}" in cell.get_title()
            assert cell.get_window_extent().width >= 120  # pictures big enough to see, not thumbnails
        assert all(not cell.get_images() for cell in row_cells[len(expected) :])  # fewer children: empty cells
    out = save_report(report, tmp_path / "sanity")
    assert png_size((out / "sanity.png").read_bytes()) == expected_size(fig)
