"""Time the verification of the 5 edges of a node on EfficientNet-Lite0 + chelsea (median of repeats).

Variants:
- one-at-a-time: 1 reference + 5 separate full forward passes (batch 1 each);
- batched, stacked input: one forward pass of 6 stacked copies of the image, per-row channel masks;
- batched, shared prefix (default): the layers below the child run once on 1 image; the hook
  broadcasts the child's output to 6 rows and masks each.

Usage: PYTHONPATH=src python benchmarks/bench_verify.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import featuretree as ft
from featuretree.analysis.interventions import objective as _objective
from featuretree.analysis.interventions import scaled_forward as masked_forward
from featuretree.core.samples import sample_path
from featuretree.tree.verify import verify_edges


def one_at_a_time(analysis, path, channels):
    """The naive way: a separate full forward pass per ablated child (plus the reference)."""
    index = analysis.layers.index(path[-1].layer)
    child_layer = analysis.layers[index - 1]
    weight = analysis.delta(path, "gradient")
    size = analysis.layer_info(child_layer).channels
    values = []
    for c in [None, *channels]:
        mask = torch.ones(1, size)
        if c is not None:
            mask[0, c] = 0.0
        out = masked_forward(analysis, child_layer, mask, [path[-1].layer], share_prefix=False)
        values.append(float(_objective(out[path[-1].layer], weight)[0]))
    return [values[0] - v for v in values[1:]]


def timed(fn, repeats):
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    explainer = ft.Explainer.from_zoo("efficientnet_lite0")
    analysis = explainer.analyze(sample_path("chelsea"))
    root = analysis.resolve_root()
    first = analysis.expand((root,), k=5).children[0].unit
    second = analysis.expand((root, first), k=5).children[0].unit
    print(f"torch threads: {torch.get_num_threads()}; median of {args.repeats}")
    print(
        "| node (children's layer) | one-at-a-time (6 passes) | batched, stacked input (1 pass) | batched, shared prefix (1 pass) | max abs diff |"
    )
    print("|---|---:|---:|---:|---:|")
    for path in [(root,), (root, first), (root, first, second)]:
        children = [c.unit.channel for c in analysis.expand(path, k=5).children]
        child_layer = analysis.layers[analysis.layers.index(path[-1].layer) - 1]
        naive_t, naive = timed(lambda p=path, c=children: one_at_a_time(analysis, p, c), args.repeats)
        stacked_t, stacked = timed(lambda p=path, c=children: verify_edges(analysis, p, c, share_prefix=False), args.repeats)
        shared_t, shared = timed(lambda p=path, c=children: verify_edges(analysis, p, c, share_prefix=True), args.repeats)
        diff = max(
            max(abs(a - b.parent_drop) for a, b in zip(naive, stacked)),
            max(abs(a - b.parent_drop) for a, b in zip(naive, shared)),
        )
        print(
            f"| {path[-1]} ({child_layer}) | {1000 * naive_t:.0f} ms | {1000 * stacked_t:.0f} ms | {1000 * shared_t:.0f} ms | {diff:.2g} |"
        )


if __name__ == "__main__":
    main()
