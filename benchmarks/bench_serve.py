"""Click-to-rendered-children for one expansion in the explorer, EfficientNet-Lite0 on this CPU.

Server side: GET /api/children for a node plus GET /api/picture.png for each child (six at
once, as a browser does) over real HTTP to a real uvicorn server (a fresh node each repetition; the forward pass
and the pictures of the root's children, which the page shows before the click, already done).
Browser: headless Chromium clicks the node's picture; the page records the time until every
child card is drawn and its picture decoded (window.ftTimings). Medians are printed.

    PYTHONPATH=src python benchmarks/bench_serve.py [--image chelsea] [--k 5] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from featuretree.server import ServerSettings, create_app
from featuretree.server.run import serve_in_thread

MODEL = "efficientnet_lite0"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def app():
    return create_app(ServerSettings(models=(MODEL,)))


def root_children(client: httpx.Client, image: str, k: int) -> tuple[str, list[str]]:
    an = client.get("/api/analysis", params={"model": MODEL, "image": image}).json()
    root = an["default_root"]
    kids = client.get("/api/children", params={"model": MODEL, "image": image, "path": root, "k": k}).json()
    return root, [c["id"] for c in kids["children"]]


def server_side(image: str, k: int, reps: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"children": [], "pictures": [], "total": []}
    with serve_in_thread(app()) as url, httpx.Client(base_url=url, timeout=300) as client:
        _, nodes = root_children(client, image, max(k, reps))
        # What the page has already shown before the click: the root's children with their pictures.
        for node in nodes:
            client.get("/api/picture.png", params={"model": MODEL, "image": image, "path": node, "view": "guided"}).raise_for_status()
        for node in nodes[:reps]:
            t0 = time.perf_counter()
            kids = client.get("/api/children", params={"model": MODEL, "image": image, "path": node, "k": k}).json()["children"]
            t1 = time.perf_counter()
            # Six connections at once, as a browser fetches the child pictures.
            with ThreadPoolExecutor(6) as pool:
                for r in pool.map(
                    lambda kid: client.get(
                        "/api/picture.png", params={"model": MODEL, "image": image, "path": kid["id"], "view": "guided"}
                    ),
                    kids,
                ):
                    r.raise_for_status()
            t2 = time.perf_counter()
            out["children"].append(t1 - t0)
            out["pictures"].append(t2 - t1)
            out["total"].append(t2 - t0)
    return out


def in_browser(image: str, k: int, reps: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    times: list[float] = []
    with serve_in_thread(app()) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.set_default_timeout(300_000)
        page.goto(f"{url}/?model={MODEL}&image={image}&k={max(k, reps)}")
        page.wait_for_selector("body[data-ready=true]")
        page.wait_for_selector("body[data-busy=false]", state="attached")
        nodes = page.eval_on_selector_all(".card:not(.root)", "els => els.map(e => e.dataset.node)")
        page.fill("#k", str(k))
        page.press("#k", "Enter")
        page.wait_for_selector("body[data-busy=false]", state="attached")
        for node in [n for n in nodes][:reps]:
            done = page.evaluate("window.ftTimings.length")
            page.locator(f'.card[data-node="{node}"] .pic').click()
            page.wait_for_function(f"window.ftTimings.length > {done}")
            last = page.evaluate("window.ftTimings[window.ftTimings.length - 1]")
            assert last["children"] == last["loaded"] == k, last
            times.append(last["ms"] / 1000)
            page.locator(f'.card[data-node="{node}"] .pic').click()  # collapse again
        browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="chelsea")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    server = server_side(args.image, args.k, args.reps)
    rows = [
        ("server: GET /api/children", server["children"]),
        (f"server: {args.k} child pictures (PNG, 6 at once)", server["pictures"]),
        ("server: children + pictures", server["total"]),
    ]
    if not args.no_browser:
        rows.append(("browser: click to rendered children", in_browser(args.image, args.k, args.reps)))
    print(f"{MODEL} on {args.image}, k={args.k}, one expansion of a child of the top-class root, {args.reps} repetitions")
    print(f"{'measure':42s} {'median s':>9s} {'min s':>7s} {'max s':>7s}")
    for name, values in rows:
        print(f"{name:42s} {statistics.median(values):9.3f} {min(values):7.3f} {max(values):7.3f}")


if __name__ == "__main__":
    main()
