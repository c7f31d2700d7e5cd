"""The explorer's model panel (GET /api/check, in a real browser) and `serve` refusing a chain that does
not cut the network unless --allow-bypass."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import httpx
import pytest
from fastapi.testclient import TestClient

import featuretree as ft
from featuretree.cli import main
from featuretree.core.images import Preprocess
from featuretree.server import ServerSettings, create_app

from .bypass_models import ResNetLike, seeded
from .server_helpers import CHROMIUM, TIMEOUT, launched_chromium, live_server, shot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BYPASS_CHAIN = "layer1.0.conv1,layer2,fc"


def planted(allow_bypass: bool = True) -> ft.Explainer:
    ex = ft.Explainer(seeded(ResNetLike()), BYPASS_CHAIN.split(","), preprocess=Preprocess(size=32), allow_bypass=allow_bypass)
    ex.name = "planted"
    return ex


def test_api_check_is_the_explainers_check():
    toy = ft.Explainer.from_zoo("toy_squares")
    client = TestClient(create_app(ServerSettings(models=("toy_squares",)), loader=lambda name, device: toy))
    got = client.get("/api/check", params={"model": "toy_squares"})
    assert got.status_code == 200, got.text
    data = got.json()
    expected = toy.check(speed=False).to_dict()
    assert {k: v for k, v in data.items() if k != "speed"} == {k: v for k, v in expected.items() if k != "speed"}
    assert data["speed"]["text"].startswith("estimate: ")
    unknown = client.get("/api/check", params={"model": "nope"})
    assert unknown.status_code == 404 and "unknown model" in unknown.json()["error"]
    client.app.state.workspace.close()


def test_api_reports_the_bypass_and_its_share():
    ex = planted()
    client = TestClient(create_app(ServerSettings(models=("planted",)), loader=lambda name, device: ex))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.BypassWarning)
        check = client.get("/api/check", params={"model": "planted"}).json()
        assert [(row["name"], row["cuts"]) for row in check["layers"]] == [("layer1.0.conv1", True), ("layer2", False), ("fc", True)]
        root = client.get("/api/analysis", params={"model": "planted", "image": "chelsea"}).json()["default_root"]
        fc = client.get("/api/children", params={"model": "planted", "image": "chelsea", "path": root, "k": 2}).json()
        assert fc["bypass"] is None  # layer2 is a cut below fc
        child = fc["children"][0]["id"]
        deeper = client.get("/api/expand", params={"model": "planted", "image": "chelsea", "path": child, "k": 2}).json()
    assert deeper["bypass"]["layer"] == "layer1.0.conv1" and deeper["bypass"]["source"] == "the input"
    client.app.state.workspace.close()


def _model_file(tmp_path) -> str:
    path = tmp_path / "planted.py"
    path.write_text(
        "from tests.bypass_models import ResNetLike, seeded\n"
        "from featuretree import ZooModel, Preprocess\n"
        "def build():\n"
        "    return ZooModel('planted', seeded(ResNetLike()), Preprocess(size=32), [f'c{i}' for i in range(10)],"
        " ['stem', 'layer1', 'layer2', 'fc'], 'a planted residual net')\n"
    )
    return f"{path}:build"


def test_serve_refuses_a_chain_that_does_not_cut(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(ROOT)
    assert main(["serve", "--model", _model_file(tmp_path), "--layers", BYPASS_CHAIN, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "chain layer 'layer2' also receives input that bypasses 'layer1.0.conv1'" in err and "--allow-bypass" in err


def test_serve_with_allow_bypass_starts_and_warns(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "src"), ROOT, os.environ.get("PYTHONPATH", "")])}
    command = ["serve", "--model", _model_file(tmp_path), "--layers", BYPASS_CHAIN, "--port", "0", "--allow-bypass"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "featuretree.cli", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line + proc.stderr.read()
        check = httpx.get(match.group(0) + "api/check", params={"model": _model_file(tmp_path)}, timeout=60).json()
        assert {row["name"]: row["cuts"] for row in check["layers"]}["layer2"] is False
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "featuretree: warning: chain layer 'layer2' also receives input that bypasses 'layer1.0.conv1'" in proc.stderr.read()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (install it with: apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    yield from launched_chromium()


def test_model_panel_in_the_browser(browser):
    ex = planted()
    toy = ft.Explainer.from_zoo("toy_squares")
    app = create_app(ServerSettings(models=("planted", "toy_squares")), loader=lambda name, device: ex if name == "planted" else toy)
    errors: list[str] = []
    with warnings.catch_warnings(), live_server(app) as url:
        warnings.simplefilter("ignore", ft.BypassWarning)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(TIMEOUT)
        page.goto(f"{url}/?model=planted")
        page.wait_for_selector("#model-check table.check-chain")
        panel = page.inner_text("#model-check")
        assert "evidence bypasses a chain layer" in panel
        assert "chain layer 'layer2' also receives input that bypasses 'layer1.0.conv1'" not in panel  # allowed: no problem line
        rows = page.eval_on_selector_all(
            "#model-check tr", "rs => rs.slice(1).map(r => [...r.cells].map(c => c.textContent).concat(r.className))"
        )
        assert [(r[0], r[3], r[5]) for r in rows] == [("layer1.0.conv1", "yes", ""), ("layer2", "no", "bad"), ("fc", "yes", "")]
        assert page.get_attribute("#model-check tr.bad", "title") == (
            "receives the input around 'layer1.0.conv1', through a skip connection (an addition)"
        )
        rules = page.inner_text("#model-check ul.check-rules")
        assert "gradient exact" in rules and "guided exact" in rules
        # Expand the root's first child: its rest badge carries the share that goes around layer1.0.conv1.
        page.wait_for_selector(".ft-card")
        child = page.eval_on_selector_all(".ft-card", "els => els.map(e => e.dataset.node).filter(n => n.includes('/'))")[0]
        page.click(f'.ft-card[data-node="{child}"] .ft-pic')
        badge = page.wait_for_selector(f'.ft-card[data-node="{child}"] .ft-rest.bypass')
        assert re.search(r"around -?\d+%", badge.inner_text())
        assert "goes around layer1.0.conv1 (from the input, through a skip connection (an addition))" in badge.get_attribute("title")
        shot(page, "model-panel-bypass")
        # A clean model's panel.
        page.select_option("#model", "toy_squares")
        page.wait_for_function("document.querySelector('#model-check').dataset.model === 'toy_squares'")
        assert "✓ the chain cuts the network at every layer" in page.inner_text("#model-check")
        shot(page, "model-panel-toy")
        assert not errors, errors
