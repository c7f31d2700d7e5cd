"""The class graph's pictures (aggregate/pictures.py) and the explorer's aggregate endpoints, on a real aggregate
run of the toy net: each map against the node's own contribution map, every list against the database."""

from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import featuretree as ft
from featuretree.aggregate.db import AggregateDB, AggregateError
from featuretree.aggregate.pictures import check_model, graph_pictures, node_maps, read_image
from featuretree.aggregate.run import write_outputs
from featuretree.cli import main
from featuretree.core.errors import ImageInputError
from featuretree.core.images import load_image
from featuretree.core.units import parse_path
from featuretree.render.pictures import contribution_image, jpeg_bytes
from featuretree.server import ServerSettings, create_app

from .aggregate_helpers import toy_aggregate
from .conftest import all_hooks_removed
from .server_helpers import assert_error

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def agg(tmp_path_factory):
    """(images folder, aggregate folder, graph.json) of a real `featuretree aggregate --predicted` run."""
    return toy_aggregate(tmp_path_factory.mktemp("toy-aggregate"))


@pytest.fixture(scope="module")
def client(agg) -> TestClient:
    return TestClient(create_app(ServerSettings(models=("toy_squares",), aggregate=str(agg[1]))))


def all_rows(out, root: str, unit: str) -> list[dict]:
    with AggregateDB(out / "aggregate.db") as db:
        return db.unit_images(root, unit)


def perturbed_toy() -> ft.Explainer:
    explainer = ft.Explainer.from_zoo("toy_squares")
    with torch.no_grad():
        explainer.model.classifier.weight[0, 0] += 0.5
    return explainer


def test_each_map_is_the_nodes_own_contribution_map(agg):
    folder, out, graph = agg
    explainer = ft.Explainer.from_zoo("toy_squares")
    with AggregateDB(out / "aggregate.db") as db:
        rows = list(db.conn.execute("SELECT i.path, u.unit, u.path FROM image_units u JOIN images i ON i.id = u.image_id ORDER BY i.path"))
    by_image: dict[str, list[tuple[str, str]]] = {}
    for image, unit, node in rows:
        by_image.setdefault(image, []).append((unit, node))
    assert len(by_image) == graph["images"]["ok"]
    for image, nodes in by_image.items():
        maps = node_maps(explainer, load_image(folder / image), [node for _, node in nodes])
        truth = explainer.analyze(load_image(folder / image))  # an analysis of its own
        for (unit, node), got in zip(nodes, maps):
            assert parse_path(node)[-1] == parse_path(unit)[0]  # the node is a copy of the unit
            evidence = truth.evidence(parse_path(node), kinds=("contribution",))
            assert np.array_equal(np.asarray(got), np.asarray(contribution_image(evidence, truth.image.picture))), (image, node)


def test_graph_html_pictures_follow_the_databases_order_and_cap(agg):
    _, out, graph = agg
    explainer = ft.Explainer.from_zoo("toy_squares")
    with AggregateDB(out / "aggregate.db") as db:
        pictures = graph_pictures(db, graph, explainer, per_unit=2, listed=3, max_units=4, size=24)
    assert pictures["view"] == "contribution"
    for g in graph["graphs"]:
        chosen = sorted(g["nodes"], key=lambda n: (-n["images"], -n["mean_share"], n["id"]))[:4]
        assert set(pictures["units"][g["root"]]) == {n["id"] for n in chosen}
        for node in chosen:
            items = pictures["units"][g["root"]][node["id"]]
            rows = all_rows(out, g["root"], node["id"])[:3]
            assert [(i["image"], i["share"], i["node"]) for i in items] == [(r["image"], r["share"], r["node"]) for r in rows]
            assert all("src" in i for i in items[:2]) and not any("src" in i for i in items[2:])
            # The thumbnail is the node's map on that image, scaled down.
            first = items[0]
            img = Image.open(io.BytesIO(base64.b64decode(first["src"].split(",", 1)[1])))
            assert img.format == "JPEG" and max(img.size) == 24
            [full] = node_maps(explainer, load_image(agg[0] / first["image"]), [first["node"]])
            expected = np.asarray(full.resize(img.size, Image.BICUBIC), dtype=float)
            assert np.abs(np.asarray(img.convert("RGB"), dtype=float) - expected).mean() < 12


def test_graph_html_is_self_contained_with_every_graph(agg):
    _, out, graph = agg
    page = (out / "graph.html").read_text()
    assert "FT_AGGREGATE" in page and "renderAggregatePage" in page
    assert "<script src" not in page and "<link" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert page.count("data:image/jpeg;base64,") >= sum(min(3, n["images"]) for g in graph["graphs"] for n in g["nodes"])
    payload = json.loads(page.split("const FT_AGGREGATE = ", 1)[1].split(";\nFeatureTreeView", 1)[0].replace("<\\/", "</"))
    assert payload["graph"] == graph


def test_write_outputs_without_a_model_has_no_pictures(agg, tmp_path):
    _, out, graph = agg
    with AggregateDB(out / "aggregate.db") as db:
        write_outputs(db, tmp_path, html=True)
    page = (tmp_path / "graph.html").read_text()
    assert "data:image/jpeg" not in page and json.loads((tmp_path / "graph.json").read_text()) == graph


def test_read_image_serves_only_aggregated_unchanged_files(agg, tmp_path):
    folder, out, _ = agg
    with AggregateDB(out / "aggregate.db") as db:
        assert read_image(db, "sub/sq_c.png").size == (32, 32)
        for rel, words in [
            ("../images/sq_a.png", "not an aggregated"),
            ("nope.png", "not an aggregated"),
            ("broken.png", "not an aggregated"),
        ]:
            with pytest.raises(ImageInputError, match=words):
                read_image(db, rel)
    # A file changed since it was aggregated is refused, not explained as if it were the aggregated one.
    copy = tmp_path / "aggregate"
    shutil.copytree(out, copy)
    moved = tmp_path / "images"
    shutil.copytree(folder, moved)
    with AggregateDB(copy / "aggregate.db") as db:
        with db.transaction() as conn:
            db.set_meta(conn, {"folder": str(moved)})
        Image.new("RGB", (32, 32), "white").save(moved / "sq_a.png")
        with pytest.raises(ImageInputError, match="changed since it was aggregated"):
            read_image(db, "sq_a.png")
        (moved / "sq_b.png").unlink()
        with pytest.raises(ImageInputError, match="cannot read"):
            read_image(db, "sq_b.png")


def test_check_model_refuses_other_weights_chain_or_preprocessing(agg):
    _, out, _ = agg
    with AggregateDB(out / "aggregate.db") as db:
        model = db.meta()["model"]
    check_model(ft.Explainer.from_zoo("toy_squares"), model)
    with pytest.raises(AggregateError, match="other weights"):
        check_model(perturbed_toy(), model)
    with pytest.raises(AggregateError, match="other layers"):
        check_model(ft.Explainer.from_zoo("toy_squares", layers=["corners", "classifier"]), model)


# ----- the explorer's endpoints ----------------------------------------------------------------
def test_api_info_and_graph_are_the_databases(client, agg):
    _, out, graph = agg
    info = client.get("/api/info").json()["aggregate"]
    assert info["model"] == "toy_squares" and info["images"] == graph["images"]["ok"] == 15
    assert info["roots"] == ["classifier:0", "classifier:1"]
    body = client.get("/api/aggregate/graph").json()
    assert body["model"] == "toy_squares" and body["graph"] == graph
    for g in graph["graphs"]:
        for node in g["nodes"]:
            rows = all_rows(out, g["root"], node["id"])[:3]
            assert body["thumbs"][g["root"]][node["id"]] == [{"image": r["image"], "share": r["share"]} for r in rows]


def test_api_unit_images_pages_follow_unit_images(client, agg):
    _, out, graph = agg
    for g in graph["graphs"]:
        for node in g["nodes"]:
            pages, offset = [], 0
            while True:
                page = client.get(
                    "/api/aggregate/images", params={"root": g["root"], "unit": node["id"], "offset": offset, "limit": 3}
                ).json()
                assert page["total"] == node["images"]
                if not page["images"]:
                    break
                pages += page["images"]
                offset += len(page["images"])
            rows = all_rows(out, g["root"], node["id"])
            assert [(p["image"], p["share"], p["node"], p["depth"]) for p in pages] == [
                (r["image"], r["share"], r["node"], r["depth"]) for r in rows
            ]


def test_api_picture_is_the_units_map_on_that_image(client, agg):
    folder, out, graph = agg
    explainer = ft.Explainer.from_zoo("toy_squares")
    g = graph["graphs"][0]
    for node in g["nodes"][:4]:
        item = client.get("/api/aggregate/images", params={"root": g["root"], "unit": node["id"]}).json()["images"][0]
        r = client.get(item["picture"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        [expected] = node_maps(explainer, load_image(folder / item["image"]), [item["node"]])
        assert r.content == jpeg_bytes(expected, 85)
        assert client.get(item["picture"], headers={"if-none-match": r.headers["etag"]}).status_code == 304
    # The aggregated image opens as an image tree like any other image; its first level has the depth-1 units.
    a = client.get("/api/analysis", params={"model": "toy_squares", "image": "aggregate:sub/sq_c.png"}).json()
    assert a["source"] == "sub/sq_c.png"
    kids = client.get("/api/children", params={"model": "toy_squares", "image": "aggregate:sub/sq_c.png", "path": g["root"], "k": 2}).json()
    with AggregateDB(out / "aggregate.db") as db:
        depth1 = {
            row[0]
            for row in db.conn.execute(
                "SELECT u.unit FROM image_units u JOIN images i ON i.id = u.image_id WHERE i.path = 'sub/sq_c.png' AND u.depth = 1"
            )
        }
    assert {f"{c['layer']}:{c['unit']}" for c in kids["children"]} == depth1


def test_api_errors_are_one_line_and_the_server_stays_up(client, agg):
    g = agg[2]["graphs"][0]
    base = {"root": g["root"], "unit": "corners:0"}
    assert_error(client.get("/api/aggregate/images", params={**base, "root": "classifier:7"}), 404, "no class graph rooted at")
    assert_error(client.get("/api/aggregate/images", params={**base, "unit": "corners:4"}), 404, "not in the class graph")
    assert_error(client.get("/api/aggregate/images", params={**base, "unit": "corners"}), 400, "cannot read unit")
    assert_error(client.get("/api/aggregate/picture.jpg", params={**base, "image": "noise_1.png"}), 404, "does not show")
    assert_error(client.get("/api/aggregate/picture.jpg", params={**base, "image": "../../etc/passwd"}), 404, "does not show")
    for image in ("aggregate:../../etc/passwd", "aggregate:/etc/passwd", "aggregate:broken.png", "aggregate:nope.png"):
        assert_error(client.get("/api/analysis", params={"model": "toy_squares", "image": image}), 404, "not an aggregated image")
    assert client.get("/api/info").status_code == 200


def test_a_server_without_an_aggregate_says_so():
    plain = TestClient(create_app(ServerSettings(models=("toy_squares",))))
    assert plain.get("/api/info").json()["aggregate"] is None
    assert_error(plain.get("/api/aggregate/graph"), 404, "--aggregate")
    assert_error(plain.get("/api/analysis", params={"model": "toy_squares", "image": "aggregate:sq_a.png"}), 404, "unknown image")


def test_a_model_with_other_weights_gets_no_pictures(agg):
    g = agg[2]["graphs"][0]
    wrong = perturbed_toy()
    client = TestClient(create_app(ServerSettings(models=("toy_squares",), aggregate=str(agg[1])), loader=lambda name, device: wrong))
    assert client.get("/api/aggregate/graph").status_code == 200  # the counts need no model
    item = client.get("/api/aggregate/images", params={"root": g["root"], "unit": "corners:0"}).json()["images"][0]
    assert_error(client.get(item["picture"]), 400, "other weights")
    with pytest.raises(ft.FeatureTreeError, match="does not offer"):
        create_app(ServerSettings(models=("efficientnet_lite0",), aggregate=str(agg[1])))


def test_pictures_and_endpoints_leave_no_hooks(agg):
    toy = ft.Explainer.from_zoo("toy_squares")
    with AggregateDB(agg[1] / "aggregate.db") as db:
        graph_pictures(db, agg[2], toy, max_units=2)
    assert all_hooks_removed(toy.model)
    client = TestClient(create_app(ServerSettings(models=("toy_squares",), aggregate=str(agg[1])), loader=lambda name, device: toy))
    item = client.get("/api/aggregate/images", params={"root": "classifier:0", "unit": "edges:1"}).json()["images"][0]
    assert client.get(item["picture"]).status_code == 200
    assert all_hooks_removed(toy.model)
    assert (
        client.get("/api/aggregate/picture.jpg", params={"root": "classifier:0", "unit": "edges:1", "image": "noise_1.png"}).status_code
        == 404
    )
    assert all_hooks_removed(toy.model)


def test_serve_refuses_a_mismatching_model_or_folder_in_one_line(agg, tmp_path, capsys):
    model_file = tmp_path / "other_toy.py"
    model_file.write_text(
        "import torch\nfrom featuretree.models.zoo import load_model\n\n"
        "def build():\n    zoo = load_model('toy_squares')\n    with torch.no_grad():\n        zoo.module.classifier.weight[0, 0] += 0.5\n    return zoo\n"
    )
    assert main(["serve", "--aggregate", str(agg[1]), "--model", f"{model_file}:build", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other weights" in err and "toy_squares" in err
    assert main(["serve", "--aggregate", str(tmp_path / "nothing"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a folder" in err
    assert main(["serve", "--aggregate", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err


# ----- fuzzing the aggregate endpoints: no input may cause a 5xx -----------------------------------------------
roots = st.sampled_from(["classifier:0", "classifier:1"]) | st.text(max_size=40)
units = st.sampled_from(["corners:0", "edges:1", "classifier:0", "corners:-1", "corners:1-corners:2"]) | st.text(max_size=40)
images = st.sampled_from(["sq_a.png", "sub/sq_c.png", "broken.png", "../images/sq_a.png", "/etc/passwd"]) | st.text(max_size=60)


@given(root=roots, unit=units, image=images, offset=st.integers(-3, 10**9), limit=st.integers(-3, 300))
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_aggregate_endpoints_answer_any_input_without_a_server_error(client, root, unit, image, offset, limit):
    for path, params in (
        ("/api/aggregate/images", {"root": root, "unit": unit, "offset": offset, "limit": limit}),
        ("/api/aggregate/picture.jpg", {"root": root, "unit": unit, "image": image}),
        ("/api/analysis", {"model": "toy_squares", "image": "aggregate:" + image}),
    ):
        r = client.get(path, params=params)
        assert r.status_code < 500, (path, params, r.text)
        if r.status_code >= 400:
            assert "\n" not in r.json()["error"]
