"""In-process API tests of the explorer (FastAPI TestClient, real toy and EfficientNet models, real photos)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re

import httpx
import pytest
from PIL import Image

from featuretree.models.zoo import load_model
from featuretree.render.pictures import MIME_TYPES, encode_picture
from featuretree.server import ServerSettings, create_app
from featuretree.server.session import Limits

from .server_helpers import assert_error, square_png

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

TOY = "toy_squares"


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(ServerSettings(models=(TOY,), limits=Limits(max_upload_bytes=256 * 1024, max_pixels=4_000_000))))


@pytest.fixture(scope="module")
def square_id(client) -> str:
    r = client.post("/api/images", files={"file": ("square.png", square_png(), "image/png")})
    assert r.status_code == 200, r.text
    return r.json()["image"]


def q(image: str, **kw) -> dict:
    return {"model": TOY, "image": image, **kw}


def test_api_info_lists_models_samples_and_options(client):
    info = client.get("/api/info").json()
    assert info["models"] == [TOY]
    assert {s["name"] for s in info["samples"]} >= {"chelsea", "coffee"}
    assert info["rules"] == ["gradient", "guided", "integrated", "ablation"]
    thumb = client.get(info["samples"][0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size[0] <= 160


def test_api_openapi_schema_documents_every_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    for route in (
        "/api/info",
        "/api/images",
        "/api/analysis",
        "/api/children",
        "/api/expand",
        "/api/node",
        "/api/picture.png",
        "/api/export",
    ):
        assert route in paths


def test_api_upload_then_top5_and_children_match_the_engine(client, square_id):
    """The toy model's right tree: square -> corners TL, TR, BL, BR in that order, as the engine computes."""
    an = client.get("/api/analysis", params=q(square_id)).json()
    assert an["top_classes"][0]["name"] == "square"
    assert an["default_root"] == "classifier:0"
    assert [c["name"] for c in an["chain"]] == ["edges", "corners", "classifier"]
    kids = client.get("/api/children", params=q(square_id, path="classifier:0", k=5)).json()
    assert [c["id"] for c in kids["children"]] == [f"classifier:0/corners:{i}" for i in range(4)]
    # Same numbers as the engine on the same photo.
    from featuretree.core.units import Unit
    from featuretree.explainer import Explainer

    zoo = load_model(TOY)
    engine = Explainer(zoo.module, zoo.default_layers, preprocess=zoo.preprocess, class_names=zoo.class_names)
    expected = engine.analyze(Image.open(io.BytesIO(square_png()))).expand((Unit("classifier", 0),), k=5)
    assert [c["score"] for c in kids["children"]] == pytest.approx([c.score for c in expected.children], rel=1e-6)
    # Coverage from the raw scores: the four corners' positive total is all there is.
    raw = engine.analyze(Image.open(io.BytesIO(square_png()))).contributions((Unit("classifier", 0),))
    assert kids["coverage"] == pytest.approx(float(raw.topk(4).values.sum() / raw.clamp(min=0).sum()), rel=1e-6)
    # Each corner's children are its two edges, the first-named edge first.
    from featuretree.models.toy import CORNER_EDGES

    for corner, (first, second) in CORNER_EDGES.items():
        grand = client.get("/api/children", params=q(square_id, path=f"classifier:0/corners:{corner}", k=2)).json()
        assert [c["unit"] for c in grand["children"]] == [first, second]


def test_api_one_forward_pass_per_model_and_image(client, square_id):
    ws = client.app.state.workspace
    client.get("/api/analysis", params=q(square_id))
    before = ws.forward_passes
    for path in ("classifier:0", "classifier:0/corners:1", "classifier:0/corners:2"):
        assert client.get("/api/children", params=q(square_id, path=path)).status_code == 200
        assert client.get("/api/picture.png", params=q(square_id, path=path, view="heatmap")).status_code == 200
    assert ws.forward_passes == before


def test_api_node_pictures_are_png_with_cache_headers(client, square_id):
    for view in ("guided", "guided_original", "heatmap", "rf_crop", "rf_box"):
        r = client.get("/api/picture.png", params=q(square_id, path="classifier:0/corners:0", view=view))
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert "max-age" in r.headers["cache-control"]
        Image.open(io.BytesIO(r.content)).verify()
        again = client.get(
            "/api/picture.png", params=q(square_id, path="classifier:0/corners:0", view=view), headers={"If-None-Match": r.headers["etag"]}
        )
        assert again.status_code == 304
    photo = client.get("/api/photo.png", params=q(square_id))
    assert Image.open(io.BytesIO(photo.content)).size == (32, 32)


def test_api_class_root_and_node_info(client, square_id):
    node = client.get("/api/node", params=q(square_id, path="class:0/corners:1")).json()
    assert node["id"] == "classifier:0/corners:1" and node["expandable"]
    left, top, right, bottom = node["box"]
    assert 0 <= left < right <= 32 and 0 <= top < bottom <= 32
    first = client.get("/api/node", params=q(square_id, path="classifier:0/corners:0/edges:0")).json()
    assert first["expandable"] is False
    leaf = client.get("/api/children", params=q(square_id, path="classifier:0/corners:0/edges:0")).json()
    assert leaf["children"] == [] and "first layer" in leaf["leaf_reason"]


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"model": "resnet9000"}, 404, ("unknown model",)),
        ({"image": "../../etc/passwd"}, 404, ("unknown image",)),
        ({"image": "0" * 64}, 404, ("upload",)),
        ({"path": "classifier:7"}, 400, ("out of range",)),
        ({"path": "nolayer:1"}, 400, ("not in the chain",)),
        ({"path": "classifier:0/edges:1"}, 400, ("cannot follow",)),
        ({"path": "classifier:0//corners:1"}, 400, ("malformed",)),
        ({"path": "classifier"}, 400, ("layer:channel",)),
        ({"path": "classifier:0/corners:x"}, 400, ("cannot read unit",)),
        ({"path": "class:99"}, 400, ("out of range",)),
        ({"k": 0}, 422, ("k",)),
        ({"k": "lots"}, 422, ("k",)),
        ({"rule": "magic"}, 422, ("rule",)),
    ],
)
def test_api_bad_input_is_a_clear_json_4xx(client, params, status, words):
    base = {"model": TOY, "image": "chelsea", "path": "classifier:0"}
    r = client.get("/api/children", params={**base, **params})
    assert_error(r, status, *words)
    assert client.get("/api/info").status_code == 200  # still serving


def test_api_bad_picture_view_and_missing_params(client):
    assert_error(client.get("/api/picture.png", params=q("chelsea", path="classifier:0", view="x")), 422, "view")
    assert_error(client.get("/api/children", params={"model": TOY}), 422, "image")


@pytest.mark.parametrize(
    "url",
    [
        "/static/../app.py",
        "/static/..%2fapp.py",
        "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/static/app.py",
        "/static/..%5capp.py",
        "/api/samples/..%2f..%2f..%2fetc%2fpasswd.png",
        "/api/samples/....png",
        "/static/%2fetc%2fpasswd",
    ],
)
def test_api_path_traversal_is_refused(client, url):
    r = client.get(url)
    assert r.status_code == 404
    assert b"root:" not in r.content and b"create_app" not in r.content and b"[project]" not in r.content


def test_api_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script type="module" src="/static/app.js">' in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "css"), ("tree_view.js", "javascript"), ("tree_view.css", "css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    # The explorer draws its tree with the renderer the HTML export inlines: the very same file.
    from importlib import resources

    shared = resources.files("featuretree").joinpath("static", "tree_view.js").read_text(encoding="utf-8")
    assert client.get("/static/tree_view.js").text == shared and '<script src="/static/tree_view.js">' in page.text
    scripts = "".join(client.get(f"/static/{n}").text for n in ("app.js", "tree_view.js"))
    assert not re.search(r"https?://(?!www\.w3\.org)", scripts + page.text), "no CDN or remote URL"


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def test_api_upload_rejects_bad_files(client):
    def up(data: bytes, name: str = "x.png"):
        return client.post("/api/images", files={"file": (name, data, "application/octet-stream")})

    assert_error(up(b""), 400, "empty")
    assert_error(up(b"this is not a picture at all" * 10, "notes.txt"), 400, "not an image")
    good = square_png(256)
    assert_error(up(good[: len(good) // 2]), 400, "corrupt")
    # Over the configured 256 KB limit (random bytes do not compress).
    import os

    assert_error(up(os.urandom(300 * 1024)), 413, "limit")
    # Decompression bomb: a small file that claims a 20000 x 20000 canvas.
    bomb = _png((20000, 20000), "1")
    assert len(bomb) < 256 * 1024
    assert_error(up(bomb), 400, "decompression bomb")
    assert client.post("/api/images", data={"nofile": "1"}).status_code == 422
    assert up(square_png()).status_code == 200  # still serving, and good files still work


def test_api_default_upload_limit_is_20_mb():
    assert ServerSettings().limits.max_upload_bytes == 20 * 2**20


def test_api_caches_are_bounded_lru():
    client = TestClient(create_app(ServerSettings(models=(TOY,), limits=Limits(analysis_cache_bytes=1, picture_cache_bytes=1))))
    ws = client.app.state.workspace
    for name in ("chelsea", "coffee", "astronaut"):
        assert client.get("/api/children", params=q(name, path="classifier:0")).status_code == 200
        assert client.get("/api/picture.png", params=q(name, path="classifier:0")).status_code == 200
    assert len(ws.analyses) == 1 and len(ws.pictures) == 1  # only the most recent survives
    assert ws.forward_passes == 3


def test_api_export_json_and_html_follow_the_view(client, square_id):
    params = q(
        square_id,
        root="classifier:0",
        open=["classifier:0", "classifier:0/corners:1"],
        removed=["classifier:0/corners:3"],
        k=5,
    )
    tree = client.get("/api/export", params={**params, "format": "json"}).json()
    root = tree["root"]
    assert [c["id"] for c in root["children"]] == ["classifier:0/corners:0", "classifier:0/corners:1", "classifier:0/corners:2"]
    assert [c["id"] for c in root["children"][1]["children"]] == ["classifier:0/corners:1/edges:1", "classifier:0/corners:1/edges:2"]
    assert root["children"][0]["children"] == [] and root["children"][0]["expanded"] is False
    from featuretree.tree.model import FeatureTree

    assert len(FeatureTree.from_dict(tree)) == 6
    html = client.get("/api/export", params={**params, "format": "html"})
    assert html.status_code == 200 and "attachment" in html.headers["content-disposition"]
    assert html.text.count("data:image/jpeg;base64,") >= 6 and "corners:1/edges:2" in html.text
    assert "http://" not in html.text.replace("http://www.w3.org", "")


def test_api_export_rejects_bad_paths(client):
    assert_error(client.get("/api/export", params=q("chelsea", root="classifier:0/corners:1")), 400, "one unit")
    assert_error(client.get("/api/export", params=q("chelsea", root="classifier:0", open=["bad"])), 400, "layer:channel")


def test_api_concurrent_requests_match_sequential():
    """Several tabs at once: the same answers as one request at a time, and one forward pass per photo."""
    paths = ["classifier:0", "classifier:1", *(f"classifier:0/corners:{i}" for i in range(5)), "classifier:1/corners:4"]
    requests = [(img, path, rule) for img in ("chelsea", "coffee", "rocket") for path in paths for rule in ("gradient", "guided")]

    def params(img, path, rule):
        return q(img, path=path, rule=rule, k=3)

    seq_client = TestClient(create_app(ServerSettings(models=(TOY,))))
    sequential = [seq_client.get("/api/children", params=params(*r)).json() for r in requests]
    seq_pics = [seq_client.get("/api/picture.png", params=params(*r)).content for r in requests[:12]]

    app = create_app(ServerSettings(models=(TOY,)))

    async def run_all():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            kids = asyncio.gather(*(ac.get("/api/children", params=params(*r)) for r in requests))
            pics = asyncio.gather(*(ac.get("/api/picture.png", params=params(*r)) for r in requests[:12]))
            return await kids, await pics

    concurrent, pics = asyncio.run(run_all())
    assert [r.status_code for r in concurrent] == [200] * len(requests), [r.text for r in concurrent if r.status_code != 200][:3]
    assert [r.json() for r in concurrent] == sequential
    assert [p.content for p in pics] == seq_pics
    assert app.state.workspace.forward_passes == 3


@pytest.mark.slow
def test_api_efficientnet_cat_tree():
    client = TestClient(create_app(ServerSettings(models=("efficientnet_lite0",))))
    an = client.get("/api/analysis", params={"model": "efficientnet_lite0", "image": "chelsea"}).json()
    assert "cat" in an["top_classes"][0]["name"]
    root = an["default_root"]
    kids = client.get("/api/children", params={"model": "efficientnet_lite0", "image": "chelsea", "path": root}).json()
    assert len(kids["children"]) == 5 and all(c["layer"] == "_head_act" for c in kids["children"])
    shares = [c["share"] for c in kids["children"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    pic = client.get("/api/picture.png", params={"model": "efficientnet_lite0", "image": "chelsea", "path": kids["children"][0]["id"]})
    assert Image.open(io.BytesIO(pic.content)).size == (224, 224)
    assert json.loads(client.get("/api/info").text)["models"] == ["efficientnet_lite0"]


# ----- /api/expand: children and their pictures in one call ---------------------------------
@pytest.mark.parametrize("view", ["heatmap", "guided", "guided_original", "rf_crop", "rf_box"])
def test_api_expand_returns_the_engines_children_with_the_single_picture_of_each(view):
    """A fresh app (cold caches) answers /api/expand; a second, independent app answers the single
    /api/picture.png requests, so the comparison is between two computations, not one cache entry."""
    batched = TestClient(create_app(ServerSettings(models=(TOY,))))
    single = TestClient(create_app(ServerSettings(models=(TOY,))))
    image = batched.post("/api/images", files={"file": ("square.png", square_png(), "image/png")}).json()["image"]
    assert single.post("/api/images", files={"file": ("square.png", square_png(), "image/png")}).json()["image"] == image
    for path in ("classifier:0", "classifier:0/corners:1"):
        r = batched.get("/api/expand", params=q(image, path=path, k=5, view=view))
        assert r.status_code == 200, r.text
        got = r.json()
        # The same listing as /api/children (without pictures) ...
        listed = single.get("/api/children", params=q(image, path=path, k=5)).json()
        assert {key: v for key, v in got.items() if key not in ("children", "view")} == {
            key: v for key, v in listed.items() if key != "children"
        }
        assert [{key: v for key, v in c.items() if key != "picture"} for c in got["children"]] == listed["children"]
        assert got["view"] == view and got["rest"] is not None
        # ... as the engine computes it in-process ...
        from featuretree.core.units import Unit
        from featuretree.explainer import Explainer

        zoo = load_model(TOY)
        engine = Explainer(zoo.module, zoo.default_layers, preprocess=zoo.preprocess, class_names=zoo.class_names)
        units = tuple(Unit.parse(p) for p in path.split("/"))
        expected = engine.analyze(Image.open(io.BytesIO(square_png()))).expand(units, k=5)
        assert [(c["layer"], c["unit"]) for c in got["children"]] == [(c.unit.layer, c.unit.channel) for c in expected.children]
        assert [c["score"] for c in got["children"]] == pytest.approx([c.score for c in expected.children], rel=1e-6)
        assert got["coverage"] == pytest.approx(expected.coverage, rel=1e-6)
        # ... and each picture is the one /api/picture.png gives for that child, in the view's export
        # format (JPEG for the photo-like views; the encoders are deterministic).
        assert got["children"]
        for child in got["children"]:
            one = single.get("/api/picture.png", params=q(image, path=child["id"], view=view))
            assert one.status_code == 200
            extension, expected_bytes = encode_picture(view, Image.open(io.BytesIO(one.content)).convert("RGB"))
            prefix = f"data:{MIME_TYPES[extension]};base64,"
            assert child["picture"].startswith(prefix)
            assert base64.b64decode(child["picture"][len(prefix) :]) == expected_bytes, child["id"]


def test_api_expand_computes_the_siblings_evidence_in_one_batched_call():
    # Without background prefetching, whose own batches would be counted here too (see test_server_prefetch.py).
    client = TestClient(create_app(ServerSettings(models=(TOY,), prefetch=False)))
    image = client.post("/api/images", files={"file": ("square.png", square_png(), "image/png")}).json()["image"]
    analysis = client.app.state.workspace.analysis(TOY, image)
    calls: list[int] = []
    original = analysis.evidence_many

    def counting(paths, *args, **kwargs):
        calls.append(len(paths))
        return original(paths, *args, **kwargs)

    analysis.evidence_many = counting
    r = client.get("/api/expand", params=q(image, path="classifier:0", view="heatmap"))
    assert r.status_code == 200 and len(r.json()["children"]) == 4
    assert calls == [4]  # the four corners together, not one call per picture
    # Asked again (or picture by picture), everything comes from the caches.
    assert client.get("/api/expand", params=q(image, path="classifier:0", view="heatmap")).json() == r.json()
    for child in r.json()["children"]:
        assert client.get("/api/picture.png", params=q(image, path=child["id"], view="heatmap")).status_code == 200
    assert calls == [4]


def test_api_expand_first_layer_node_is_a_leaf_with_its_reason(client, square_id):
    leaf = client.get("/api/expand", params=q(square_id, path="classifier:0/corners:0/edges:0")).json()
    assert leaf["children"] == [] and "first layer" in leaf["leaf_reason"] and leaf["rest"] is None


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"model": "resnet9000"}, 404, ("unknown model",)),
        ({"image": "0" * 64}, 404, ("upload",)),
        ({"path": "classifier:7"}, 400, ("out of range",)),
        ({"path": "classifier:0/edges:1"}, 400, ("cannot follow",)),
        ({"path": "classifier:0//corners:1"}, 400, ("malformed",)),
        ({"view": "x"}, 422, ("view",)),
        ({"k": 65}, 422, ("k",)),
        ({"rule": "magic"}, 422, ("rule",)),
    ],
)
def test_api_expand_bad_input_is_a_clear_json_4xx(client, params, status, words):
    r = client.get("/api/expand", params={"model": TOY, "image": "chelsea", "path": "classifier:0", **params})
    assert_error(r, status, *words)
    assert client.get("/api/info").status_code == 200  # still serving


def test_api_expand_is_documented_with_enums(client):
    schema = client.get("/openapi.json").json()
    params = {p["name"]: p for p in schema["paths"]["/api/expand"]["get"]["parameters"]}
    assert params["view"]["schema"]["enum"] == ["guided", "guided_original", "heatmap", "contribution", "rf_crop", "rf_box"]
    assert params["view"]["schema"]["default"] == "contribution"  # the default view, chosen by the numbers (README)
    assert params["rule"]["schema"]["enum"] == ["gradient", "guided", "integrated", "ablation"]
    assert set(schema["paths"]["/api/expand"]["get"]["responses"]) >= {"200", "400", "404"}


def test_api_contribution_view_needs_no_backward_pass_to_the_pixels(client, square_id):
    ws = client.app.state.workspace
    analysis = ws.analysis(TOY, square_id)
    root = "classifier:0"
    listed = client.get("/api/children", params=q(square_id, path=root)).json()["children"]  # the parent is expanded
    passes = []
    original = analysis.backward
    analysis.backward = lambda upper, lower, *a, **k: passes.append(lower) or original(upper, lower, *a, **k)
    try:
        r = client.get("/api/expand", params=q(square_id, path=root, view="contribution"))
    finally:
        del analysis.backward
    assert r.status_code == 200 and r.json()["view"] == "contribution"
    assert None not in passes  # nothing went back to the input
    kids = r.json()["children"]
    assert [c["id"] for c in kids] == [c["id"] for c in listed]
    for child in kids:
        mime, data = child["picture"].split(",", 1)
        assert mime == "data:image/jpeg;base64"
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            assert img.format == "JPEG" and img.size == (32, 32)
    png = client.get("/api/picture.png", params=q(square_id, path=kids[0]["id"], view="contribution"))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


def test_api_contribution_of_the_logit_is_the_layer_below_summed(client, square_id):
    r = client.get("/api/picture.png", params=q(square_id, path="classifier:0", view="contribution"))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.size == (32, 32)
