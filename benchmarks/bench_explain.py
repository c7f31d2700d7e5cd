"""`featuretree explain` end to end against the naive way, both as fresh processes, in one run.

    python benchmarks/bench_explain.py [--repeats 5] [--photo chelsea] [--depth 3] [--k 5]
                                       [--screenshot DIR] [--keep DIR]

Measures, alternating the two so that a change in machine load hits both alike:
- explain: ``python -m featuretree.cli explain PHOTO --timings`` in a fresh process, wall clock from
  spawn to exit (interpreter start, imports, model load, tree, pictures, tree.html, writing), plus
  the phases it reports (startup = interpreter and imports, load = photo and model, tree = the
  computation, pictures = making and encoding them, html, write);
- naive: a fresh process that does what a plain script would: imports, loads the model, and for
  every node of the same tree runs a fresh forward pass and replays the path from the root
  (``bench_speed.naive_tree``, no cache of any kind), then writes three PNGs per node (guided,
  heatmap, receptive-field box) with featuretree's fast PNG setting (zlib level 1; Pillow's default
  level 6 would make the naive way slower still).

Prints medians, the ratio of the medians and each round's own ratio, the output folder's size
(bytes in files, and on disk), tree.html's size, and each view's format and total. Checks that every
file tree.json names exists. ``--screenshot DIR`` also opens tree.html in headless Chromium
(/usr/bin/chromium through playwright) and saves one screenshot per view.

Times on a shared machine move with its load: the load average is printed beside each round.

Formats per view (chelsea, depth 3, k 5; 156 pictures a view; sizes with the encoder settings of
``render.PICTURE_FORMATS``, PSNR against the lossless picture, measured when they were chosen):

| view | chosen | total | PSNR | alternatives measured |
|---|---|---|---|---|
| guided | JPEG q80 4:4:4 | 3.0 MB | 28 dB | PNG 16.8 MB; JPEG q85 4:2:0 2.4 MB but 25 dB (colour smeared); WebP q80 2.2 MB, 25 dB (always 4:2:0) |
| guided_original | 256-colour PNG | 5.0 MB | 33 dB | PNG 9.9 MB; JPEG q85 4:2:0 7.1 MB at 11 dB (saturated colours destroyed); JPEG q85 4:4:4 13.9 MB; lossless WebP 11.2 MB |
| heatmap | JPEG q85 4:2:0 | 1.0 MB | 33 dB | PNG 8.5 MB |
| rf_crop, rf_box | JPEG q85 4:2:0 | 1.4, 1.5 MB | 39, 30 dB | PNG 10.8, 9.8 MB |
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VIEWS = ("contribution", "guided", "guided_original", "heatmap", "rf_crop", "rf_box")


THREADS: int | None = None  # --threads: torch's threads in every child process (None: torch's default)


def child_env(src: Path = REPO / "src") -> dict[str, str]:
    """Run this checkout's featuretree (or the one in ``src``), whatever is installed."""
    env = dict(os.environ)
    if THREADS is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(THREADS)
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(REPO / "benchmarks"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_explain(photo: Path, out: Path, depth: int, k: int, src: Path = REPO / "src") -> tuple[float, dict[str, float]]:
    """Wall seconds of one fresh `featuretree explain` process, and the phases it reports."""
    command = [sys.executable, "-m", "featuretree.cli", "explain", str(photo), "--out", str(out)]
    command += ["--depth", str(depth), "--k", str(k), "--quiet"]
    if src == REPO / "src":
        command.append("--timings")
    start = time.perf_counter()
    done = subprocess.run(command, env=child_env(src), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"explain failed ({done.returncode}):\n{done.stderr}")
    phases: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if "timings (s):" in line:
            body = line.split("timings (s):", 1)[1].split(";")[0]
            for item in body.split(","):
                name, _, value = item.strip().rpartition(" ")
                phases[name] = float(value)
    return wall, phases


def run_naive(photo: Path, out: Path, depth: int, k: int) -> float:
    """Wall seconds of one fresh process doing the naive way (see naive_child)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--naive-child", str(out), "--photo", str(photo)]
    command += ["--depth", str(depth), "--k", str(k)]
    start = time.perf_counter()
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"naive way failed ({done.returncode}):\n{done.stderr}")
    return wall


def naive_child(photo: Path, out: Path, depth: int, k: int) -> None:
    """The naive script: every node from scratch, three PNG files per node."""
    from bench_speed import naive_tree

    import featuretree as ft
    from featuretree.render.pictures import box_image, guided_image, heatmap_image, png_bytes

    explainer = ft.Explainer.from_zoo("efficientnet_lite0")
    out.mkdir(parents=True, exist_ok=True)
    count = 0

    def write(path, evidence, picture) -> None:
        nonlocal count
        for kind, img in (
            ("guided", guided_image(evidence)),
            ("heatmap", heatmap_image(evidence, picture)),
            ("rf_box", box_image(evidence, picture)),
        ):
            (out / f"n{count:04d}_{kind}.png").write_bytes(png_bytes(img))
        count += 1

    naive_tree(explainer, photo, depth=depth, k=k, on_node=write)


def folder_sizes(folder: Path) -> tuple[int, int, int]:
    """(bytes in files, bytes on disk, number of files)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files), len(files)


def check_output(out: Path) -> dict[str, tuple[set[str], int, int]]:
    """Every file tree.json names exists; per view: (extensions, files, bytes)."""
    tree = json.loads((out / "tree.json").read_text())
    views: dict[str, tuple[set[str], int, int]] = {}
    stack = [tree["root"]]
    while stack:
        node = stack.pop()
        stack += node["children"]
        for kind, name in node["images"].items():
            path = out / name
            if not path.is_file():
                raise SystemExit(f"tree.json names {name}, which was not written")
            extensions, count, size = views.get(kind, (set(), 0, 0))
            views[kind] = (extensions | {path.suffix.lstrip(".")}, count + 1, size + path.stat().st_size)
    return views


def screenshots(html: Path, folder: Path) -> list[Path]:
    """One screenshot of tree.html per view, in headless Chromium."""
    from bench_serve import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    folder.mkdir(parents=True, exist_ok=True)
    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(html.resolve().as_uri())
        page.wait_for_selector(".ft-card img.view")
        for view in VIEWS:
            page.click(f'button[data-view="{view}"]')
            page.wait_for_timeout(300)
            # Every inlined picture of this view decodes (naturalWidth > 0).
            broken = page.evaluate(
                "() => [...document.querySelectorAll('.ft-card img.view')].filter(i => i.complete && !i.naturalWidth).length"
            )
            if broken:
                raise SystemExit(f"{broken} pictures of the {view} view did not decode in Chromium")
            shot = folder / f"explain-{view}.png"
            page.screenshot(path=str(shot))
            shots.append(shot)
        browser.close()
    return shots


def mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", default="chelsea", help="a bundled sample name or a path (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds, each one explain and one naive run (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--screenshot", metavar="DIR", help="save a screenshot of tree.html per view here (needs playwright + Chromium)")
    parser.add_argument("--keep", metavar="DIR", help="keep the last explain output here")
    parser.add_argument(
        "--compare-src",
        metavar="SRC",
        help="also run `featuretree explain` from another source tree each round (e.g. an older commit's src/), for before/after",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads in every child (OMP_NUM_THREADS); default: torch's own choice. On a machine that other "
        "jobs keep busy, torch's spinning worker threads can make both sides many times slower: 1 keeps the comparison sane there",
    )
    parser.add_argument("--naive-child", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global THREADS
    THREADS = args.threads

    photo = Path(args.photo)
    if not photo.is_file():
        sys.path.insert(0, str(REPO / "src"))
        from featuretree.core.samples import sample_path

        photo = sample_path(args.photo)
    if args.naive_child:
        naive_child(photo, Path(args.naive_child), args.depth, args.k)
        return

    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:
        scratch = Path(tmp)
        run_explain(photo, scratch / "warm-up", args.depth, args.k)  # loads torch's libraries into the page cache
        explain_walls, naive_walls, other_walls, rounds, phases = [], [], [], [], {}
        for r in range(args.repeats):
            load = os.getloadavg()[0]
            order = ("explain", "naive", "other") if r % 2 == 0 else ("other", "naive", "explain")
            walls = {}
            for what in order:
                if what == "other":
                    if args.compare_src:
                        walls[what] = run_explain(photo, scratch / f"other-{r}", args.depth, args.k, Path(args.compare_src).resolve())[0]
                        other_walls.append(walls[what])
                elif what == "explain":
                    walls[what], reported = run_explain(photo, scratch / f"explain-{r}", args.depth, args.k)
                    for name, seconds in reported.items():
                        phases.setdefault(name, []).append(seconds)
                elif not args.skip_naive:
                    walls[what] = run_naive(photo, scratch / f"naive-{r}", args.depth, args.k)
            explain_walls.append(walls["explain"])
            if "naive" in walls:
                naive_walls.append(walls["naive"])
            rounds.append((walls, load))
            ratio = f", naive / explain x{walls['naive'] / walls['explain']:.2f}" if "naive" in walls else ""
            naive_text = f", naive {walls['naive']:.2f} s" if "naive" in walls else ""
            other_text = f", {args.compare_src} {walls['other']:.2f} s" if "other" in walls else ""
            print(f"round {r + 1}: load {load:.1f}; explain {walls['explain']:.2f} s{naive_text}{other_text}{ratio}", flush=True)

        out = scratch / f"explain-{args.repeats - 1}"
        views = check_output(out)
        size, disk, count = folder_sizes(out)
        html = (out / "tree.html").stat().st_size
        explain = statistics.median(explain_walls)
        print()
        threads = f"torch threads {args.threads}" if args.threads else "torch's default threads"
        print(
            f"photo {photo.name}, depth {args.depth}, k {args.k}, {args.repeats} rounds, {os.cpu_count()} CPUs, {threads}, "
            f"load now {os.getloadavg()[0]:.1f}"
        )
        print("| measure | median | note |")
        print("|---|---|---|")
        split = ", ".join(f"{name} {statistics.median(values):.2f}" for name, values in phases.items())
        print(f"| `featuretree explain`, fresh process, wall | {explain:.2f} s | {split} (s, as it reports them) |")
        if naive_walls:
            naive = statistics.median(naive_walls)
            paired = ", ".join(f"x{walls['naive'] / walls['explain']:.2f}" for walls, _ in rounds)
            naive_size = folder_sizes(scratch / f"naive-{args.repeats - 1}")[0]
            print(
                f"| naive way, fresh process, wall | {naive:.2f} s | fresh forward + replay per node, 3 PNGs per node ({mb(naive_size)}) |"
            )
            print(f"| ratio naive / explain | x{naive / explain:.2f} | per round: {paired} |")
        if other_walls:
            other_size, other_disk, other_count = folder_sizes(scratch / f"other-{args.repeats - 1}")
            other_html = (scratch / f"other-{args.repeats - 1}" / "tree.html").stat().st_size
            print(
                f"| explain from {args.compare_src}, fresh process, wall | {statistics.median(other_walls):.2f} s "
                f"| folder {mb(other_size)} ({other_count} files), tree.html {mb(other_html)} |"
            )
        print(f"| output folder | {mb(size)} | {count} files; {mb(disk)} on disk |")
        print(f"| tree.html | {mb(html)} | self-contained |")
        for kind in VIEWS:
            if kind in views:
                extensions, n, total = views[kind]
                print(f"| {kind} | {mb(total)} | {n} files, {'/'.join(sorted(extensions))} |")
        if args.keep:
            import shutil

            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.copytree(out, args.keep)
        if args.screenshot:
            for shot in screenshots(out / "tree.html", Path(args.screenshot)):
                print(f"screenshot: {shot}")


if __name__ == "__main__":
    main()
