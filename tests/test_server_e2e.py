"""End-to-end tests of the explorer: real uvicorn on 127.0.0.1, real headless Chromium (Playwright).

Screenshots go to test-artifacts/ (gitignored); look at them after a run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from featuretree.server import ServerSettings, create_app

from .server_helpers import ARTIFACTS, CHROMIUM, TIMEOUT, checked_page, launched_chromium, live_server, shot, square_png
from .test_server_verify_exemplars import build_exemplar_db

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (install it with: apt-get install chromium)")
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def base_url():
    with live_server(create_app(ServerSettings(models=("toy_squares", "efficientnet_lite0")))) as url:
        yield url


@pytest.fixture(scope="module")
def db_url(tmp_path_factory):
    """A server started as with `featuretree serve --db DB` on a real exemplar database of the toy net."""
    db = build_exemplar_db(tmp_path_factory.mktemp("e2e-exemplars"))
    with live_server(create_app(ServerSettings(models=("toy_squares",), exemplar_db=str(db)))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    yield from launched_chromium()


@pytest.fixture
def page(browser):
    yield from checked_page(browser, viewport={"width": 1280, "height": 800}, accept_downloads=True)


def card(page, node_id: str):
    return page.locator(f'.ft-card[data-node="{node_id}"]')


def cards(page) -> list[str]:
    return page.eval_on_selector_all(".ft-card", "els => els.map(e => e.dataset.node).sort()")


def wait_idle(page) -> None:
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector("body[data-busy=false]", state="attached")
    page.wait_for_function("[...document.querySelectorAll('.ft-card img')].every(i => i.complete && i.naturalWidth > 0)")


def open_page(page, base_url: str, query: str) -> None:
    page.goto(f"{base_url}/?{query}")
    wait_idle(page)


def no_overlap(page) -> None:
    boxes = page.eval_on_selector_all(
        ".ft-card, figure.ft-pinned",
        "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })",
    )
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], f"cards overlap: {a} {b}"


def badge(page, node_id: str):
    """The node's ablation badge once its parent's edges are measured."""
    chip = card(page, node_id).locator(".ft-verify .ft-badge:not(.pending)")
    chip.wait_for(state="visible")
    return chip


def fits(page, selector: str) -> None:
    """Text of every matching element is not cut off (no horizontal overflow)."""
    cut = page.eval_on_selector_all(selector, "els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)")
    assert not cut, f"cut-off text: {cut}"


def upload_square(page) -> None:
    page.set_input_files("#file", files=[{"name": "square.png", "mimeType": "image/png", "buffer": square_png()}])
    page.wait_for_function("new URLSearchParams(location.search).get('image')?.length === 64")
    wait_idle(page)


def test_e2e_toy_page_expand_hover_remove_reroot_reload(page, base_url):
    open_page(page, base_url, "model=toy_squares")
    upload_square(page)
    # Top-5 text and the default tree: root 'square' expanded to the four corners.
    top5 = page.locator("#top5").inner_text()
    assert top5.splitlines()[0].strip() == "square"
    assert "line" in top5
    corners = [f"classifier:0/corners:{i}" for i in range(4)]
    assert cards(page) == sorted(["classifier:0", *corners])
    no_overlap(page)
    shot(page, "toy-01-default")

    # Expand a child: loading state, then its two edges.
    card(page, corners[1]).locator(".ft-pic").click()
    wait_idle(page)
    assert sorted(c for c in cards(page) if c.startswith(corners[1] + "/")) == [f"{corners[1]}/edges:1", f"{corners[1]}/edges:2"]
    no_overlap(page)

    # Hover zoom shows a large copy of the same picture.
    target = card(page, f"{corners[1]}/edges:1")
    target.locator(".ft-pic").hover()
    zoom = page.locator(".ft-zoom")
    zoom.wait_for(state="visible")
    assert zoom.bounding_box()["width"] > 2 * target.locator(".ft-pic").bounding_box()["width"]
    assert zoom.locator("img").evaluate("i => i.src") == target.locator("img").evaluate("i => i.src")
    shot(page, "toy-02-expanded-hover")
    page.mouse.move(5, 5)
    zoom.wait_for(state="hidden")

    # Switch picture kind, change k: the tree is recomputed without reloading.
    page.click('#views button[data-view="heatmap"]')
    assert "view=heatmap" in page.url and "view%3Dheatmap" not in page.url
    page.fill("#k", "2")
    page.press("#k", "Enter")
    page.wait_for_function("document.querySelectorAll('.ft-card').length === 5")
    wait_idle(page)
    assert cards(page) == sorted(["classifier:0", corners[0], corners[1], f"{corners[1]}/edges:1", f"{corners[1]}/edges:2"])

    # Remove a node; the URL records it; reload restores exactly the same tree.
    card(page, corners[0]).locator('button[data-action="remove"]').click()
    assert corners[0] not in cards(page)
    before = cards(page)
    url = page.url
    page.reload()
    wait_idle(page)
    assert cards(page) == before and page.url == url
    shot(page, "toy-03-removed-reloaded")

    # Keys: h hides the photo panel, b hides the buttons.
    page.keyboard.press("h")
    assert not page.locator("#panel").is_visible()
    page.keyboard.press("b")
    assert not card(page, "classifier:0").locator(".ft-buttons button").first.is_visible()
    shot(page, "toy-04-no-panel-no-buttons")
    page.keyboard.press("h")
    page.keyboard.press("b")

    # Re-root at a corner: it becomes the root with its edges below.
    card(page, corners[1]).locator('button[data-action="reroot"]').click()
    wait_idle(page)
    assert cards(page) == ["corners:1", "corners:1/edges:1", "corners:1/edges:2"]
    assert "root=corners%3A1" in page.url

    # Remove the root: no crash, a hint to pick a new one; then pick from the top-5.
    card(page, "corners:1").locator('button[data-action="remove"]').click()
    assert cards(page) == []
    assert "No root" in page.locator("#stage").inner_text()
    page.locator("#top5 button", has_text="line").click()
    wait_idle(page)
    assert cards(page)[0] == "classifier:1"

    # A typed root, and a bad one that gives a clear message.
    page.fill("#root-input", "corners:2")
    page.press("#root-input", "Enter")
    wait_idle(page)
    assert "corners:2" in cards(page)
    page.fill("#root-input", "corners:99")
    page.press("#root-input", "Enter")
    page.locator("#toast").wait_for(state="visible")
    assert "out of range" in page.locator("#toast").inner_text()


def test_e2e_gallery_upload_errors_and_export_html(page, base_url, tmp_path):
    open_page(page, base_url, "model=toy_squares&image=coffee")
    assert page.locator('#gallery button[data-sample="coffee"]').get_attribute("aria-pressed") == "true"
    page.click('#gallery button[data-sample="rocket"]')
    page.wait_for_function("location.search.includes('image=rocket')")
    wait_idle(page)
    # A non-image upload: a clear message, the page keeps working.
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello, not a photo"}])
    page.locator("#toast").wait_for(state="visible")
    assert "not an image" in page.locator("#toast").inner_text()
    # Drag and drop a real photo onto the page.
    data = list(square_png())
    page.evaluate(
        """bytes => { const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], 'dropped.png', { type: 'image/png' }));
        window.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true })); }""",
        data,
    )
    page.wait_for_function("new URLSearchParams(location.search).get('image')?.length === 64")
    wait_idle(page)
    assert page.locator("#top5").inner_text().splitlines()[0].strip() == "square"
    card(page, "classifier:0/corners:0").locator(".ft-pic").click()
    wait_idle(page)
    shown = cards(page)

    with page.expect_download() as download_info:
        page.click("#export-html")
    saved = tmp_path / "export.html"
    download_info.value.save_as(saved)
    assert saved.stat().st_size > 10_000
    exported = page.context.new_page()
    exported.goto(saved.as_uri())
    exported.wait_for_selector(".ft-card")
    assert sorted(exported.eval_on_selector_all(".ft-card", "els => els.map(e => e.dataset.node)")) == shown
    exported.screenshot(path=str(ARTIFACTS / "toy-05-exported-html.png"))
    with page.expect_download() as json_info:
        page.click("#export-json")
    import json

    tree = json.loads(Path(json_info.value.path()).read_text())
    assert tree["root"]["id"] == "classifier:0" and len(tree["root"]["children"]) == 4


def test_e2e_verification_badges_and_pinned_exemplars(page, db_url, tmp_path):
    open_page(page, db_url, "model=toy_squares")
    upload_square(page)
    corners = [f"classifier:0/corners:{i}" for i in range(4)]
    # The root is expanded by default: every child gets a measured badge, green (the classifier is linear).
    for node in corners:
        chip = badge(page, node)
        assert re.fullmatch(r"ablation −\d+(\.\d)?%", chip.inner_text()), chip.inner_text()
        assert "ok" in chip.get_attribute("class").split()
        assert "gradient × activation" in chip.get_attribute("title")
    assert "rest" in card(page, "classifier:0").locator(".ft-pic .ft-rest").inner_text()
    # The root's own row: all its shown children zeroed together (linear classifier: agrees exactly).
    joint = badge(page, "classifier:0")
    assert re.fullmatch(r"all 4 zeroed −\d+(\.\d)?%", joint.inner_text()), joint.inner_text()
    assert "ok" in joint.get_attribute("class").split()
    assert "all 4 shown children together lowers this node's objective" in joint.get_attribute("title")
    # Expanding a child measures its edges too.
    card(page, corners[1]).locator(".ft-pic").click()
    wait_idle(page)
    grand = [f"{corners[1]}/edges:1", f"{corners[1]}/edges:2"]
    for node in grand:
        assert badge(page, node).inner_text().startswith("ablation ")
    fits(page, ".ft-card .ft-verify")
    shot(page, "toy-06-verification-badges")

    # Pin two exemplar grids: both show, beside their nodes, nothing overlaps; the URL keeps them.
    for node in ("classifier:0", corners[2]):
        card(page, node).locator('button[data-action="exemplars"]').click()
    grids = page.locator("figure.ft-pinned")
    assert grids.count() == 2
    page.wait_for_function("[...document.querySelectorAll('figure.ft-pinned img')].every(i => i.complete && i.naturalWidth > 0)")
    for node in ("classifier:0", corners[2]):
        fig = page.locator(f'figure.ft-pinned[data-exemplars="{node}"]').bounding_box()
        box = card(page, node).bounding_box()
        assert fig["x"] >= box["x"] + box["width"] and abs(fig["y"] - box["y"]) < 1  # right beside its card
        assert fig["height"] == pytest.approx(box["height"], abs=1)
    no_overlap(page)
    fits(page, "figure.ft-pinned figcaption")
    assert page.url.count("ex=") == 2
    page.keyboard.press("h")  # the whole tree in view
    shot(page, "toy-07-two-exemplar-grids")
    page.keyboard.press("h")
    page.reload()
    wait_idle(page)
    assert page.locator("figure.ft-pinned").count() == 2
    # Unpin one.
    page.locator(f'figure.ft-pinned[data-exemplars="{corners[2]}"] button[data-action="unpin"]').click()
    assert page.locator("figure.ft-pinned").count() == 1 and page.url.count("ex=") == 1

    # The exported HTML shows the badges and the exemplar grids.
    with page.expect_download() as download_info:
        page.click("#export-html")
    saved = tmp_path / "export.html"
    download_info.value.save_as(saved)
    exported = page.context.new_page()
    exported.set_viewport_size({"width": 1280, "height": 1000})
    exported.goto(saved.as_uri())
    exported.wait_for_selector(".ft-card")
    assert exported.locator(".ft-card .ft-badge").count() == 7  # 4 corners + 2 edges + the root's joint one
    root_badge = exported.locator('.ft-card[data-node="classifier:0"] .ft-badge')
    assert re.fullmatch(r"all 4 zeroed −\d+(\.\d)?%", root_badge.inner_text()), root_badge.inner_text()
    assert exported.locator(".ft-exemplars figure img").count() == 7  # one grid per distinct unit
    exported.wait_for_function("[...document.querySelectorAll('.ft-exemplars img')].every(i => i.complete && i.naturalWidth > 0)")
    exported.screenshot(path=str(ARTIFACTS / "toy-08-exported-badges-exemplars.png"), full_page=True)
    exported.close()


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1280, 800), (3840, 2160)])
def test_e2e_efficientnet_cat_deep_link(page, base_url, size):
    page.set_viewport_size({"width": size[0], "height": size[1]})
    open_page(page, base_url, "model=efficientnet_lite0&image=chelsea")
    assert "Egyptian cat" in page.locator("#top5").inner_text()
    root = page.eval_on_selector(".ft-card.root", "e => e.dataset.node")
    assert root == "_fc:285"
    kids = sorted(c for c in cards(page) if c != root)
    assert len(kids) == 5
    child = kids[0]
    card(page, child).locator(".ft-pic").click()
    wait_idle(page)
    grand = [c for c in cards(page) if c.startswith(child + "/")]
    assert len(grand) == 5
    no_overlap(page)
    page.click('#views button[data-view="rf_box"]')
    wait_idle(page)
    shot(page, f"cat-{size[0]}x{size[1]}")
    # The link restores the same tree in a fresh tab.
    fresh = page.context.new_page()
    fresh.set_default_timeout(TIMEOUT)
    fresh.goto(page.url)
    wait_idle(fresh)
    assert cards(fresh) == cards(page)
    fresh.close()


def test_e2e_pinned_exemplars_show_the_servers_error_when_the_grid_fails(page, tmp_path):
    """The shared renderer shows a failed panel picture with the reason the explorer's server gives."""
    db = build_exemplar_db(tmp_path / "ex")
    with live_server(create_app(ServerSettings(models=("toy_squares",), exemplar_db=str(db)))) as url:
        open_page(page, url, "model=toy_squares")
        upload_square(page)
        for path in tmp_path.joinpath("ex").glob("toy.db*"):
            path.unlink()  # the database is gone while the server runs
        card(page, "classifier:0/corners:2").locator('button[data-action="exemplars"]').click()
        note = page.locator('figure.ft-pinned[data-exemplars="classifier:0/corners:2"] .ft-note.error')
        note.wait_for(state="visible")
        text = note.inner_text()
        assert "\n" not in text and "could not load" not in text and "toy.db" in text, text


@pytest.mark.slow
def test_e2e_efficientnet_contribution_view_in_the_explorer_and_its_export(page, base_url, tmp_path):
    open_page(page, base_url, "model=efficientnet_lite0&image=chelsea")
    # The default view, chosen by the numbers in the README.
    assert page.locator('#views button[data-view="contribution"]').get_attribute("aria-pressed") == "true"
    root = page.eval_on_selector(".ft-card.root", "e => e.dataset.node")
    kids = sorted(c for c in cards(page) if c != root)
    assert len(kids) == 5
    # The logit's own map is its layer below's (all channels summed), asked for as a picture like any view.
    assert "/api/picture.png" in card(page, root).locator("img.ft-img").get_attribute("src")
    for kid in kids:  # pictures arrive with /api/expand, in the view's export format
        assert card(page, kid).locator("img.ft-img").get_attribute("src").startswith("data:image/jpeg;base64,")
    card(page, kids[0]).locator(".ft-pic").click()
    wait_idle(page)
    assert len([c for c in cards(page) if c.startswith(kids[0] + "/")]) == 5
    no_overlap(page)
    page.mouse.move(310, 790)  # off the cards: no hover zoom over the tree in the screenshot
    shot(page, "cat-contribution-explorer")

    with page.expect_download() as download_info:
        page.click("#export-html")
    saved = tmp_path / "export.html"
    download_info.value.save_as(saved)
    exported = page.context.new_page()
    exported.goto(saved.as_uri())
    exported.wait_for_selector(".ft-card")
    assert exported.locator('button[data-view="contribution"]').get_attribute("aria-pressed") == "true"  # the default here too
    exported.wait_for_function("[...document.querySelectorAll('.ft-card img.ft-img')].every(i => i.complete && i.naturalWidth > 0)")
    assert exported.eval_on_selector_all(".ft-card img.ft-img", "els => els.length") == 11  # every node, the root included
    exported.screenshot(path=str(ARTIFACTS / "cat-contribution-export.png"))
    exported.close()
