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
    curves = {r["layer"]: r for r in result.curve_summary()}
    # Inserting the strongest-evidence pixels first restores the logit faster than a random order.
    assert curves["classifier"]["insertion_auc"] > curves["classifier"]["random_insertion_auc"]
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


def test_cli_evaluate(squares, tmp_path, capsys):
    from featuretree.cli import main

    code = main(
        ["evaluate", str(squares), "--model", "toy_squares", "--k", "2", "--rules", "gradient,ablation", "--out", str(tmp_path / "e")]
    )
    assert code == 0
    assert "| all | gradient |" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "missing"), "--model", "toy_squares"]) == 2
