"""Explorer API: edge verification by ablation (/api/verify) and exemplar grids (/api/exemplars.png, serve --db).

Real parts: the hand-set toy net (whose classifier is linear in the pooled corners, so ablation
and gradient x activation must agree there), a real exemplar database indexed from generated
squares, real HTTP handling in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re

import httpx
import pytest
import torch
from PIL import Image

from featuretree.cli import main
from featuretree.core.errors import FeatureTreeError
from featuretree.exemplars import exemplar_grid_png
from featuretree.exemplars.indexer import index_folder
from featuretree.explainer import Explainer
from featuretree.loading import load_explainer
from featuretree.server import ServerSettings, create_app

from .server_helpers import assert_error, square_png
from .test_exemplars_index import make_squares

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

TOY = "toy_squares"
TOP = 4


def build_exemplar_db(folder, count: int = 12):
    """A real exemplar database of ``count`` generated square images, indexed with the toy net."""
    make_squares(folder / "imgs", count)
    db = folder / "toy.db"
    explainer = load_explainer(TOY, None, "cpu")
    index_folder(folder / "imgs", db, explainer, TOY, top_n=TOP, batch_size=4, workers=0, progress=False)
    return db


@pytest.fixture(scope="module")
def exemplar_db(tmp_path_factory):
    return build_exemplar_db(tmp_path_factory.mktemp("exemplars"))


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(ServerSettings(models=(TOY,))))


@pytest.fixture(scope="module")
def db_client(exemplar_db) -> TestClient:
    # A second model name backed by the same toy net: the database was built with "toy_squares" only.
    return TestClient(
        create_app(
            ServerSettings(models=(TOY, "other_toy"), exemplar_db=str(exemplar_db)), loader=lambda name, dev: Explainer.from_zoo(TOY)
        )
    )


def upload_square(client: TestClient) -> str:
    r = client.post("/api/images", files={"file": ("square.png", square_png(), "image/png")})
    assert r.status_code == 200, r.text
    return r.json()["image"]


@contextlib.contextmanager
def model_calls(client: TestClient, model: str = TOY):
    """Count real forward passes through the server's model (a forward hook on its first layer, removed after)."""
    calls = [0]
    module = client.app.state.workspace.explainer(model).model
    first = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    handle = first.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


# ----- edge verification ---------------------------------------------------------------
def test_verify_root_edges_agree_with_estimate_where_the_net_is_linear(client):
    image = upload_square(client)
    params = {"model": TOY, "image": image, "path": "class:0", "k": 5}
    v = client.get("/api/verify", params=params)
    assert v.status_code == 200, v.text
    body = v.json()
    kids = client.get("/api/children", params=params).json()
    assert body["id"] == "classifier:0" and body["child_layer"] == "corners"
    assert [c["id"] for c in body["children"]] == [c["id"] for c in kids["children"]]
    assert [c["id"] for c in body["children"]] == [f"classifier:0/corners:{i}" for i in range(4)]
    for check, kid in zip(body["children"], kids["children"]):
        # The logit is linear in the pooled corners: zeroing a corner removes exactly its gradient x activation.
        assert check["estimate"] == pytest.approx(kid["score"], rel=1e-9)
        assert check["parent_drop"] == pytest.approx(check["estimate"], rel=1e-4)
        assert check["root_drop"] == pytest.approx(check["parent_drop"], rel=1e-9)  # the parent is the root
        assert check["parent_drop"] > 0
    # Linear: zeroing all shown corners together removes the sum of their effects.
    assert body["all"]["parent_drop"] == pytest.approx(sum(c["parent_drop"] for c in body["children"]), rel=1e-4)
    assert body["total_positive"] == pytest.approx(kids["total_positive"])
    assert body["rest"]["share"] == pytest.approx(max(0.0, 1 - kids["coverage"]), abs=1e-9)
    assert body["rest"]["negative"] == pytest.approx(kids["total_negative"])


def test_verify_deep_edge_matches_a_direct_ablation_and_fewer_children_leave_a_rest(client):
    image = upload_square(client)
    path = "classifier:0/corners:1"
    body = client.get("/api/verify", params={"model": TOY, "image": image, "path": path, "k": 1}).json()
    assert [c["id"] for c in body["children"]] == [f"{path}/edges:1"]  # the top-right corner's first-named edge
    assert body["all"] is None
    assert 0 < body["rest"]["share"] < 1
    # Ground truth for the root drop: run the model ourselves with edges:1 zeroed.
    workspace = client.app.state.workspace
    analysis = workspace.analysis(TOY, image)
    model = analysis.explainer.model
    x = analysis.record.input.detach()

    def zero(module, inputs, output):
        output = output.clone()
        output[:, 1] = 0
        return output

    with torch.no_grad():
        before = float(model(x)[0, 0])
        handle = model.edges.register_forward_hook(zero)
        try:
            after = float(model(x)[0, 0])
        finally:
            handle.remove()
    assert body["children"][0]["root_drop"] == pytest.approx(before - after, rel=1e-5, abs=1e-7)
    assert body["children"][0]["parent_drop"] > 0


def test_verify_is_cached_and_follows_the_rule(client):
    image = upload_square(client)
    params = {"model": TOY, "image": image, "path": "classifier:0/corners:0", "k": 3}
    with model_calls(client) as calls:
        first = client.get("/api/verify", params=params).json()
        assert calls[0] >= 1  # a real (batched) forward pass
        seen = calls[0]
        assert client.get("/api/verify", params=params).json() == first
        assert calls[0] == seen  # served from the workspace cache
    guided = client.get("/api/verify", params={**params, "rule": "guided"}).json()
    kids = client.get("/api/children", params={**params, "rule": "guided"}).json()
    assert [c["id"] for c in guided["children"]] == [c["id"] for c in kids["children"]]


def test_verify_bad_inputs_are_clear_json_errors(client):
    image = upload_square(client)
    base = {"model": TOY, "image": image}
    assert_error(client.get("/api/verify", params={**base, "path": "edges:0"}), 400, "first chain layer")
    assert_error(client.get("/api/verify", params={**base, "path": "classifier:0//corners:1"}), 400, "malformed")
    assert_error(client.get("/api/verify", params={**base, "path": "corners:99"}), 400, "out of range")
    assert_error(client.get("/api/verify", params={**base, "path": "class:0", "k": 0}), 422, "k")
    assert_error(client.get("/api/verify", params={**base, "path": "class:0", "seed_mode": "mean"}), 422, "seed_mode")
    assert_error(client.get("/api/verify", params={"model": TOY, "image": "nope", "path": "class:0"}), 404, "unknown image")
    assert_error(client.get("/api/verify", params={**base, "model": "nomodel", "path": "class:0"}), 404, "unknown model")
    assert client.get("/api/verify", params={**base, "path": "class:0"}).status_code == 200  # still serving


@pytest.mark.parametrize("rule", ["gradient", "integrated", "ablation"])
def test_verify_concurrent_with_new_analyses_matches_sequential(rule):
    """Ablation hooks (and the forward passes of the integrated / ablation scoring rules) share the
    model with the analyses' capture hooks: under its forward lock, concurrent requests give the
    same answers as sequential ones."""
    paths = ["classifier:0", "classifier:1", "classifier:0/corners:0", "classifier:0/corners:1", "classifier:1/corners:4"]
    requests = [(img, path) for img in ("chelsea", "coffee", "rocket", "astronaut") for path in paths]

    def params(img, path):
        return {"model": TOY, "image": img, "path": path, "k": 3, "rule": rule}

    seq = TestClient(create_app(ServerSettings(models=(TOY,))))
    sequential = [seq.get("/api/verify", params=params(*r)).json() for r in requests]
    app = create_app(ServerSettings(models=(TOY,)))

    async def run_all():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as ac:
            return await asyncio.gather(*(ac.get("/api/verify", params=params(*r)) for r in requests))

    concurrent = asyncio.run(run_all())
    assert [r.status_code for r in concurrent] == [200] * len(requests), [r.text for r in concurrent if r.status_code != 200][:3]
    assert [r.json() for r in concurrent] == sequential


def test_export_carries_the_measured_edges(client):
    image = upload_square(client)
    params = {"model": TOY, "image": image, "root": "classifier:0", "open": ["classifier:0", "classifier:0/corners:1"]}
    params["removed"] = ["classifier:0/corners:3"]
    tree = json.loads(client.get("/api/export", params={**params, "format": "json"}).text)
    assert tree["settings"]["verified"] is True
    measured = {
        c["id"]: c for c in client.get("/api/verify", params={"model": TOY, "image": image, "path": "classifier:0"}).json()["children"]
    }
    kids = tree["root"]["children"]
    assert [c["id"] for c in kids] == [f"classifier:0/corners:{i}" for i in range(3)]
    for child in kids:
        assert child["verification"]["parent_drop"] == pytest.approx(measured[child["id"]]["parent_drop"], rel=1e-9)
    # The joint ablation covers the shown children only (corners:3 was removed), linear here.
    assert tree["root"]["verification_all"]["parent_drop"] == pytest.approx(sum(c["verification"]["parent_drop"] for c in kids), rel=1e-4)
    assert all(g["verification"] for g in kids[1]["children"])
    page = client.get("/api/export", params={**params, "format": "html"}).text
    assert '"verification": {"estimate"' in page and "ft-badge" in page
    unverified = json.loads(client.get("/api/export", params={**params, "format": "json", "verify": "false"}).text)
    assert unverified["root"]["children"][0]["verification"] is None


# ----- exemplars -----------------------------------------------------------------------
def test_exemplars_without_db_is_a_clear_404(client):
    assert client.get("/api/info").json()["exemplars"] is None
    r = client.get("/api/exemplars.png", params={"model": TOY, "layer": "corners", "unit": 0})
    assert_error(r, 404, "no exemplar database", "--db")


def test_exemplar_grid_route_returns_the_units_grid(db_client, exemplar_db):
    info = db_client.get("/api/info").json()["exemplars"]
    assert info["model"] == TOY and info["layers"] == ["edges", "corners", "classifier"] and info["top_n"] == TOP
    r = db_client.get("/api/exemplars.png", params={"model": TOY, "layer": "corners", "unit": 0})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and "max-age" in r.headers["cache-control"]
    grid = Image.open(io.BytesIO(r.content))
    assert grid.size == (info["grid_width"], info["grid_height"])
    # The same picture the library draws for that unit (reconstructions now cached in the database).
    assert r.content == exemplar_grid_png(exemplar_db, "corners", 0)
    other = db_client.get("/api/exemplars.png", params={"model": TOY, "layer": "corners", "unit": 1})
    assert other.status_code == 200 and other.content != r.content
    again = db_client.get(
        "/api/exemplars.png", params={"model": TOY, "layer": "corners", "unit": 0}, headers={"If-None-Match": r.headers["etag"]}
    )
    assert again.status_code == 304


def test_exemplar_classes_route_counts_the_predictions_of_a_units_exemplar_images(db_client, exemplar_db, client):
    from featuretree.exemplars.db import ExemplarDB
    from featuretree.models.toy import SQUARE_CLASSES

    for unit in range(5):
        body = db_client.get("/api/exemplar-classes", params={"model": TOY, "layer": "corners", "unit": unit}).json()
        with ExemplarDB(exemplar_db) as db:
            counts, total = db.exemplar_classes("corners", unit)
        assert body == {"classes": [{"index": c, "name": SQUARE_CLASSES[c], "count": n} for c, n in counts], "of": total}
        assert total == len(db_exemplars(exemplar_db, unit)) > 0
    r = db_client.get("/api/exemplar-classes", params={"model": TOY, "layer": "corners", "unit": 9})
    assert_error(r, 400, "out of range")
    assert_error(client.get("/api/exemplar-classes", params={"model": TOY, "layer": "corners", "unit": 0}), 404, "no exemplar database")


def db_exemplars(path, unit):
    from featuretree.exemplars.db import ExemplarDB

    with ExemplarDB(path) as db:
        return db.exemplars("corners", unit)


def test_exemplar_grid_bad_inputs(db_client):
    get = db_client.get
    assert_error(get("/api/exemplars.png", params={"model": TOY, "layer": "cornrs", "unit": 0}), 400, "no layer", "corners")
    assert_error(get("/api/exemplars.png", params={"model": TOY, "layer": "corners", "unit": 5}), 400, "out of range", "0..4")
    assert_error(get("/api/exemplars.png", params={"model": TOY, "layer": "corners", "unit": -1}), 422, "unit")
    assert_error(get("/api/exemplars.png", params={"model": TOY, "layer": "corners"}), 422, "unit")
    assert_error(get("/api/exemplars.png", params={"model": "other_toy", "layer": "corners", "unit": 0}), 400, "built with model")
    assert_error(get("/api/exemplars.png", params={"model": "nomodel", "layer": "corners", "unit": 0}), 404, "unknown model")
    assert get("/api/exemplars.png", params={"model": TOY, "layer": "edges", "unit": 4}).status_code == 200  # still serving


def test_export_html_embeds_the_exemplar_grids(db_client):
    image = upload_square(db_client)
    params = {"model": TOY, "image": image, "root": "classifier:0", "open": ["classifier:0"], "format": "html"}
    page = db_client.get("/api/export", params=params).text
    data = json.loads(re.search(r"const FT_DATA = (\{.*\});\n", page).group(1).replace("<\\/", "</"))
    nodes = [data["tree"]["root"], *data["tree"]["root"]["children"]]
    names = [n["images"]["exemplars"] for n in nodes]
    assert len(set(names)) == len(nodes) == 5  # one grid per distinct unit
    assert all(data["images"][name].startswith("data:image/") for name in names)
    without = db_client.get("/api/export", params={**params, "exemplars": "false"}).text
    assert "exemplars/" not in without and len(without) < len(page)


def test_bad_database_fails_at_start(tmp_path, capsys):
    with pytest.raises(FeatureTreeError, match="not found"):
        create_app(ServerSettings(models=(TOY,), exemplar_db=str(tmp_path / "missing.db")))
    (tmp_path / "notes.db").write_text("not a database")
    assert main(["serve", "--model", TOY, "--port", "0", "--db", str(tmp_path / "notes.db")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a usable SQLite database" in err


def test_serve_refuses_a_database_of_another_model(exemplar_db, capsys):
    assert main(["serve", "--model", "efficientnet_lite0", "--port", "0", "--db", str(exemplar_db)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "built with model 'toy_squares'" in err and "--model toy_squares" in err
