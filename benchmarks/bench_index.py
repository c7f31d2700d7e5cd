"""Indexing throughput vs the model's plain forward throughput, measured in the same run.

    PYTHONPATH=src python benchmarks/bench_index.py [--batch-size 16] [--workers 2] [--repeats 3] [--copies 1]

Plain forward: the collection's images already decoded and preprocessed in memory, ``model(x)``
under ``torch.inference_mode`` in batches of B. Indexing: ``index_folder`` over the same files
(decoding in worker processes, hooks, top-N merge, one SQLite transaction per batch) into a fresh
database; the streaming pass is timed (the finishing pass that computes the entries' receptive-field
boxes and cuts crops is reported separately, once, with the explainer's box cache cold: its cost is
bounded by units x N, not by the number of images). Medians over the repeats.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from featuretree.core.images import load_image
from featuretree.exemplars.collection import build_collection
from featuretree.exemplars.indexer import index_folder
from featuretree.loading import load_explainer


def plain_forward(model, tensors: list[torch.Tensor], batch_size: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(tensors), batch_size):
            model(torch.stack(tensors[k : k + batch_size]))
    return len(tensors) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: the indexer's default for this machine)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=1, help="index the collection this many times over (more images)")
    parser.add_argument("--top", type=int, default=16)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        source = build_collection(work / "collection")
        folder = work / "images"
        for copy in range(args.copies):
            (folder / f"c{copy}").mkdir(parents=True)
            for path in source:
                shutil.copy(path, folder / f"c{copy}" / path.name)
        files = sorted(folder.rglob("*.jpg"))
        if args.workers is None:
            from featuretree.exemplars.indexer import default_workers

            args.workers = default_workers()
        explainer = load_explainer(args.model, None, "cpu")
        tensors = [explainer.preprocess.to_tensor(explainer.preprocess.fit(load_image(p)))[0] for p in files]
        print(
            f"{args.model}: {len(files)} images, batch {args.batch_size}, {args.workers} decoding workers, torch threads {torch.get_num_threads()}"
        )
        plain_forward(explainer.model, tensors[: args.batch_size], args.batch_size)  # warm-up

        forward_rates, index_rates, finish_times = [], [], []
        for repeat in range(args.repeats):
            forward_rates.append(plain_forward(explainer.model, tensors, args.batch_size))
            db = work / f"bench{repeat}.db"
            report = index_folder(
                folder,
                db,
                explainer,
                args.model,
                top_n=args.top,
                batch_size=args.batch_size,
                workers=args.workers,
                progress=False,
                finish=False,
            )
            index_rates.append(report.images_per_second)
            if repeat == 0:
                from featuretree.exemplars.db import ExemplarDB
                from featuretree.exemplars.indexer import finish_db

                start = time.perf_counter()
                with ExemplarDB(db) as handle:
                    finish_db(handle, explainer, progress=False)
                finish_times.append(time.perf_counter() - start)
                size_mb = sum(p.stat().st_size for p in work.glob(f"bench{repeat}.db*")) / 2**20
            print(f"  repeat {repeat}: plain forward {forward_rates[-1]:.1f} img/s, indexing {index_rates[-1]:.1f} img/s")
        fwd, idx = statistics.median(forward_rates), statistics.median(index_rates)
        print(f"median plain forward: {fwd:.1f} img/s")
        print(f"median indexing (streaming pass): {idx:.1f} img/s = {100 * idx / fwd:.0f}% of plain forward (target >= 80%)")
        paired = statistics.median(i / f for i, f in zip(index_rates, forward_rates))
        print(f"median of per-repeat ratios (indexing / forward, measured back to back): {100 * paired:.0f}%")
        print(f"finishing pass (exemplars table + crops, once): {finish_times[0]:.1f}s; database {size_mb:.1f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
