"""A rule registered from outside is accepted by every surface: the API, the CLI, the server
(values and OpenAPI enum) and the evaluation, and is refused again once unregistered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import featuretree as ft
from featuretree.cli import main
from featuretree.core.errors import OptionError
from featuretree.reports.evaluate import evaluate_folder
from featuretree.rules import get_rule, registered, rule_names
from featuretree.server import ServerSettings, create_app

from .conftest import square_picture


class MostActive:
    """Throwaway rule: a child's score is its total activation, ignoring the path."""

    name = "most_active"
    summary = "total activation of the child (a throwaway rule for tests)"
    backward = "gradient"

    def scores(self, analysis, path, seed_mode):
        layer = analysis.layer_below(path[-1])
        return analysis.layer_info(layer).layout.channel_totals(analysis.activation(layer).double())[0].cpu()


@pytest.fixture
def most_active():
    with registered(MostActive()) as rule:
        yield rule


def test_registered_rule_builds_trees_through_the_api(most_active, toy_explainer, square_image):
    analysis = toy_explainer.analyze(square_image)
    tree = analysis.tree(depth=1, k=2, rule="most_active")
    act = analysis.activation("corners")[0].double().flatten(1).sum(1)
    assert [c.unit for c in tree.root.children] == act.topk(2).indices.tolist()
    assert tree.settings["rule"] == "most_active"


def test_registered_rule_reaches_the_cli(most_active, tmp_path):
    photo = tmp_path / "square.png"
    square_picture().save(photo)
    out = tmp_path / "out"
    assert (
        main(["explain", str(photo), "--model", "toy_squares", "--rule", "most_active", "--depth", "1", "--out", str(out), "--quiet"]) == 0
    )
    assert json.loads((out / "tree.json").read_text())["settings"]["rule"] == "most_active"


def test_registered_rule_reaches_the_server_and_its_schema(most_active, tmp_path):
    client = TestClient(create_app(ServerSettings(models=("toy_squares",))))
    photo = tmp_path / "square.png"
    square_picture().save(photo)
    image = client.post("/api/images", files={"file": ("square.png", photo.read_bytes(), "image/png")}).json()["image"]
    params = {"model": "toy_squares", "image": image, "path": "classifier:0", "rule": "most_active", "k": 2}
    response = client.get("/api/children", params=params)
    assert response.status_code == 200, response.text
    analysis = ft.Explainer.from_zoo("toy_squares").analyze(square_picture())
    totals = analysis.activation("corners")[0].double().flatten(1).sum(1)
    assert [c["unit"] for c in response.json()["children"]] == totals.topk(2).indices.tolist()
    enum = next(p for p in client.get("/openapi.json").json()["paths"]["/api/children"]["get"]["parameters"] if p["name"] == "rule")
    assert "most_active" in json.dumps(enum)
    assert "most_active" in client.get("/api/info").json()["rules"]


def test_registered_rule_is_evaluated(most_active, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    square_picture().save(folder / "square.png")
    result = evaluate_folder(
        ft.Explainer.from_zoo("toy_squares"), folder, k=2, rules=["gradient", "most_active"], parents=1, random_draws=2
    )
    assert {row.rule for row in result.children} == {"gradient", "most_active"}
    assert "most_active" in rule_names()


def test_unregistered_rule_is_refused_everywhere(toy_explainer, square_image):
    with registered(MostActive()):
        pass
    assert "most_active" not in rule_names()
    with pytest.raises(OptionError, match="unknown rule 'most_active'"):
        get_rule("most_active")
    with pytest.raises(OptionError, match="unknown rule"):
        toy_explainer.analyze(square_image).tree(depth=1, rule="most_active")
    client = TestClient(create_app(ServerSettings(models=("toy_squares",))))
    refused = client.get(
        "/api/children", params={"model": "toy_squares", "image": "chelsea", "path": "classifier:0", "rule": "most_active"}
    )
    assert refused.status_code == 422 and "rule" in refused.json()["problem"]


def test_a_rule_name_cannot_be_registered_twice():
    with registered(MostActive()), pytest.raises(OptionError, match="already registered"), registered(MostActive()):
        pass
    assert "most_active" not in rule_names()


def test_readme_rules_table_lists_the_registry():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Scoring rules", 1)[1]
    table_lines = section.split("| rule |", 1)[1].split("\n\n", 1)[0].splitlines()
    rows = [line for line in table_lines if line.startswith("| `")]
    table = [tuple(cell.strip().strip("`") for cell in row.strip("|").split("|")) for row in rows]
    assert table == [(n, get_rule(n).summary, get_rule(n).backward) for n in rule_names()]
