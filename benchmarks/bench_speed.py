"""Speed of featuretree on EfficientNet-Lite0 at 224 px, all figures measured in one run.

    python benchmarks/bench_speed.py [--photos chelsea coffee rocket] [--repeats 3] [--device cpu] [--expansions-only]

Reports medians (and p95 for expansions) of:
- one expansion: k=5 children ranked, with all their node pictures, on a warm analysis;
- a full depth-3, k=5 tree (156 nodes) with all node evidence, and with PNG rendering;
- the naive way (the 2015 original): a fresh forward pass and a replay from the root per node,
  with no cache of any kind;
- the floor: the exact autograd calls the engine made, replayed bare on the same graph;
- batched (vmap) sibling backward passes against the default loop;
- bulk: trees for all bundled photos on one explainer, which shares receptive-field
  boxes between images (they are a property of the model for EfficientNet-Lite), against a
  fresh explainer per photo.

"Cold" figures clear the explainer's receptive-field cache first, so they include every box.
Backward-pass counts are given too: unlike times, they do not depend on how busy the machine is.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

import featuretree as ft
from featuretree.core.samples import SAMPLES, sample_path
from featuretree.explainer import Analysis
from featuretree.render.export import render_images


def median_ms(values: list[float]) -> float:
    return 1000 * statistics.median(values)


def p95_ms(values: list[float]) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def expand_with_pictures(analysis: Analysis, path, k: int, kinds):
    expansion = analysis.expand(path, k)
    if kinds:
        analysis.evidence_many([path + (c.unit,) for c in expansion.children], kinds=kinds)
    return expansion


def expansion_latencies(explainer: ft.Explainer, photo, k: int = 5, kinds=("guided", "heat", "box")) -> list[float]:
    """Expand the root, then two of its children, then two of each of theirs: one warm analysis."""
    analysis = explainer.analyze(photo)
    root = (analysis.resolve_root(None),)
    latencies = []
    frontier = [root]
    for _ in range(3):
        next_frontier = []
        for path in frontier:
            elapsed, expansion = timed(expand_with_pictures, analysis, path, k, kinds)
            latencies.append(elapsed)
            next_frontier += [path + (c.unit,) for c in expansion.children[:2]]
        frontier = next_frontier
    return latencies


def full_tree(explainer: ft.Explainer, photo):
    return explainer.analyze(photo).tree(depth=3, k=5)


def naive_tree(explainer: ft.Explainer, photo, depth: int = 3, k: int = 5, on_node=None) -> tuple[int, int]:
    """The original's way: every node request runs a fresh forward and replays its path from the root.
    ``on_node(path, evidence, picture)``, if given, receives each node's evidence (to write its pictures).
    Returns (forward passes, backward passes)."""
    prepared = explainer.analyze(photo).image
    forwards = passes = 0
    frontier = [None]
    for level in range(depth + 1):
        next_frontier = []
        for path in frontier:
            explainer.receptive_fields.clear()  # no cache of any kind
            analysis = RecordingAnalysis(explainer, prepared)  # fresh forward pass, empty memo
            path = path or (analysis.resolve_root(None),)
            evidence = analysis.evidence(path)
            if on_node is not None:
                on_node(path, evidence, prepared.picture)
            forwards += 1
            passes += len(analysis.calls)
            if level < depth:
                fresh = RecordingAnalysis(explainer, prepared)
                next_frontier += [path + (c.unit,) for c in fresh.expand(path, k).children]
                forwards += 1
                passes += len(fresh.calls)
        frontier = next_frontier
    return forwards, passes


class RecordingAnalysis(Analysis):
    """An Analysis that logs every backward call, so the floor can replay exactly those."""

    def __init__(self, *args, **kwargs):
        self.calls: list[tuple] = []
        super().__init__(*args, **kwargs)

    def backward(self, upper, lower, grad_output, rule):
        self.calls.append((upper, lower, grad_output, rule, False))
        return super().backward(upper, lower, grad_output, rule)

    def backward_many(self, upper, lower, grad_outputs, rule):
        if len(grad_outputs) > 1 and self.explainer.batch_backward:
            self.calls.append((upper, lower, torch.stack(grad_outputs), rule, True))
        return super().backward_many(upper, lower, grad_outputs, rule)


def floor_time(analysis: RecordingAnalysis) -> float:
    """Replay the recorded autograd calls on the same graph without any engine code around them."""
    record = analysis.record
    start = time.perf_counter()
    for upper, lower, grad_output, rule, batched in analysis.calls:
        target = record.input if lower is None else record.activations[lower]
        with record.rule.use(rule):
            torch.autograd.grad(
                record.activations[upper], target, grad_output, retain_graph=True, allow_unused=True, is_grads_batched=batched
            )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", nargs="+", default=["chelsea", "coffee", "rocket"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--expansions-only", action="store_true", help="only the forward pass and the one-expansion rows")
    args = parser.parse_args()

    explainer = ft.Explainer.from_zoo("efficientnet_lite0", device=args.device)
    photos = [sample_path(name) for name in args.photos]
    explainer.analyze(photos[0]).tree(depth=1)  # warm-up

    def sibling(**kw) -> ft.Explainer:
        return ft.Explainer(explainer.model, explainer.layers, preprocess=explainer.preprocess, device=args.device, **kw)

    naive_explainer = sibling()
    forward, expansions, expansions_boxes_known, trees, rendered, floors, naive, batched_trees = [], [], [], [], [], [], [], []
    one_view, contribution_view, scores_only, tree_passes, naive_passes = [], [], [], [], []
    for photo in photos:
        for _ in range(args.repeats):
            forward.append(timed(explainer.analyze, photo)[0])
            explainer.receptive_fields.clear()
            expansions += expansion_latencies(explainer, photo)
            expansions_boxes_known += expansion_latencies(explainer, photo)
            one_view += expansion_latencies(explainer, photo, kinds=("heat",))
            contribution_view += expansion_latencies(explainer, photo, kinds=("contribution",))
            scores_only += expansion_latencies(explainer, photo, kinds=())
            if args.expansions_only:
                continue
            explainer.receptive_fields.clear()
            analysis = RecordingAnalysis(explainer, explainer.analyze(photo).image)
            elapsed, tree = timed(analysis.tree, depth=3, k=5)
            trees.append(elapsed)
            tree_passes.append(len(analysis.calls))
            rendered.append(elapsed + timed(render_images, tree)[0])
            floors.append(floor_time(analysis))
        if args.expansions_only:
            continue
        batched = sibling(batch_backward=True)
        batched_trees.append(timed(full_tree, batched, photo)[0])
        if not args.skip_naive:
            elapsed, (forwards, passes) = timed(naive_tree, naive_explainer, photo)
            naive.append(elapsed)
            naive_passes.append(passes)

    if args.expansions_only:
        print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, photos: {', '.join(args.photos)}")
        print("| measure | median | note |\n|---|---|---|")
        print(f"| forward pass (analyze) | {median_ms(forward):.0f} ms | once per image |")
        for label, values in (
            ("scores only", scores_only),
            ("with one picture view per child: the contribution map (the explorer's default)", contribution_view),
            ("with one picture view per child: the heatmap", one_view),
        ):
            print(f"| one expansion, k=5, {label} | {median_ms(values):.0f} ms (p95 {p95_ms(values):.0f} ms) | {len(values)} expansions |")
        return
    # Bulk: every bundled photo once, on one explainer (boxes shared) and on a fresh one each (none).
    shared = sibling()
    bulk = {"shared": ([], []), "fresh": ([], [])}
    for name in SAMPLES:
        for label, owner in (("fresh", sibling()), ("shared", shared)):
            analysis = RecordingAnalysis(owner, owner.analyze(sample_path(name)).image)
            bulk[label][0].append(timed(analysis.tree, depth=3, k=5)[0])
            bulk[label][1].append(len(analysis.calls))

    assert len(tree) == 156, len(tree)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, photos: {', '.join(args.photos)}, repeats {args.repeats}"
    )
    print("| measure | median | note |")
    print("|---|---|---|")
    print(f"| forward pass (analyze) | {median_ms(forward):.0f} ms | once per image |")
    for label, values in (
        ("scores only", scores_only),
        ("with one picture view per child: the contribution map (the explorer's default)", contribution_view),
        ("with one picture view per child: the heatmap", one_view),
        ("with all pictures (guided, heatmap, receptive field), cold", expansions),
        ("with all pictures, receptive fields already known", expansions_boxes_known),
    ):
        print(
            f"| one expansion, k=5, {label} | {median_ms(values):.0f} ms (p95 {p95_ms(values):.0f} ms) | {len(values)} expansions, warm analysis |"
        )
    print(
        f"| depth-3, k=5 tree (156 nodes), evidence, cold | {median_ms(trees) / 1000:.2f} s | {statistics.median(tree_passes):.0f} backward passes |"
    )
    print(f"| same, plus making and encoding its 781 pictures | {median_ms(rendered) / 1000:.2f} s | |")
    print(
        f"| floor: the same autograd calls, bare | {median_ms(floors) / 1000:.2f} s | engine overhead x{statistics.median(trees) / statistics.median(floors):.2f} |"
    )
    print(
        f"| batched (vmap) sibling passes | {median_ms(batched_trees) / 1000:.2f} s | x{statistics.median(batched_trees) / statistics.median(trees):.2f} of the loop |"
    )
    for label, note in (("fresh", "a fresh explainer per photo"), ("shared", "one explainer, boxes shared")):
        times, passes = bulk[label]
        print(
            f"| bulk: {len(SAMPLES)} bundled photos, {note} | {median_ms(times) / 1000:.2f} s a tree "
            f"| {sum(passes) / len(passes):.0f} backward passes a tree (mean) |"
        )
    if naive:
        print(
            f"| naive: fresh forward + replay per node, no caches | {median_ms(naive) / 1000:.2f} s "
            f"| {statistics.median(naive_passes):.0f} backward passes, {forwards} forward passes; "
            f"the engine (cold) is x{statistics.median(naive) / statistics.median(trees):.1f} faster |"
        )
    print(f"| peak resident memory | {peak_mb:.0f} MB | whole benchmark process |")


if __name__ == "__main__":
    main()
