"""Cascading weight randomisation (featuretree.reports.sanity) on the hand-set toy net."""

from __future__ import annotations

import copy
import json

import jsonschema_rs  # comes with schemathesis (dev extra)
import numpy as np
import pytest
import torch

import featuretree as ft
from featuretree.reports.sanity import SANITY_VIEWS, parameter_segments, sanity_check, save_report
from featuretree.reports.similarity import METRICS, spearman

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
    assert [s.randomised for s in report.independent] == [["classifier"], ["corners"], ["edges"]]
    assert report.steps[0].root_children == ["corners:0", "corners:1", "corners:2", "corners:3"]
    trained, last = report.steps[0], report.steps[-1]
    # The trained model compared with itself: every measure of every map is 1.
    for view in SANITY_VIEWS:
        assert trained.root[view] == {m: 1.0 for m in METRICS}
        assert trained.nodes[view] == {m: 1.0 for m in METRICS}
    assert trained.node_counts == {view: 13 for view in SANITY_VIEWS}
    assert last.children_kept < 1.0
    assert last.root_children != report.steps[0].root_children
    for view in SANITY_VIEWS:
        assert last.nodes[view]["spearman_abs"] < 0.9, view
    # Randomising more layers moves the pictures further from the trained model's.
    assert last.root["guided"]["spearman_abs"] < report.steps[1].root["guided"]["spearman_abs"]
    # The caller's model is untouched (the check works on copies).
    for name, p in explainer.model.named_parameters():
        assert torch.equal(p, before[name])
    out = save_report(report, tmp_path / "sanity")
    assert (out / "sanity.png").stat().st_size > 0
    text = (out / "sanity.md").read_text()
    assert "| 3 | edges | guided |" in text and "Independent randomisation" in text


def test_report_measures_are_the_similarities_of_the_maps():
    # Recompute one randomised step's numbers from the maps themselves: the report averages what it says.
    from featuretree.core.units import parse_path
    from featuretree.reports.sanity import _all_maps, _explainer_like, parameter_segments, randomise_
    from featuretree.reports.similarity import similarities

    explainer = ft.Explainer.from_zoo("toy_squares")
    report = sanity_check(explainer, square_picture(), k=2, depth=1, seed=3, steps=1, modes=["independent"])
    analysis = explainer.analyze(square_picture())
    paths = [parse_path(n.id) for n in analysis.tree(k=2, depth=1, images=False).walk()]
    model = copy.deepcopy(explainer.model)
    randomise_(parameter_segments(model, analysis.record.input, explainer.layers)[-1], torch.Generator().manual_seed(3))
    other = _explainer_like(explainer, model).analyze(square_picture())
    a, b = _all_maps(analysis, paths, "gradient", "sum"), _all_maps(other, paths, "gradient", "sum")
    (step,) = report.independent
    assert step.root["heatmap"] == pytest.approx(similarities(a[0]["heatmap"], b[0]["heatmap"]))
    rows = [similarities(x["contribution"], y["contribution"]) for x, y in zip(a, b)]
    for metric in METRICS:
        assert step.nodes["contribution"][metric] == pytest.approx(np.mean([r[metric] for r in rows]))


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
    assert "root \\|ρ\\|" in text and "| 1 | classifier | contribution |" in text
    assert (tmp_path / "s" / "sanity.csv").exists()


def test_cli_sanity_json_follows_its_schema(tmp_path, capsys):
    from featuretree.cli import main

    photo = tmp_path / "square.png"
    square_picture().save(photo)
    args = ["sanity", str(photo), "--model", "toy_squares", "--k", "2", "--depth", "1", "--steps", "2", "--json"]
    assert main([*args, "--out", str(tmp_path / "s")]) == 0
    data = json.loads(capsys.readouterr().out)
    scores = {
        "type": "object",
        "required": list(SANITY_VIEWS),
        "additionalProperties": False,
        "properties": {
            view: {
                "type": "object",
                "required": list(METRICS),
                "additionalProperties": False,
                "properties": {m: {"type": ["number", "null"], "minimum": -1.0, "maximum": 1.0} for m in METRICS},
            }
            for view in SANITY_VIEWS
        },
    }
    step = {
        "type": "object",
        "required": ["step", "mode", "randomised", "root", "nodes", "node_counts", "children_kept", "root_children"],
        "properties": {
            "step": {"type": "integer", "minimum": 0},
            "mode": {"enum": ["cascading", "independent"]},
            "randomised": {"type": "array", "items": {"type": "string"}},
            "root": scores,
            "nodes": scores,
            "node_counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "children_kept": {"type": "number", "minimum": 0, "maximum": 1},
            "root_children": {"type": "array", "items": {"type": "string"}},
        },
    }
    schema = {
        "type": "object",
        "required": ["root", "views", "metrics", "steps", "independent"],
        "properties": {
            "root": {"type": "string"},
            "views": {"const": list(SANITY_VIEWS)},
            "metrics": {"const": list(METRICS)},
            "steps": {"type": "array", "minItems": 3, "maxItems": 3, "items": step},
            "independent": {"type": "array", "minItems": 2, "maxItems": 2, "items": step},
        },
    }
    jsonschema_rs.validate(schema, data)
    assert [s["randomised"] for s in data["steps"]] == [[], ["classifier"], ["classifier", "corners"]]
    assert [s["randomised"] for s in data["independent"]] == [["classifier"], ["corners"]]
    assert data["steps"][0]["root"]["guided"] == {m: 1.0 for m in METRICS}
    assert all(isinstance(v, float) for v in data["steps"][1]["root"]["contribution"].values())  # the logit's map: the layer below's


def test_cli_sanity_refuses_an_unknown_randomisation(tmp_path, capsys):
    from featuretree.cli import main

    code = main(["sanity", "--model", "toy_squares", "--randomisation", "sideways", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown --randomisation 'sideways'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


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
    assert len(randomised) == len(report.steps) - 1 + len(report.independent) == 4  # two cascading, two independent
    assert [e.device for e in randomised] == [torch.device("cpu:0")] * 4
    assert all(e.batch_backward == explainer.batch_backward for e in randomised)


def test_cli_sanity_passes_device_to_every_explainer(tmp_path, monkeypatch):
    from featuretree.cli import main

    built = _record_explainers(monkeypatch)
    photo = tmp_path / "square.png"
    square_picture().save(photo)
    args = ["sanity", str(photo), "--model", "toy_squares", "--k", "2", "--depth", "1", "--steps", "1", "--device", "cpu:0"]
    assert main([*args, "--out", str(tmp_path / "s")]) == 0
    assert len(built) == 3  # the CLI's explainer, the cascading and the independent randomised one
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


def test_report_picture_charts_each_measure_above_the_steps_pictures(tmp_path):
    from featuretree.render.pictures import contribution_image, guided_image, heatmap_image
    from featuretree.reports.sanity import contact_sheet

    from .chart_checks import assert_readable_chart, expected_size, png_size, tick_labels

    explainer = ft.Explainer.from_zoo("toy_squares")
    report = sanity_check(explainer, square_picture(), k=4, depth=2, seed=0)
    fig = contact_sheet(report)
    charts, cells = fig.axes[:8], fig.axes[8:]
    # The paper's chart: a panel per measure, cascading above independent; one line per view (root solid,
    # node mean dashed) at the report's numbers, over ticks naming the layer randomised.
    for index, chart in enumerate(charts):
        mode, metric = ("cascading", "independent")[index // 4], METRICS[index % 4]
        assert_readable_chart(fig, chart)
        steps = report.steps if mode == "cascading" else [report.steps[0], *report.independent]
        assert [t.get_text() for t in tick_labels(chart.xaxis)] == ["trained", "classifier", "corners", "edges"]
        lines = {line.get_gid(): line for line in chart.get_lines() if line.get_gid()}
        for view in SANITY_VIEWS:
            for of in ("root", "nodes"):
                line = lines.get(f"{mode}:{metric}:{view}:{of}")
                values = [getattr(s, of)[view][metric] for s in steps]
                assert list(line.get_ydata()) == pytest.approx(values, nan_ok=True)
                assert line.get_linestyle() == ("-" if of == "root" else "--")
        low, high = chart.get_ylim()
        assert low <= min(np.nanmin(line.get_ydata()) for line in lines.values()) and high >= 1.0  # nothing off the chart
    # The grid: a row per cascading step, labelled with it; the root's guided picture and heatmap, then each
    # child's contribution map, as that step's model picks the children.
    columns = len(cells) // len(report.steps)
    assert columns == 2 + max(len(s.tree.root.children) for s in report.steps)
    for row, step in enumerate(report.steps):
        row_cells = cells[row * columns : (row + 1) * columns]
        assert row_cells[0].get_ylabel().startswith(f"step {step.step}\n")
        tree = step.tree
        expected = [
            ("guided", tree.root, np.asarray(guided_image(tree.evidence[tree.root.id]))),
            ("heatmap", tree.root, np.asarray(heatmap_image(tree.evidence[tree.root.id], tree.picture))),
        ] + [("contribution", child, np.asarray(contribution_image(tree.evidence[child.id], tree.picture))) for child in tree.root.children]
        for cell, (what, node, picture) in zip(row_cells, expected):
            (image,) = cell.get_images()
            assert image.get_gid() == f"{what}:{node.id}"
            assert np.array_equal(image.get_array(), picture)
            assert f"{node.layer}:{node.unit}" in cell.get_title()
            assert cell.get_window_extent().width >= 120  # pictures big enough to see, not thumbnails
        assert all(not cell.get_images() for cell in row_cells[len(expected) :])  # fewer children: empty cells
    out = save_report(report, tmp_path / "sanity")
    assert png_size((out / "sanity.png").read_bytes()) == expected_size(fig)
