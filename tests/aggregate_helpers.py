"""A real aggregate run of the toy net over a small folder, for the class-graph tests (pictures, server, browser)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import featuretree as ft
from featuretree.aggregate.run import aggregate_folder
from featuretree.aggregate.worker import TreeSettings
from featuretree.loading import ModelSpec

# White shapes on black (the toy net calls them "square"), at places that cut off different corners so that
# the trees differ (13 of them: one unit is in more images than the explorer lists at once); two noise images it calls "line" (a second class graph); one file that is no image.
SHAPES = {
    "sq_a.png": (8, 8, 23, 23),
    "sq_b.png": (4, 4, 27, 27),
    "sub/sq_c.png": (10, 6, 20, 26),
    "line_v.png": (14, 2, 16, 29),
    "rect.png": (2, 10, 29, 20),
    "cut_tl.png": (-8, -8, 15, 15),
    "cut_br.png": (16, 16, 40, 40),
    "half_r.png": (16, 0, 31, 31),
    "sq_d.png": (6, 6, 25, 25),
    "sq_e.png": (3, 8, 20, 28),
    "sq_f.png": (9, 3, 28, 22),
    "sq_g.png": (5, 12, 26, 24),
    "sq_h.png": (12, 4, 22, 27),
}
NOISE = {"noise_1.png": 0, "noise_2.png": 7}


def toy_folder(folder: Path) -> Path:
    for name, box in SHAPES.items():
        img = Image.new("RGB", (32, 32), "black")
        ImageDraw.Draw(img).rectangle(box, fill="white")
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(folder / name)
    for name, seed in NOISE.items():
        Image.fromarray((np.random.default_rng(seed).random((32, 32, 3)) * 255).astype("uint8")).save(folder / name)
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def toy_aggregate(tmp: Path, depth: int = 2, k: int = 2) -> tuple[Path, Path, dict]:
    """(images folder, aggregate folder, graph.json): ``--predicted`` over ``toy_folder``, pictures in graph.html."""
    folder = toy_folder(tmp / "images")
    out = tmp / "aggregate"
    explainer = ft.Explainer.from_zoo("toy_squares")
    aggregate_folder(folder, out, explainer, ModelSpec("toy_squares"), TreeSettings(root=None, depth=depth, k=k), progress=False)
    return folder, out, json.loads((out / "graph.json").read_text())
