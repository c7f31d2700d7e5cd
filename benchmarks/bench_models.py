"""Per architecture, at each model's input size on this machine: the forward pass, one expansion with its
pictures, and a depth-3 tree with pictures. Runs in .venv-vision (scripts/setup_vision.sh); torchvision
and timm models have seeded random weights, so the figures are about speed, not about what the trees say.

    .venv-vision/bin/python benchmarks/bench_models.py [--repeats 3] [--k 3] [--models torchvision:resnet50,...]

- forward: ``Explainer.analyze`` (the one captured forward pass that keeps the graph), median of repeats;
- expansion: the root's top child expanded (k children) with each child's heatmap evidence, on a fresh
  analysis each repeat (what one click in the explorer costs without prefetching), median;
- tree: ``Analysis.tree(depth=3, k=K)`` with every node's pictures (guided views only where defined),
  once, on a fresh analysis.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image

from featuretree.core.samples import sample_path
from featuretree.loading import load_explainer

MODELS = [
    "efficientnet_lite0",
    "torchvision:resnet50",
    "torchvision:vgg16_bn",
    "torchvision:densenet121",
    "torchvision:mobilenet_v3_large",
    "torchvision:efficientnet_b0",
    "torchvision:convnext_tiny",
    "torchvision:regnet_y_400mf",
    "torchvision:vit_b_16",
    "torchvision:swin_t",
    "timm:vit_small_patch16_224",
    "timm:deit_small_distilled_patch16_224",
    "timm:swin_tiny_patch4_window7_224",
    "timm:convnext_atto",
    "timm:efficientnet_b0",
]


def bench(spec: str, repeats: int, k: int) -> dict[str, float | int | str]:
    library = ":" in spec
    explainer = load_explainer(spec, None, "cpu", random_weights=library)
    photo = Image.open(sample_path("chelsea")).convert("RGB")
    forward, expansion = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        analysis = explainer.analyze(photo)
        forward.append(time.perf_counter() - t0)
        root = analysis.resolve_root(None)
        child = analysis.expand((root,), k).children[0].unit
        t0 = time.perf_counter()
        kids = analysis.expand((root, child), k).children
        analysis.evidence_many([(root, child, c.unit) for c in kids], kinds=("heat",))
        expansion.append(time.perf_counter() - t0)
    analysis = explainer.analyze(photo)
    t0 = time.perf_counter()
    tree = analysis.tree(depth=3, k=k)
    tree_s = time.perf_counter() - t0
    return {
        "model": spec,
        "size": explainer.preprocess.size,
        "layers": len(explainer.layers),
        "forward": statistics.median(forward),
        "expansion": statistics.median(expansion),
        "tree": tree_s,
        "nodes": sum(1 for _ in tree.walk()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; chelsea; medians of {args.repeats}; k={args.k}")
    print("| model | input | chain layers | forward | one expansion + pictures | depth-3 tree (nodes) |")
    print("|---|---:|---:|---:|---:|---:|")
    for spec in args.models.split(","):
        r = bench(spec, args.repeats, args.k)
        print(
            f"| {r['model']} | {r['size']} | {r['layers']} | {1000 * r['forward']:.0f} ms | {1000 * r['expansion']:.0f} ms "
            f"| {r['tree']:.1f} s ({r['nodes']}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
