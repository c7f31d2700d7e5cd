"""Write the reference trees that tests/test_golden_trees.py compares against.

Run once from a commit whose engine is trusted; refactors must then reproduce these trees
(same units in the same order, scores within 1e-6). Usage: python scripts/golden_trees.py
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import featuretree as ft
from featuretree.core.samples import SAMPLES, sample_path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "golden_trees.json"


def tree_rows(tree) -> list[list]:
    return [[n.id, n.score, n.share, n.coverage, n.location, n.box] for n in tree.walk()]


def main() -> None:
    explainer = ft.Explainer.from_zoo("efficientnet_lite0")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    trees = {}
    for name in SAMPLES:
        tree = explainer.analyze(sample_path(name)).tree(depth=3, k=5)
        trees[name] = tree_rows(tree)
    OUT.write_text(json.dumps({"commit": commit, "settings": {"depth": 3, "k": 5}, "trees": trees}, separators=(",", ":")))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes) from {commit}")


if __name__ == "__main__":
    main()
