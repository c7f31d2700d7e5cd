"""Shared helpers for the explorer tests: real photos, a real uvicorn server in a thread."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

from featuretree.server.run import serve_in_thread

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"  # screenshots the browser tests leave
TIMEOUT = 120_000  # ms for any one browser step: the 2-core machine can be slow


def launched_chromium():
    """Headless Chromium for a module-scoped ``browser`` fixture: ``yield from launched_chromium()``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def checked_page(browser, **context_options):
    """A page in a fresh browser context for a ``page`` fixture (``yield from checked_page(browser, ...)``):
    any uncaught error in the page fails the test when the context closes."""
    context = browser.new_context(**context_options)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(TIMEOUT)
    yield page
    context.close()
    assert not errors, errors


def shot(page, name: str) -> None:
    """A screenshot of the page's viewport into test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def square_png(size: int = 64, margin: int = 16) -> bytes:
    """A white square on black: the toy model's 'square' class, with a known tree."""
    img = Image.new("RGB", (size, size), (0, 0, 0))
    ImageDraw.Draw(img).rectangle([margin, margin, size - margin - 1, size - margin - 1], fill=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def live_server(app):
    """A real uvicorn server on 127.0.0.1 in a background thread; yields the base URL."""
    return serve_in_thread(app)


def assert_error(r, status: int, *words: str) -> None:
    """A JSON error response: the status, a one-line message, and the expected words in it."""
    assert r.status_code == status, r.text
    body = r.json()
    assert "\n" not in body["error"] and body["problem"]
    for word in words:
        assert word.lower() in body["error"].lower(), body["error"]
