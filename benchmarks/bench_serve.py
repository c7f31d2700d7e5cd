"""Click-to-rendered-children for one expansion in the explorer, EfficientNet-Lite0 on this CPU.

Server side, over real HTTP to a real uvicorn server, each repetition on a fresh node (the forward
pass and the pictures of the root's children, which the page shows before the click, already done):
- batched: one GET /api/expand (the node's children with each child's picture as a data URI), what
  the page does;
- separate: GET /api/children plus GET /api/picture.png for each child (six at once, as a browser
  fetches), what the page did before /api/expand;
- in-process: Analysis.expand + Workspace.pictures_many, the same work without HTTP.
The three alternate node by node, so machine load hits them alike.

Browser: headless Chromium clicks a node's picture; the page records the time until every child card
is drawn with its picture loaded (window.ftTimings: `ms`; `painted`: decoded and the next frame
started; `received` and `drawn`: when the response was parsed and the tree redrawn), and the Resource
Timing API gives the /api/expand request's share of it. Each round starts
a fresh server and page and clicks each of the root's k children once, first with the server's
background prefetching off (every click computes its children's pictures), then with it on and the
user looking at the page for --think seconds before each click (the click finds them ready).
The server-side measures run without prefetching. Medians are printed.

    PYTHONPATH=src python benchmarks/bench_serve.py [--image chelsea] [--k 5] [--reps 5] [--rounds 2] [--view contribution,heatmap]

Several comma-separated views are measured one after the other in the same run (same-run baselines).
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from featuretree.core.units import Unit
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


def app(prefetch: bool = False):
    return create_app(ServerSettings(models=(MODEL,), prefetch=prefetch))


def root_children(client: httpx.Client, image: str, k: int, view: str) -> tuple[str, list[str]]:
    an = client.get("/api/analysis", params={"model": MODEL, "image": image}).json()
    root = an["default_root"]
    kids = client.get("/api/expand", params={"model": MODEL, "image": image, "path": root, "k": k, "view": view}).json()
    return root, [c["id"] for c in kids["children"]]


def server_side(image: str, k: int, reps: int, view: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"batched": [], "separate": [], "separate_children": [], "separate_pictures": [], "in_process": []}
    base = {"model": MODEL, "image": image}
    application = app()
    workspace = application.state.workspace
    with serve_in_thread(application) as url, httpx.Client(base_url=url, timeout=300) as client:
        # 3 fresh nodes per repetition (one per way) plus one to warm up: the root's top children.
        _, nodes = root_children(client, image, 3 * reps + 1, view)
        client.get("/api/expand", params={**base, "path": nodes[0], "k": k, "view": view}).raise_for_status()
        analysis = workspace.analysis(MODEL, image)
        for rep in range(reps):
            batched, separate, local = nodes[1 + 3 * rep : 4 + 3 * rep]
            ways = [batched, separate, local]
            ways = ways[rep % 3 :] + ways[: rep % 3]  # rotate the order too
            for node in ways:
                t0 = time.perf_counter()
                if node == batched:
                    r = client.get("/api/expand", params={**base, "path": node, "k": k, "view": view})
                    r.raise_for_status()
                    assert len(r.json()["children"]) == k
                    out["batched"].append(time.perf_counter() - t0)
                elif node == separate:
                    kids = client.get("/api/children", params={**base, "path": node, "k": k}).json()["children"]
                    t1 = time.perf_counter()
                    with ThreadPoolExecutor(6) as pool:  # six connections at once, as a browser
                        for r in pool.map(
                            lambda kid: client.get("/api/picture.png", params={**base, "path": kid["id"], "view": view}), kids
                        ):
                            r.raise_for_status()
                    t2 = time.perf_counter()
                    out["separate_children"].append(t1 - t0)
                    out["separate_pictures"].append(t2 - t1)
                    out["separate"].append(t2 - t0)
                else:
                    units = tuple(Unit.parse(p) for p in node.split("/"))
                    expansion = analysis.expand(units, k)
                    paths = [(*units, c.unit) for c in expansion.children]
                    workspace.pictures_many(MODEL, image, paths, view, "gradient", "sum", encoding="view")
                    out["in_process"].append(time.perf_counter() - t0)
    return out


def in_browser(image: str, k: int, rounds: int, view: str, prefetch: bool, think: float) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {"click": [], "painted": [], "request": [], "received": [], "drawn": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(rounds):
            with serve_in_thread(app(prefetch)) as url:
                page = browser.new_page(viewport={"width": 1920, "height": 1080})
                page.set_default_timeout(300_000)
                page.goto(f"{url}/?model={MODEL}&image={image}&k={k}&view={view}")
                page.wait_for_selector("body[data-ready=true]")
                page.wait_for_selector("body[data-busy=false]", state="attached")
                page.wait_for_function("[...document.querySelectorAll('.ft-card img')].every(i => i.complete)")
                nodes = page.eval_on_selector_all(".ft-card:not(.root)", "els => els.map(e => e.dataset.node)")
                for node in nodes:
                    time.sleep(think)  # the user looks at the shown pictures before clicking
                    done = page.evaluate("window.ftTimings.length")
                    page.evaluate("performance.clearResourceTimings()")
                    page.locator(f'.ft-card[data-node="{node}"] .ft-pic').click()
                    page.wait_for_function(f"window.ftTimings.length > {done}")
                    last = page.evaluate("window.ftTimings[window.ftTimings.length - 1]")
                    assert last["children"] == last["loaded"] == k, last
                    request = page.evaluate(
                        "performance.getEntriesByType('resource').filter(e => e.name.includes('/api/expand'))"
                        ".map(e => e.responseEnd - e.startTime)"
                    )
                    assert len(request) == 1, request  # one call for the children and all their pictures
                    out["click"].append(last["ms"] / 1000)
                    out["painted"].append(last["painted"] / 1000)
                    out["request"].append(request[0] / 1000)
                    out["received"].append(last["received"] / 1000)
                    out["drawn"].append((last["drawn"] - last["received"]) / 1000)
                    # The page measures the new edges by ablation once the pictures are in: let that finish.
                    page.wait_for_function("!document.querySelector('.ft-badge.pending')")
                    page.locator(f'.ft-card[data-node="{node}"] .ft-pic').click()  # collapse again
                page.close()
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="chelsea")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5, help="server-side repetitions (fresh nodes each)")
    parser.add_argument("--rounds", type=int, default=2, help="browser rounds: a fresh server and page, k clicks each")
    parser.add_argument("--view", default="contribution,heatmap", help="comma-separated views, measured in turn")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--think", type=float, default=1.0, help="seconds the user looks at the page before each click (prefetch rounds)")
    args = parser.parse_args()
    for view in args.view.split(","):
        measure(args, view.strip())


def measure(args: argparse.Namespace, view: str) -> None:
    args = argparse.Namespace(**{**vars(args), "view": view})
    server = server_side(args.image, args.k, args.reps, args.view)
    rows = [
        (f"server: GET /api/expand (children + {args.k} pictures)", server["batched"]),
        ("server: GET /api/children", server["separate_children"]),
        (f"server: then {args.k} GET /api/picture.png (6 at once)", server["separate_pictures"]),
        ("server: children + pictures, separate requests", server["separate"]),
        ("in-process: expand + pictures_many", server["in_process"]),
    ]
    if not args.no_browser:
        for prefetch, think in ((False, 0.0), (True, args.think)):
            browser = in_browser(args.image, args.k, args.rounds, args.view, prefetch, think)
            how = f"prefetch, {think:g} s look" if prefetch else "no prefetch"
            rows += [
                (f"browser ({how}): click to rendered children", browser["click"]),
                (f"browser ({how}): same, decoded and next frame", browser["painted"]),
                (f"browser ({how}): of which the /api/expand request", browser["request"]),
                (f"browser ({how}): click to response parsed", browser["received"]),
                (f"browser ({how}): response parsed to tree drawn", browser["drawn"]),
            ]
    print(f"{MODEL} on {args.image}, k={args.k}, view={args.view}, one expansion of a child of the top-class root")
    print(f"{'measure':62s} {'n':>3s} {'median s':>9s} {'min s':>7s} {'max s':>7s}")
    for name, values in rows:
        print(f"{name:62s} {len(values):3d} {statistics.median(values):9.3f} {min(values):7.3f} {max(values):7.3f}")


if __name__ == "__main__":
    main()
