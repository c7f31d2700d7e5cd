"""The circuit views in real headless Chromium: the merged graph toggle (export and explorer), coverage-driven
children, contrastive roots from the top-5 list, and the URL holding all of it.

The page's own merged graph and completeness (tree_view.js) must equal Python's (tree.graph) for the same
tree. Screenshots go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import io
import os

import httpx
import pytest
from PIL import Image

from featuretree.explainer import Explainer
from featuretree.models.zoo import load_model
from featuretree.render.export import render_html
from featuretree.server import ServerSettings, create_app

from .server_helpers import CHROMIUM, checked_page, launched_chromium, live_server, shot, square_png

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (install it with: apt-get install chromium)")
playwright_api = pytest.importorskip("playwright.sync_api")

JS_GRAPH = """() => { const g = FeatureTreeView.mergeGraph(FT_DATA.tree.root);
  return { nodes: g.nodes.map(({ copies, ...n }) => n), edges: g.edges }; }"""


@pytest.fixture(scope="module")
def browser():
    yield from launched_chromium()


@pytest.fixture
def page(browser):
    yield from checked_page(browser, viewport={"width": 1400, "height": 900})


def _same_numbers(a, b) -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-15)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            _same_numbers(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same_numbers(x, y)
    else:
        assert a == b


def test_export_graph_toggle_draws_one_card_per_unit_and_matches_pythons_graph(page, tmp_path):
    toy = load_model("toy_squares")
    explainer = Explainer(toy.module, toy.default_layers, preprocess=toy.preprocess, class_names=toy.class_names)
    tree = explainer.analyze(Image.open(io.BytesIO(square_png(32, 8)))).tree(depth=2, k=3)
    html = tmp_path / "tree.html"
    html.write_text(render_html(tree))
    page.goto(html.as_uri())
    page.wait_for_selector(".ft-card")
    python = tree.to_dict()
    _same_numbers(page.evaluate(JS_GRAPH), python["graph"])
    _same_numbers(page.evaluate("() => FeatureTreeView.completeness(FT_DATA.tree.root)"), python["completeness"])
    assert page.locator(".ft-card").count() == len(tree)
    page.click("button[data-mode=graph]")
    assert page.get_attribute(".ft-tree", "data-mode") == "graph"
    drawn = page.eval_on_selector_all(".ft-card", "els => els.map(e => e.dataset.unit).sort()")
    assert drawn == sorted(n["id"] for n in python["graph"]["nodes"])
    parents = {n["id"]: 0 for n in python["graph"]["nodes"]}
    for edge in python["graph"]["edges"]:
        parents[edge["target"]] += 1
    hubs = page.eval_on_selector_all(".ft-card.hub", "els => els.map(e => e.dataset.unit).sort()")
    assert hubs == sorted(u for u, n in parents.items() if n > 1)
    assert page.locator("svg.ft-edges path").count() == len(python["graph"]["edges"])
    shot(page, "export-graph-toy")
    page.click("button[data-mode=tree]")
    assert page.locator(".ft-card").count() == len(tree)


@pytest.mark.slow
def test_explorer_graph_coverage_and_contrast_live_in_the_url(page):
    with live_server(create_app(ServerSettings(models=("efficientnet_lite0",)))) as url:
        query = "model=efficientnet_lite0&image=chelsea&root=_fc:285&k=6&coverage=0.2&open=_fc:285&open=_fc:285/_head_act:254"
        page.goto(f"{url}/?{query}")
        page.wait_for_selector("body[data-busy=false]", state="attached")
        page.wait_for_function("document.querySelectorAll('.ft-card').length > 7")
        page.wait_for_selector("body[data-busy=false]", state="attached")
        # The coverage prefix of _head_act:254's children, as the API computes it.
        children = httpx.get(
            f"{url}/api/children",
            params={"model": "efficientnet_lite0", "image": "chelsea", "path": "_fc:285/_head_act:254", "k": 6, "coverage": 0.2},
        ).json()
        shares = [c["share"] for c in children["children"]]
        assert sum(shares[:-1]) < 0.2 <= sum(shares) and len(shares) < 6
        drawn = page.eval_on_selector_all(".ft-card", "els => els.map(e => e.dataset.node)")
        assert sorted(c for c in drawn if c.startswith("_fc:285/_head_act:254/")) == sorted(c["id"] for c in children["children"])
        # The explorer's completeness equals the export's (Python) for the same view.
        exported = httpx.get(
            f"{url}/api/export",
            params={
                "model": "efficientnet_lite0",
                "image": "chelsea",
                "root": "_fc:285",
                "k": 6,
                "coverage": 0.2,
                "verify": False,
                "open": ["_fc:285", "_fc:285/_head_act:254"],
                "format": "json",
            },
            timeout=120,
        ).json()
        shown = float(page.get_attribute("#status", "data-completeness"))
        assert shown == pytest.approx(exported["completeness"]["leaves"], abs=2e-6)
        page.click("#shape button[data-mode=graph]")
        assert "graph=1" in page.url and page.get_attribute(".ft-tree", "data-mode") == "graph"
        units = page.eval_on_selector_all(".ft-card", "els => els.map(e => e.dataset.unit).sort()")
        assert units == sorted(n["id"] for n in exported["graph"]["nodes"])
        shot(page, "explorer-graph-cat")
        # The link reopens the same view in a fresh tab: graph mode, coverage, expanded nodes.
        fresh = page.context.new_page()
        fresh.goto(page.url)
        fresh.wait_for_function("document.querySelectorAll('.ft-card').length > 7")
        assert fresh.get_attribute(".ft-tree", "data-mode") == "graph" and fresh.input_value("#coverage") == "0.2"
        assert sorted(fresh.eval_on_selector_all(".ft-card", "els => els.map(e => e.dataset.unit)")) == units
        fresh.close()
        # "vs" beside the second class: why Egyptian cat rather than tabby.
        page.click("#shape button[data-mode=tree]")
        page.click("#top5 button.vs >> nth=0")
        page.wait_for_selector('.ft-card.root[data-node="_fc:285-_fc:281"]')
        page.wait_for_selector("body[data-busy=false]", state="attached")
        assert page.inner_text(".ft-card.root .ft-unit") == "_fc:285−281"
        assert "root=_fc%3A285-_fc%3A281" in page.url
        page.wait_for_function("document.querySelector('.ft-card.root .ft-sub').textContent.includes('tabby')")
        shot(page, "explorer-contrast-cat")


def test_explorer_intervention_panel_selects_units_of_two_layers_scales_them_and_resets(page):
    with live_server(create_app(ServerSettings(models=("toy_squares",)))) as url:
        image = httpx.post(f"{url}/api/images", files={"file": ("square.png", square_png(), "image/png")}).json()["image"]
        page.goto(f"{url}/?model=toy_squares&image={image}&root=classifier:0&open=classifier:0&open=classifier:0/corners:0")
        page.wait_for_selector("body[data-busy=false]", state="attached")
        page.wait_for_selector('.ft-card[data-node="classifier:0/corners:0/edges:0"]')
        assert page.is_hidden("#intervene")
        page.click('.ft-card[data-node="classifier:0/corners:1"] button[data-action=intervene]')
        page.click('.ft-card[data-node="classifier:0/corners:0/edges:0"] button[data-action=intervene]')
        page.wait_for_selector("#intervene[data-busy=false] .root-line")
        assert page.eval_on_selector_all(".ft-card.ft-marked", "els => els.map(e => e.dataset.node).sort()") == [
            "classifier:0/corners:0/edges:0",
            "classifier:0/corners:1",
        ]
        expected = httpx.post(
            f"{url}/api/intervene",
            json={"model": "toy_squares", "image": image, "units": ["corners:1", "edges:0"], "scale": 0, "root": "classifier:0"},
        ).json()
        line = page.locator("#intervene .root-line")
        assert float(line.get_attribute("data-root-after")) == pytest.approx(expected["root_after"], rel=1e-9)
        assert float(line.get_attribute("data-root-before")) == pytest.approx(expected["root_before"], rel=1e-9)
        shown = page.eval_on_selector_all("#iv-result tbody tr", "rows => rows.map(r => r.children[2].textContent)")
        assert shown == [f"{100 * c['probability']:.1f}%" for c in expected["top_before_after"]]
        shot(page, "explorer-intervention-toy")
        # Scaling instead of zeroing: the panel follows, and the URL keeps units and scale.
        page.fill("#iv-scale", "2")
        page.press("#iv-scale", "Enter")
        page.wait_for_function(
            "document.querySelector('#intervene .root-line')?.textContent.includes('→') && document.querySelector('#intervene').dataset.busy === 'false'"
        )
        doubled = httpx.post(
            f"{url}/api/intervene",
            json={"model": "toy_squares", "image": image, "units": ["corners:1", "edges:0"], "scale": 2, "root": "classifier:0"},
        ).json()
        page.wait_for_function(
            f"Math.abs(+document.querySelector('#intervene .root-line').dataset.rootAfter - {doubled['root_after']}) < 1e-9"
        )
        assert "iv=corners%3A1" in page.url and "iv=edges%3A0" in page.url and "scale=2" in page.url
        fresh = page.context.new_page()
        fresh.goto(page.url)
        fresh.wait_for_selector("#intervene[data-busy=false] .root-line")
        assert float(fresh.get_attribute("#intervene .root-line", "data-root-after")) == pytest.approx(doubled["root_after"], rel=1e-9)
        fresh.close()
        page.click("#iv-reset")
        assert page.is_hidden("#intervene") and page.locator(".ft-card.ft-marked").count() == 0 and "iv=" not in page.url
