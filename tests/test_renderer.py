"""The one tree renderer (static/tree_view.js) in both of its pages, in real headless Chromium:

- parity: the same tree drawn by the HTML export (opened from file://) and by the explorer (real
  uvicorn server) gives the same card texts, badges and layout;
- zoom, pan and fit: a 156-node tree (its leaves stacked) opens fitted with every card on screen, wheel zoom keeps the
  point under the pointer, a drag pans without clicking, f and the Fit button fit again.

Screenshots go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import io
import math
import os
import re

import httpx
import pytest
from PIL import Image

from featuretree.explainer import Explainer
from featuretree.models.zoo import load_model
from featuretree.render.export import render_html
from featuretree.server import ServerSettings, create_app
from featuretree.tree.model import FeatureTree

from .server_helpers import CHROMIUM, TIMEOUT, launched_chromium, live_server, shot, square_png

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (install it with: apt-get install chromium)")
playwright_api = pytest.importorskip("playwright.sync_api")

TOY = "toy_squares"

# Everything a card says, per node id: unit, share, score line, badges (text, colour class and
# tooltip), the rest overlay, notes, and its horizontal place in the layout.
CARD_TEXTS = """els => Object.fromEntries(els.map(e => [e.dataset.node, {
  unit: e.querySelector('.ft-unit').textContent,
  share: e.querySelector('.ft-share')?.textContent ?? null,
  sub: e.querySelector('.ft-sub').textContent,
  badges: [...e.querySelectorAll('.ft-verify .ft-badge')].map(b => [b.textContent, b.className, b.title]),
  rest: [...e.querySelectorAll('.ft-rest')].map(b => [b.textContent, b.title]),
  notes: [...e.querySelectorAll('.ft-note')].map(b => b.textContent),
  picture: Boolean(e.querySelector('.ft-pic img.ft-img')),
  left: e.style.left,
}]))"""


@pytest.fixture(scope="module")
def browser():
    yield from launched_chromium()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    ctx.on("weberror", lambda e: errors.append(str(e.error)))
    ctx.set_default_timeout(TIMEOUT)
    yield ctx
    ctx.close()
    assert not errors, errors


def transform(page) -> tuple[float, float, float]:
    """(scale, tx, ty) of the tree canvas."""
    text = page.eval_on_selector(".ft-canvas", "e => e.style.transform")
    m = re.fullmatch(r"translate\(([-\d.e]+)px, ([-\d.e]+)px\) scale\(([-\d.e]+)\)", text)
    assert m, text
    return float(m.group(3)), float(m.group(1)), float(m.group(2))


def off_stage(page) -> list[str]:
    """Cards not entirely inside the tree stage."""
    return page.evaluate(
        """() => { const s = document.querySelector('.ft-tree').getBoundingClientRect();
        return [...document.querySelectorAll('.ft-card')].filter(c => { const r = c.getBoundingClientRect();
          return r.left < s.left - 0.5 || r.right > s.right + 0.5 || r.top < s.top - 0.5 || r.bottom > s.bottom + 0.5; })
          .map(c => c.dataset.node); }"""
    )


def no_overlap(page) -> None:
    boxes = page.eval_on_selector_all(
        ".ft-card", "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })"
    )
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], f"cards overlap: {a} {b}"


def wait_images(page) -> None:
    page.wait_for_function("[...document.querySelectorAll('.ft-card img')].every(i => i.complete && i.naturalWidth > 0)")


# ----- parity: export and explorer draw the same cards -----------------------------------------------
def test_renderer_parity_export_and_explorer_show_identical_cards(context, tmp_path):
    # The export: `featuretree explain`'s output (Python API), depth 2, every edge verified by ablation.
    zoo = load_model(TOY)
    explainer = Explainer(zoo.module, zoo.default_layers, preprocess=zoo.preprocess, class_names=zoo.class_names)
    photo = Image.open(io.BytesIO(square_png())).convert("RGB")
    tree = explainer.analyze(photo).tree(k=5, depth=2, verify=True)
    out = tree.save(tmp_path / "export")
    ids = [n.id for n in tree.walk()]
    assert len(ids) == 13  # the square, its four corners, each corner's two edges

    exported = context.new_page()
    exported.goto((out / "tree.html").as_uri())
    exported.wait_for_selector(".ft-card")
    wait_images(exported)
    export_cards = exported.eval_on_selector_all(".ft-card", CARD_TEXTS)
    shot(exported, "parity-export")

    # The explorer on the same photo with the same nodes open, badges measured by the server.
    with live_server(create_app(ServerSettings(models=(TOY,)))) as url:
        image = httpx.post(f"{url}/api/images", files={"file": ("square.png", square_png(), "image/png")}).json()["image"]
        opened = "&".join(f"open={n.id}" for n in tree.walk() if n.children)
        page = context.new_page()
        page.goto(f"{url}/?model={TOY}&image={image}&root={tree.root.id}&{opened}")
        page.wait_for_selector("body[data-ready=true]")
        page.wait_for_function("document.querySelectorAll('.ft-card').length === 13 && document.body.dataset.busy === 'false'")
        page.wait_for_function(
            "document.querySelectorAll('.ft-verify .ft-badge').length === 13 && !document.querySelector('.ft-badge.pending')"
        )
        wait_images(page)
        explorer_cards = page.eval_on_selector_all(".ft-card", CARD_TEXTS)
        shot(page, "parity-explorer")

    assert sorted(export_cards) == sorted(explorer_cards) == sorted(ids)
    for node_id in ids:
        assert export_cards[node_id] == explorer_cards[node_id], node_id
    # What they agree on is real content, not empty cards.
    root = export_cards[tree.root.id]
    assert re.fullmatch(r"square · p=\d\.\d{3}", root["sub"]), root["sub"]
    assert re.fullmatch(r"all 4 zeroed −\d+(\.\d)?%", root["badges"][0][0]), root["badges"]
    assert root["rest"][0][0].startswith("4 ▾ · rest ")
    corner = export_cards["classifier:0/corners:0"]
    assert re.fullmatch(r"\d+\.\d%", corner["share"]) and re.fullmatch(r"\d+\.\d% · score \S+", corner["sub"])
    assert re.fullmatch(r"ablation −\d+(\.\d)?%", corner["badges"][0][0]) and "ok" in corner["badges"][0][1]
    assert export_cards["classifier:0/corners:0/edges:0"]["notes"] == ["first layer"]
    assert all(card["picture"] for card in export_cards.values())
    # Scores print one way everywhere: three significant digits (JavaScript's toPrecision(3)).
    score = tree.find("classifier:0/corners:1").score
    assert 0.1 <= abs(score) < 100
    decimals = 2 - math.floor(math.log10(abs(score)))
    share = tree.find("classifier:0/corners:1").share
    assert explorer_cards["classifier:0/corners:1"]["sub"] == f"{100 * share:.1f}% · score {score:.{decimals}f}"


# ----- zoom, pan and fit -------------------------------------------------------------------------------
def wide_tree(k: int = 5, depth: int = 3) -> FeatureTree:
    """A k=5, depth-3 tree (156 nodes) without pictures, as wide as a real depth-3 EfficientNet export."""
    chain = [{"name": f"block{i}", "type": "Conv2d", "shape": [64, 14, 14]} for i in range(depth)] + [
        {"name": "fc", "type": "Linear", "shape": [10]}
    ]

    def node(path: list[str], share: float | None) -> dict:
        layer = chain[len(chain) - len(path)]["name"]
        last = len(path) - 1 == depth
        kids = [] if last else [node([*path, f"{chain[len(chain) - len(path) - 1]['name']}:{i}"], 0.3 / (i + 1)) for i in range(k)]
        return {
            "id": "/".join(path),
            "path": path,
            "layer": layer,
            "unit": int(path[-1].split(":")[1]),
            "depth": len(path) - 1,
            "label": "zebra" if len(path) == 1 else None,
            "score": None if share is None else 12.3456 * share,
            "share": share,
            "box": [0, 0, 224, 224],
            "expanded": not last,
            "coverage": None if last else 0.62,
            "total_positive": None if last else 20.0,
            "children": kids,
        }

    return FeatureTree.from_dict(
        {
            "version": 1,
            "model": {"name": "synthetic", "preprocess": {}, "chain": chain},
            "image": {"source": "none.png", "original_size": [224, 224], "size": [224, 224]},
            "top_classes": [{"index": 0, "name": "zebra", "probability": 0.9, "logit": 3.0}],
            "settings": {"k": k, "depth": depth, "rule": "gradient", "seed_mode": "sum", "negatives": 0},
            "root": node(["fc:0"], None),
        }
    )


def test_export_of_a_156_node_tree_opens_fitted_and_zooms_pans_and_fits(context, tmp_path):
    tree = wide_tree()
    assert len(tree) == 156
    page_file = tmp_path / "wide.html"
    page_file.write_text(render_html(tree, files={}))
    page = context.new_page()
    page.goto(page_file.as_uri())
    page.wait_for_selector(".ft-card")
    # 125 leaves side by side would be about 20,000 px wide; each group of leaf siblings is stacked in a
    # column under its parent instead (25 columns), one card below the other, none overlapping.
    width = page.eval_on_selector(".ft-canvas", "e => parseFloat(e.style.width)")
    assert 3_000 < width < 6_000
    stack = page.eval_on_selector_all(
        '.ft-card[data-node^="fc:0/block2:0/block1:0/"]', "els => els.map(e => [parseFloat(e.style.left), parseFloat(e.style.top)])"
    )
    assert len(stack) == 5 and len({left for left, _ in stack}) == 1 and len({top for _, top in stack}) == 5
    no_overlap(page)
    # Opens fitted: every one of the 156 cards on screen, at a quarter of full size or more.
    assert page.locator(".ft-card").count() == 156
    assert page.get_attribute(".ft-tree", "data-fitted") == "true"
    fitted = transform(page)
    assert 0.2 <= fitted[0] < 1 and off_stage(page) == []
    # Layer labels keep their size at any zoom, one per row, in the chain's order.
    labels = page.locator(".ft-rowlabel strong")
    assert labels.all_inner_texts() == ["fc", "block2", "block1", "block0"]
    font = labels.first.evaluate("e => getComputedStyle(e).fontSize")
    assert labels.first.bounding_box()["height"] >= 10
    shot(page, "zoom-export-156-fitted")

    # Wheel zoom around the pointer: the canvas point under the pointer stays put.
    stage = page.locator(".ft-tree").bounding_box()
    target = page.locator('.ft-card[data-node="fc:0/block2:1"]').bounding_box()
    x, y = round(target["x"] + target["width"] / 2), round(target["y"] + target["height"] / 2)  # whole pixels, as mouse events
    page.mouse.move(x, y)
    s0, tx0, ty0 = transform(page)
    under = ((x - stage["x"] - tx0) / s0, (y - stage["y"] - ty0) / s0)
    for _ in range(3):
        page.mouse.wheel(0, -400)
    page.wait_for_function(f"parseFloat(document.querySelector('.ft-tree').dataset.scale) > {4 * s0}")
    s1, tx1, ty1 = transform(page)
    assert s1 > 4 * s0 and page.get_attribute(".ft-tree", "data-fitted") == "false"
    assert page.locator('.ft-card[data-node="fc:0/block2:1"]').bounding_box()["width"] == pytest.approx(target["width"] * s1 / s0, rel=1e-3)
    assert ((x - stage["x"] - tx1) / s1, (y - stage["y"] - ty1) / s1) == pytest.approx(under, abs=1.0)
    assert len(off_stage(page)) > 100
    assert labels.first.evaluate("e => getComputedStyle(e).fontSize") == font
    shot(page, "zoom-export-156-zoomed")

    # Drag to pan, starting on a picture: the tree moves by the drag, and the picture is not clicked.
    on_screen = page.evaluate(
        """() => { const s = document.querySelector('.ft-tree').getBoundingClientRect();
        return [...document.querySelectorAll('.ft-card')].find(c => { const r = c.querySelector('.ft-pic').getBoundingClientRect();
          const x = (r.left + r.right) / 2, y = (r.top + r.bottom) / 2;
          return x > s.left + 150 && x < s.right - 200 && y > s.top + 20 && y < s.bottom - 100; }).dataset.node; }"""
    )
    box = page.locator(f'.ft-card[data-node="{on_screen}"] .ft-pic').bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 150, box["y"] + box["height"] / 2 + 40, steps=6)
    page.mouse.up()
    s2, tx2, ty2 = transform(page)
    assert (s2, tx2 - tx1, ty2 - ty1) == pytest.approx((s1, 150, 40), abs=0.5)
    assert page.locator(".ft-card.collapsed").count() == 0

    # f fits again; so does the Fit button after zooming with the + button.
    page.keyboard.press("f")
    assert page.get_attribute(".ft-tree", "data-fitted") == "true" and off_stage(page) == []
    assert transform(page) == pytest.approx(fitted, rel=1e-4)
    # A plain click on a (tiny, fitted) picture still hides that node's children; the tree refits.
    page.locator('.ft-card[data-node="fc:0/block2:0"] .ft-pic').click()
    assert page.locator('.ft-card[data-node="fc:0/block2:0"]').get_attribute("class").split().count("collapsed") == 1
    assert page.locator(".ft-card").count() == 156 - 30 and off_stage(page) == []
    fitted = transform(page)
    page.click(".ft-zoombar button[data-action=zoom-in]")
    page.click(".ft-zoombar button[data-action=zoom-in]")
    assert transform(page)[0] == pytest.approx(fitted[0] * 1.25**2, rel=1e-4) and page.get_attribute(".ft-tree", "data-fitted") == "false"
    page.click(".ft-zoombar button[data-action=fit]")
    assert page.get_attribute(".ft-tree", "data-fitted") == "true" and off_stage(page) == []
    page.keyboard.press("0")
    assert transform(page)[0] == pytest.approx(1.0)


def test_explorer_opens_fitted_and_zoom_fit_work(context):
    with live_server(create_app(ServerSettings(models=(TOY,)))) as url:
        image = httpx.post(f"{url}/api/images", files={"file": ("square.png", square_png(), "image/png")}).json()["image"]
        page = context.new_page()
        page.set_viewport_size({"width": 900, "height": 640})
        opened = "&".join(f"open=classifier:0/corners:{i}" for i in range(4))
        page.goto(f"{url}/?model={TOY}&image={image}&root=classifier:0&open=classifier:0&{opened}")
        page.wait_for_selector("body[data-ready=true]")
        page.wait_for_function("document.querySelectorAll('.ft-card').length === 13 && document.body.dataset.busy === 'false'")
        wait_images(page)
        # 8 leaves do not fit 900 px at full size: the page opens fitted, all cards visible.
        assert page.get_attribute(".ft-tree", "data-fitted") == "true"
        assert transform(page)[0] < 1 and off_stage(page) == []
        assert page.locator(".ft-rowlabel strong").all_inner_texts() == ["classifier", "corners", "edges"]
        shot(page, "zoom-explorer-fitted")
        for _ in range(3):
            page.keyboard.press("+")
        assert page.get_attribute(".ft-tree", "data-fitted") == "false" and off_stage(page)
        shot(page, "zoom-explorer-zoomed")
        # Dragging across a picture pans and does not expand or collapse it.
        pic = page.locator('.ft-card[data-node="classifier:0/corners:1"] .ft-pic')
        box = pic.bounding_box()
        before = transform(page)
        page.mouse.move(box["x"] + 20, box["y"] + 20)
        page.mouse.down()
        page.mouse.move(box["x"] - 100, box["y"] + 10, steps=5)
        page.mouse.up()
        after = transform(page)
        assert after[1] == pytest.approx(before[1] - 120, abs=0.5)
        assert page.locator(".ft-card").count() == 13 and "open=classifier%3A0%2Fcorners%3A1" in page.url
        page.keyboard.press("f")
        assert page.get_attribute(".ft-tree", "data-fitted") == "true" and off_stage(page) == []
        # Fitted, a click still collapses a node; the tree refits around what is left.
        pic.click()
        page.wait_for_function("document.querySelectorAll('.ft-card').length === 11")
        assert off_stage(page) == []


def test_a_single_row_of_many_leaves_stays_side_by_side(context, tmp_path):
    """Stacking leaves is chosen only when it fits the tree larger: 64 children of the root stay in one row."""
    tree = wide_tree(k=64, depth=1)
    page_file = tmp_path / "row.html"
    page_file.write_text(render_html(tree, files={}))
    page = context.new_page()
    page.goto(page_file.as_uri())
    page.wait_for_selector(".ft-card")
    tops = page.eval_on_selector_all('.ft-card:not([data-node="fc:0"])', "els => els.map(e => e.style.top)")
    assert len(tops) == 64 and len(set(tops)) == 1
    assert page.get_attribute(".ft-tree", "data-fitted") == "true" and off_stage(page) == []
