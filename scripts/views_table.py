"""The README's table of views: the sanity measures and deletion / insertion over the bundled photos.

For each bundled photo, ``featuretree sanity`` (EfficientNet-Lite0, class root, k 3, depth 2, cascading and
independent randomisation, seed 0), then ``featuretree evaluate``'s deletion / insertion curves of every
view (root and its top-3 children per photo). Prints the mean over the photos per view and step, and
writes everything it measured to OUT/views.json.

    PYTHONPATH=src python scripts/views_table.py --out featuretree-out/views
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import featuretree as ft
from featuretree.core.images import load_image
from featuretree.core.samples import available_samples
from featuretree.reports.evaluate import CURVE_VIEWS, evaluate_folder
from featuretree.reports.sanity import sanity_check

STEPS = ("_fc", "_head_act", "_blocks.14", "_blocks.7", "_stem_act")  # the rows the issue reported


def mean(values: list[float | None]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="featuretree-out/views")
    parser.add_argument("--photos", default=",".join(available_samples()))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    explainer = ft.Explainer.from_zoo("efficientnet_lite0")
    photos = {name: available_samples()[name] for name in args.photos.split(",")}
    results: dict[str, object] = {"sanity": {}, "curves": None}
    for name, path in photos.items():
        start = time.perf_counter()
        report = sanity_check(explainer, load_image(path), k=3, depth=2, seed=0)
        results["sanity"][name] = report.to_dict()
        print(f"sanity {name}: {time.perf_counter() - start:.0f} s", flush=True)
        (out / "views.json").write_text(json.dumps(results, indent=1))
    with tempfile.TemporaryDirectory() as folder:
        for name, path in photos.items():
            shutil.copy(path, Path(folder) / f"{name}{path.suffix}")
        start = time.perf_counter()
        evaluation = evaluate_folder(explainer, folder, k=5, rules=["gradient"], parents=3, random_draws=1, views=CURVE_VIEWS)
        print(f"curves: {time.perf_counter() - start:.0f} s", flush=True)
    results["curves"] = evaluation.curve_summary()
    (out / "views.json").write_text(json.dumps(results, indent=1))
    print(table(results))


def table(results: dict) -> str:
    sanity = results["sanity"]
    views = next(iter(sanity.values()))["views"]
    lines = []
    for mode in ("steps", "independent"):
        lines += ["", f"{'cascading' if mode == 'steps' else 'independent'}: abs-Spearman / SSIM, root | node mean, mean over photos", ""]
        lines.append("| randomised | " + " | ".join(views) + " |")
        lines.append("|---|" + "---:|" * len(views))
        for layer in STEPS:
            cells = []
            for view in views:
                parts = []
                for of in ("root", "nodes"):
                    values = {
                        metric: mean(
                            [
                                step[of][view][metric]
                                for report in sanity.values()
                                for step in report[mode]
                                if step["randomised"] and step["randomised"][-1] == layer
                            ]
                        )
                        for metric in ("spearman_abs", "ssim")
                    }
                    parts.append(f"{values['spearman_abs']:.2f} / {values['ssim']:.2f}")
                cells.append(" \\| ".join(parts))
            lines.append(f"| `{layer}` | " + " | ".join(cells) + " |")
    lines += ["", "| view | deletion AUC | random | insertion AUC | random |", "|---|---:|---:|---:|---:|"]
    for row in results["curves"]:
        if row["layer"] == "all":
            lines.append(
                f"| {row['view']} | {row['deletion_auc']:.3f} | {row['random_deletion_auc']:.3f} | "
                f"{row['insertion_auc']:.3f} | {row['random_insertion_auc']:.3f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
