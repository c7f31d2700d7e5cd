"""featuretree.reports.evaluate on the hand-set toy net, whose right children are known."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

import featuretree as ft
from featuretree.models.toy import CORNER_EDGES
from featuretree.reports.evaluate import evaluate_folder, save_evaluation

BOXES = [(8, 8, 23, 23), (4, 6, 20, 22), (10, 9, 27, 26)]


@pytest.fixture
def squares(tmp_path):
    folder = tmp_path / "squares"
    folder.mkdir()
    for i, box in enumerate(BOXES):
        img = Image.new("RGB", (32, 32), "black")
        ImageDraw.Draw(img).rectangle(box, fill="white")
        img.save(folder / f"square{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_evaluation_ranks_the_planted_children_first(squares, tmp_path):
    explainer = ft.Explainer.from_zoo("toy_squares")
    result = evaluate_folder(explainer, squares, k=2, parents=4, random_draws=8, curve_steps=8)
    assert result.images == ["square0.png", "square1.png", "square2.png"]
    rows = result.children
    assert {r.rule for r in rows} == {"gradient", "guided", "integrated", "ablation"}
    for row in rows:
        if row.parent == "classifier:0":
            # Corner weights 4 > 3 > 2 > 1: the two strongest corners, measured and predicted.
            assert row.top == "0 1", row
            assert row.spearman == pytest.approx(1.0)  # linear layer: predictions are the measurements
        else:
            corner = int(row.parent.rsplit(":", 1)[1])
            assert row.top == " ".join(map(str, CORNER_EDGES[corner])), row
        assert row.drop > row.random_drop
    overall = {r["rule"]: r for r in result.summary() if r["pair"] == "all"}
    assert overall["gradient"]["vs_random"] > 1.5
    curves = {(r["view"], r["layer"]): r for r in result.curve_summary()}
    # Inserting the strongest-evidence pixels first restores the logit faster than a random order.
    assert curves["heatmap", "classifier"]["insertion_auc"] > curves["heatmap", "classifier"]["random_insertion_auc"]
    # Every node has a curve in every view (the logit's contribution map is the corners layer's, summed).
    views = ("heatmap", "contribution", "guided", "gradient")
    assert {(r.view, r.layer) for r in result.curves} == {(v, layer) for v in views for layer in ("classifier", "corners")}
    assert len(result.curves) == 4 * 15
    out = save_evaluation(result, tmp_path / "eval")
    table = (out / "evaluate.md").read_text()
    assert "| corners -> classifier | gradient | 3 |" in table
    assert (out / "evaluate.csv").read_text().count("\n") == len(rows) + len(result.curves) + 1
    assert Image.open(out / "evaluate.png").size[0] > 0


def test_bad_folder_is_a_clear_error(tmp_path):
    explainer = ft.Explainer.from_zoo("toy_squares")
    with pytest.raises(ft.FeatureTreeError, match="no images"):
        evaluate_folder(explainer, tmp_path)
    with pytest.raises(ft.FeatureTreeError, match="unknown rule"):
        evaluate_folder(explainer, tmp_path, rules=["gradient", "lime"])
    with pytest.raises(ft.FeatureTreeError, match="unknown view"):
        evaluate_folder(explainer, tmp_path, views=["heatmap", "saliency"])


def test_cli_evaluate(squares, tmp_path, capsys):
    from featuretree.cli import main

    args = ["evaluate", str(squares), "--model", "toy_squares", "--k", "2", "--rules", "gradient,ablation", "--views", "contribution"]
    assert main([*args, "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "| all | gradient |" in out and "| contribution | all |" in out and "| heatmap |" not in out
    # The CLI's default list of views is the report's.
    from featuretree.cli import build_parser
    from featuretree.reports.evaluate import CURVE_VIEWS

    assert build_parser().parse_args(["evaluate"]).views == ",".join(CURVE_VIEWS)
    assert main(["evaluate", str(tmp_path / "missing"), "--model", "toy_squares"]) == 2


def test_chart_shows_the_reports_numbers_readably(squares, tmp_path):
    from featuretree.reports.evaluate import plot

    from .chart_checks import assert_readable_chart, expected_size, png_size

    explainer = ft.Explainer.from_zoo("toy_squares")
    result = evaluate_folder(explainer, squares, k=2, rules=["gradient", "ablation"], parents=4, random_draws=4, curve_steps=8)
    fig = plot(result)
    drops, ranks, deletion, insertion = fig.axes
    for ax in (drops, ranks, deletion, insertion):
        assert_readable_chart(fig, ax)

    summary = result.summary()
    pairs = ["corners -> classifier", "edges -> corners", "all"]
    assert [r["pair"] for r in summary if r["rule"] == "gradient"] == pairs
    row = {(r["pair"], r["rule"]): r for r in summary}
    assert [t.get_text().split("\n")[0] for t in drops.get_xticklabels()] == ["corners →", "edges →", "all pairs"]
    assert [t.get_text().split("\n")[-1] for t in drops.get_xticklabels()] == [f"({row[p, 'gradient']['parents']})" for p in pairs]
    assert all(t.get_text().endswith("%") for t in drops.get_yticklabels() if t.get_text())
    # Bar heights are the table's numbers: each rule's top-k drop, then the random and most-active baselines.
    bars = {c.get_label(): [p.get_height() for p in c] for c in drops.containers}
    assert list(bars) == ["gradient", "ablation", "random 2", "most active 2"]
    for rule in ("gradient", "ablation"):
        assert bars[rule] == pytest.approx([100 * row[p, rule]["topk_drop"] for p in pairs])
        assert [p.get_height() for c in ranks.containers if c.get_label() == rule for p in c] == pytest.approx(
            [row[p, rule]["spearman"] for p in pairs]
        )
    assert bars["random 2"] == pytest.approx([100 * row[p, "gradient"]["random_drop"] for p in pairs])
    assert bars["most active 2"] == pytest.approx([100 * row[p, "gradient"]["active_drop"] for p in pairs])
    # Curves: each view's mean deletion / insertion curve over 0..100 % of the pixels, and the random order's;
    # the legend quotes the table's AUCs.
    overall = {r["view"]: r for r in result.curve_summary() if r["layer"] == "all"}
    for ax, kind in ((deletion, "deletion"), (insertion, "insertion")):
        lines = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
        assert set(lines) == {f"{v}:{kind}" for v in ("heatmap", "contribution", "guided", "gradient", "random")}
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        for name, line in lines.items():
            view = name.split(":")[0]
            assert list(line.get_ydata()) == pytest.approx(result.mean_curves[name])
            assert line.get_xdata()[0] == 0 and line.get_xdata()[-1] == 1 and len(line.get_xdata()) == 9
            auc = overall["heatmap" if view == "random" else view][f"random_{kind}_auc" if view == "random" else f"{kind}_auc"]
            assert any(f"AUC {auc:.3f}" in text for text in legend), (name, legend)
            assert f"{auc:.3f}" in result.to_markdown()

    out = save_evaluation(result, tmp_path / "eval")
    assert png_size((out / "evaluate.png").read_bytes()) == expected_size(fig) == (2000, 640)
