"""The class graph in real Chromium: a real aggregate run of the toy net, served by a real uvicorn
(`featuretree serve --aggregate DIR`), and its graph.html opened from file:// with the network cut off.
Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlparse

import pytest

from featuretree.aggregate.db import AggregateDB
from featuretree.server import ServerSettings, create_app

from .aggregate_helpers import toy_aggregate
from .server_helpers import CHROMIUM, checked_page, launched_chromium, live_server, shot

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (install it with: apt-get install chromium)")
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def agg(tmp_path_factory):
    return toy_aggregate(tmp_path_factory.mktemp("e2e-aggregate"))


@pytest.fixture(scope="module")
def base_url(agg):
    with live_server(create_app(ServerSettings(models=("toy_squares",), aggregate=str(agg[1])))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    yield from launched_chromium()


@pytest.fixture
def page(browser):
    yield from checked_page(browser, viewport={"width": 1280, "height": 800})


def wait_graph(page) -> None:
    page.wait_for_selector(".fa-view[data-units]")
    page.wait_for_function("[...document.querySelectorAll('.fa-card img')].every(i => i.complete && i.naturalWidth > 0)")


def open_graph(page, base_url: str, query: str = "") -> None:
    page.goto(f"{base_url}/{query}")
    page.wait_for_selector("body[data-ready=true]")
    wait_graph(page)


def cards(page) -> dict[str, str]:
    """Each drawn unit and its "in n/N images" line (the root: "n images")."""
    return page.eval_on_selector_all(
        ".fa-card", "els => Object.fromEntries(els.map(e => [e.dataset.unit, e.innerText.match(/in \\d+\\/\\d+ images|\\d+ images/)[0]]))"
    )


def card_texts(page) -> dict[str, str]:
    return page.eval_on_selector_all(".fa-card", "els => Object.fromEntries(els.map(e => [e.dataset.unit, e.innerText]))")


def edges(page) -> dict[str, bool]:
    """Each drawn edge ("source>target") and whether it is marked stable."""
    return page.eval_on_selector_all(
        "svg.ft-edges path[data-edge]", "els => Object.fromEntries(els.map(e => [e.dataset.edge, e.classList.contains('fa-stable')]))"
    )


def expected_cards(graph: dict, min_images: int = 1) -> dict[str, str]:
    n = graph["images"]
    return {
        node["id"]: f"{n} images" if node["depth"] == 0 else f"in {node['images']}/{n} images"
        for node in graph["nodes"]
        if node["depth"] == 0 or node["images"] >= min_images
    }


def expected_edges(graph: dict, stable: float, min_images: int = 1) -> dict[str, bool]:
    shown = expected_cards(graph, min_images)
    return {
        f"{e['source']}>{e['target']}": e["frequency"] >= stable
        for e in graph["edges"]
        if e["images"] >= min_images and e["source"] in shown and e["target"] in shown
    }


def set_stable(page, value: float) -> None:
    page.eval_on_selector(
        "[data-control=stable]", "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input', { bubbles: true })); }", value
    )


def query(page) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query)


def test_cards_counts_stability_threshold_min_images_and_root_picker(page, base_url, agg):
    _, _, data = agg
    square, line = data["graphs"]
    open_graph(page, base_url)  # a server with an aggregate opens on its class graph
    assert query(page)["agg"] == [square["root"]]
    assert cards(page) == expected_cards(square)
    # The stable marking is graph.json's at its threshold, then follows the control.
    assert edges(page) == expected_edges(square, 0.5) == {f"{e['source']}>{e['target']}": e["stable"] for e in square["edges"]}
    shot(page, "aggregate-01-graph")
    for stable in (0.9, 0.1, 1.0):
        set_stable(page, stable)
        assert edges(page) == expected_edges(square, stable)
        assert float(query(page)["stable"][0]) == stable
        assert f"{round(100 * stable)}%" in page.locator(".fa-legend").inner_text()
    assert sum(expected_edges(square, 0.9).values()) not in (0, len(square["edges"]))  # the threshold did split the edges

    # The minimum image count hides units and edges seen in fewer images (never the root).
    page.fill("[data-control=min]", "3")
    page.press("[data-control=min]", "Enter")
    page.wait_for_function("document.querySelector('.fa-view').dataset.min === '3'")
    assert cards(page) == expected_cards(square, 3) != expected_cards(square)
    assert edges(page) == expected_edges(square, 1.0, 3)
    assert f"{len(expected_cards(square, 3))} of {len(square['nodes'])} units" in page.locator(".fa-count").inner_text()

    # A reload restores the same view from the URL.
    before = (cards(page), edges(page))
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    wait_graph(page)
    assert (cards(page), edges(page)) == before

    # The root picker switches to the other class's graph.
    page.select_option("[data-control=root]", line["root"])
    wait_graph(page)
    assert cards(page) == expected_cards(line)
    assert query(page)["agg"] == [line["root"]]

    # A unit or root the graphs do not have is ignored: the first graph, no panel.
    open_graph(page, base_url, "?agg=classifier:9&unit=corners:99")
    assert cards(page) == expected_cards(square) and page.locator(".fa-panel").is_hidden()


def test_a_units_panel_lists_its_images_and_opens_one_as_an_image_tree(page, base_url, agg):
    _, out, data = agg
    square = data["graphs"][0]
    unit = "corners:0"
    node = next(n for n in square["nodes"] if n["id"] == unit)
    with AggregateDB(out / "aggregate.db") as db:
        rows = db.unit_images(square["root"], unit)
    assert len(rows) == node["images"] > 12  # more than one page
    open_graph(page, base_url, f"?agg={square['root']}")
    page.locator(f'.fa-card[data-unit="{unit}"]').click()
    panel = page.locator(".fa-panel")
    page.wait_for_selector(".fa-panel[data-loading=false]")
    assert panel.get_attribute("data-unit") == unit and query(page)["unit"] == [unit]
    assert panel.locator("tr[data-stat=images] td").inner_text().startswith(f"{node['images']} of {square['images']} (")

    def listed() -> list[str]:
        return panel.locator("li.fa-image").evaluate_all("els => els.map(e => e.dataset.image)")

    assert listed() == [r["image"] for r in rows[:12]]  # the same images, in the same order, a page at a time
    assert f"12 of {len(rows)} images" in panel.locator(".fa-note").inner_text()
    panel.locator("button[data-action=more]").click()
    page.wait_for_function(f"document.querySelectorAll('.fa-panel li.fa-image').length === {len(rows)}")
    page.wait_for_selector(".fa-panel[data-loading=false]")
    assert listed() == [r["image"] for r in rows]
    assert panel.locator("button[data-action=more]").is_hidden()
    page.wait_for_function("[...document.querySelectorAll('.fa-panel img')].every(i => i.complete && i.naturalWidth > 0)")
    assert panel.locator("img").count() == len(rows)
    page.mouse.move(2, 2)  # no hover zoom in the screenshot
    shot(page, "aggregate-02-panel")

    # Open an image where the unit is a first-level child of the root: the image tree shows it there.
    item = next(r for r in rows if r["depth"] == 1)
    panel.locator(f'li.fa-image[data-image="{item["image"]}"] a[data-action=open-tree]').click()
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector("body[data-busy=false]", state="attached")
    page.wait_for_function("[...document.querySelectorAll('.ft-card img')].every(i => i.complete && i.naturalWidth > 0)")
    assert query(page)["image"] == [f"aggregate:{item['image']}"] and query(page)["root"] == [square["root"]]
    nodes = page.eval_on_selector_all(".ft-card[data-node]", "els => els.map(e => e.dataset.node)")
    assert square["root"] in nodes
    first_level = {n.split("/")[1] for n in nodes if n.count("/") == 1}
    assert unit in first_level
    assert page.locator(f'.ft-card[data-node="{item["node"]}"]').get_attribute("class").split().count("ft-focus") == 1
    assert item["image"] in page.locator("#photo-caption").inner_text()
    shot(page, "aggregate-03-image-tree")

    # Back in the class graph, the panel is open again.
    page.go_back()
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector(".fa-panel[data-loading=false]")
    assert page.locator(".fa-panel").get_attribute("data-unit") == unit


def test_graph_html_opens_from_file_offline_with_the_explorers_cards(browser, base_url, agg):
    _, out, data = agg
    square = data["graphs"][0]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    outside: list[str] = []

    def route(r):
        if r.request.url.startswith(("file:", "data:")):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    offline = context.new_page()
    offline.on("pageerror", lambda e: errors.append(str(e)))
    offline.goto((out / "graph.html").as_uri())
    wait_graph(offline)
    assert cards(offline) == expected_cards(square)
    assert edges(offline) == expected_edges(square, 0.5)
    assert offline.locator(".fa-card img").count() == sum(min(3, n["images"]) for n in square["nodes"])
    offline.locator('.fa-card[data-unit="edges:1"]').click()
    with AggregateDB(out / "aggregate.db") as db:
        rows = db.unit_images(square["root"], "edges:1", 12)
    offline.wait_for_selector(".fa-panel[data-loading=false]")
    assert offline.locator("li.fa-image").evaluate_all("els => els.map(e => e.dataset.image)") == [r["image"] for r in rows]
    shot(offline, "aggregate-04-graph-html")
    texts = card_texts(offline)

    # The explorer draws the same cards with the same text: one renderer.
    live = context.new_page()
    context.unroute("**/*")
    open_graph(live, base_url, f"?agg={square['root']}")
    assert card_texts(live) == texts
    context.close()
    assert not errors and not outside, (errors, outside)
