"""Dataset scale: images/s of ``aggregate`` and ``index``, local engine against Ray, and peak memory against
the number of images, all measured in one run.

    PYTHONPATH=src python benchmarks/bench_scale.py [--images 96] [--workers 2] [--memory 25,50,100,200]
    PYTHONPATH=src python benchmarks/bench_scale.py --ray-address HOST:6379 --workers 16   # a real cluster

Images: the default collection (crops of the bundled photos), copied as often as needed. Local: this
process, torch's default threads. Ray: ``--workers`` actors of ``--threads`` torch threads each (1 by
default, so 2 actors fill 2 cores), started by the run and included in its time (loading the model in
every actor is part of what Ray costs). Without ``--ray-address`` a local cluster is started here with
``--workers`` CPUs. Peak memory: each run in a fresh process (``featuretree aggregate`` / ``index``
through the CLI), its peak resident set size (VmHWM). Medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from featuretree.aggregate.run import aggregate_folder
from featuretree.aggregate.worker import TreeSettings
from featuretree.exemplars.collection import build_collection
from featuretree.exemplars.indexer import index_folder
from featuretree.loading import ModelSpec
from featuretree.scale.engines import EngineOptions, connect

# VmHWM, not getrusage's ru_maxrss: Linux carries the forking parent's peak over into a child's ru_maxrss.
PEAK = (
    "import re, sys\n"
    "from featuretree.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "print('PEAK_KB', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
    "sys.exit(code)\n"
)


def image_folder(work: Path, count: int) -> Path:
    """``count`` files from the collection, copied over as many sub-folders as it takes."""
    source = sorted(build_collection(work / "collection"))
    folder = work / f"images-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        target = folder / f"c{k // len(source)}" / source[k % len(source)].name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source[k % len(source)], target)
    return folder


def peak_kb(command: list[str]) -> int:
    done = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True, text=True, check=True)
    return int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK_KB")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=96, help="images for the aggregate throughput runs (index uses 4x)")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="Ray actors")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per Ray actor")
    parser.add_argument("--ray-address", help="an existing cluster (default: start a local one with --workers CPUs)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--memory", default="0,25,50,100,200", help="image counts for the peak-memory runs (0: the model loaded, no image; '' to skip)"
    )
    args = parser.parse_args()

    spec = ModelSpec(args.model)
    explainer = spec.load()
    settings = TreeSettings(root=None, depth=args.depth, k=args.k)
    ray_options = EngineOptions("ray", workers=args.workers, ray_address=args.ray_address, threads=args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        started = time.perf_counter()
        connect(ray_options)
        print(f"Ray cluster up in {time.perf_counter() - started:.1f}s ({args.ray_address or f'local, {args.workers} CPUs'})")
        agg_folder = image_folder(work, args.images)
        index_folder_path = image_folder(work, 4 * args.images)
        rows = []
        for label, engine in (("local", EngineOptions()), (f"Ray, {args.workers} actors x {args.threads} thread", ray_options)):
            agg, idx = [], []
            for repeat in range(args.repeats):
                out = work / f"agg-{len(rows)}-{repeat}"
                report = aggregate_folder(agg_folder, out, explainer, spec, settings, engine, progress=False, html=False)
                agg.append(report.aggregated / report.seconds)
                db = work / f"index-{len(rows)}-{repeat}.db"
                ireport = index_folder(index_folder_path, db, explainer, args.model, engine=engine, spec=spec, progress=False, finish=False)
                idx.append(ireport.indexed / ireport.stream_seconds)
            rows.append((label, statistics.median(agg), statistics.median(idx)))
        print(
            f"\nthroughput ({args.model}; aggregate: {args.images} images, depth {args.depth}, k {args.k}; index: {4 * args.images} images)"
        )
        print("| engine | aggregate images/s | index images/s |")
        print("|---|---:|---:|")
        for label, agg, idx in rows:
            print(f"| {label} | {agg:.2f} | {idx:.1f} |")
        base_agg, base_idx = rows[0][1], rows[0][2]
        print(f"Ray / local: aggregate x{rows[1][1] / base_agg:.2f}, index x{rows[1][2] / base_idx:.2f}")

        counts = [int(c) for c in args.memory.split(",") if c.strip()]
        if counts:
            print("\npeak resident memory of one fresh `featuretree` process (local engine)")
            print("| images | aggregate MB | index MB |")
            print("|---:|---:|---:|")
            for count in counts:
                folder = image_folder(work, count)
                agg_kb = peak_kb(["aggregate", str(folder), "--out", str(work / f"mem-agg-{count}"), "--model", args.model, "--quiet"])
                idx_kb = peak_kb(["index", str(folder), "--out", str(work / f"mem-idx-{count}.db"), "--model", args.model, "--quiet"])
                print(f"| {count} | {agg_kb / 1024:.0f} | {idx_kb / 1024:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
