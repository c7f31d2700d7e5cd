"""The class graph's pictures: a unit's map on the images where it carries the most evidence.

A unit of the class graph stands for its copies in many images' trees. On one image it is drawn as
the contribution map (``render.pictures.contribution_image``, the default view) of its strongest copy
in that image's tree, the node the database records in ``image_units.path``, over the picture the
model sees. One analysis per image serves every node drawn on it (``Analysis.evidence_many``: nodes of
one layer share their passes, and the contribution map needs no backward pass to the pixels).

Images are read only by the relative paths the database holds, and only while their bytes are the
ones that were aggregated (their SHA-256): a changed file would show another tree's maps.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from ..core.errors import ImageInputError
from ..core.images import DEFAULT_MAX_PIXELS, decode_image
from ..core.units import parse_path
from ..loading import explainer_identity
from ..render.pictures import contribution_image, jpeg_bytes
from .db import AggregateDB, AggregateError

VIEW = "contribution"  # the explorer's DEFAULT_VIEW: depends on the weights, localises evidence, costs no pixel backward
PER_UNIT = 3  # thumbnails per unit on graph.html's cards
LISTED = 12  # images listed per unit in graph.html's side panel
MAX_UNITS = 80  # units per graph with thumbnails (the most frequent first)
MAX_PICTURES = 1500  # thumbnails per page: a few MB of JPEG at most, whatever the number of roots
THUMB = 96  # thumbnail side in pixels


def check_model(explainer, model: dict[str, Any], where: str = "the aggregate") -> None:
    """Refuse an explainer other than the one the aggregate was built with: another chain, other
    preprocessing or other weights would draw maps of trees that were never built."""
    for key, value in explainer_identity(explainer).items():
        wanted = model.get(key)
        if wanted != value:
            shown = (lambda v: f"{v[:12]}...") if key == "weights" else repr
            raise AggregateError(
                f"{where} was built with other {key} ({shown(wanted)}) than the model loaded here ({shown(value)})",
                f"load the model `featuretree aggregate` used ({model.get('spec')!r}, with its --layers and --weights)",
            )


def read_image(db: AggregateDB, rel: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An aggregated image by its path relative to the folder: only a path the database holds as
    aggregated (never any other file), and only while the file's bytes are the aggregated ones."""
    known = db.image_file(rel)
    if known is None or known["status"] != "ok":
        raise ImageInputError(f"{rel!r} is not an aggregated image of {db.path}", "use a path the database lists")
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or ".." in parts:
        raise ImageInputError(f"{rel!r} is not a path inside the aggregated folder", "use a path the database lists")
    path = Path(db.meta()["folder"]).joinpath(*parts)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageInputError(f"cannot read {path} ({err.strerror})", "restore the file, or aggregate the folder again") from None
    if known["sha256"] is not None and hashlib.sha256(data).hexdigest() != known["sha256"]:
        raise ImageInputError(f"{rel} changed since it was aggregated", "run `featuretree aggregate` on the folder again")
    return decode_image(data, max_pixels, name=rel)


def node_maps(
    explainer, picture: Image.Image, nodes: Sequence[str], rule: str = "gradient", seed_mode: str = "sum"
) -> list[Image.Image | None]:
    """Each node's contribution map (node ids: "layer:ch/layer:ch/...", root first) over the picture the model
    sees, from one analysis of ``picture``; None where a node has no map (a vector layer over a vector layer)."""
    analysis = explainer.analyze(picture)
    paths = [parse_path(node) for node in nodes]
    evidence = analysis.evidence_many(paths, rule, seed_mode, kinds=(VIEW,))
    return [None if ev.contribution is None else contribution_image(ev, analysis.image.picture) for ev in evidence]


def thumbnail_uri(img: Image.Image, size: int = THUMB) -> str:
    small = img.copy()
    small.thumbnail((size, size), Image.BICUBIC)
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(small, 80)).decode("ascii")


def graph_pictures(
    db: AggregateDB,
    graph: dict[str, Any],
    explainer,
    *,
    per_unit: int = PER_UNIT,
    listed: int = LISTED,
    max_units: int = MAX_UNITS,
    max_pictures: int = MAX_PICTURES,
    size: int = THUMB,
    progress: bool = False,
) -> dict[str, Any]:
    """graph.html's pictures: for each graph, for its ``max_units`` most frequent units, the top ``listed``
    images (largest share first, as ``unit_images``) and, for the first ``per_unit`` of them, the unit's map on
    that image as a JPEG data URI (``src``). ``{"view", "per_unit", "units": {root: {unit: [item]}}}``, items
    ``{image, share, depth, node, src?, error?}``; pictures stop at ``max_pictures`` for the whole page."""
    meta = db.meta()
    check_model(explainer, meta["model"], f"the aggregate {db.path}")
    settings = meta["settings"]
    units: dict[str, dict[str, list[dict[str, Any]]]] = {}
    jobs: dict[str, list[dict[str, Any]]] = {}  # image -> the items to draw on it
    budget = max_pictures
    for g in graph["graphs"]:
        chosen = sorted(g["nodes"], key=lambda n: (-n["images"], -n["mean_share"], n["id"]))[:max_units]
        per_root = units.setdefault(g["root"], {})
        for node in chosen:
            items = [{k: row[k] for k in ("image", "share", "depth", "node")} for row in db.unit_images(g["root"], node["id"], listed)]
            per_root[node["id"]] = items
            for item in items[: min(per_unit, budget)]:
                jobs.setdefault(item["image"], []).append(item)
                budget -= 1
    from tqdm.auto import tqdm

    for rel in tqdm(sorted(jobs), desc="graph.html pictures", unit="img", disable=not progress, dynamic_ncols=True):
        items = jobs[rel]  # one image at a time: one analysis in memory
        try:
            picture = read_image(db, rel)
        except ImageInputError as err:
            for item in items:
                item["error"] = err.problem
            continue
        for item, img in zip(
            items, node_maps(explainer, picture, [item["node"] for item in items], settings["rule"], settings["seed_mode"])
        ):
            if img is None:
                item["error"] = "no map: no positions at this layer or the one below"
            else:
                item["src"] = thumbnail_uri(img, size)
    return {"view": VIEW, "per_unit": per_unit, "units": units}
