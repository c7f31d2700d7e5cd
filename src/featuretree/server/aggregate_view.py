"""The explorer's class-graph mode (``featuretree serve --aggregate DIR``).

``AggregateSource`` opens one aggregate folder for an app: its class graphs (recomputed when the
database changes), each unit's images in ``AggregateDB.unit_images`` order, and the aggregated images
themselves, which the explorer analyses like any other image under the id ``aggregate:RELATIVE/PATH``:
only paths the database holds, and only while their bytes are the aggregated ones
(``aggregate.pictures.read_image``). A unit's picture on an image is the contribution map of the unit's
strongest copy in that image's tree (``image_units.path``), drawn by the workspace (its byte-bounded
caches, its view code) with the aggregate's model, which is checked against the weights, chain and
preprocessing the database records before the first picture.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from ..aggregate.db import DB_NAME, AggregateDB, AggregateError
from ..aggregate.graph import DEFAULT_STABLE, aggregate_graph
from ..aggregate.pictures import VIEW, check_model, read_image
from ..core.errors import OptionError
from ..core.units import Unit, parse_path
from ..explainer import Explainer
from ..loading import load_explainer
from .session import AGGREGATE_PREFIX, NotFoundError, Workspace

THUMBS = 3  # pictures on each card, as in graph.html


def _stable_of(graph_json: Path) -> float:
    """The stability threshold the run wrote graph.json with (``--stable``), else the default."""
    try:
        value = json.loads(graph_json.read_text(encoding="utf-8"))["settings"]["stable"]
        return float(value) if 0 < float(value) <= 1 else DEFAULT_STABLE
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_STABLE


class AggregateSource:
    """One aggregate folder, read by the server (each request opens its own SQLite connection)."""

    def __init__(self, directory: str | os.PathLike[str], model: str | None = None) -> None:
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise OptionError(f"--aggregate {self.dir} is not a folder", "give the --out folder of `featuretree aggregate`")
        self.db_path = self.dir / DB_NAME
        with self.open() as db:
            self.meta = db.meta()
        if not self.meta.get("model"):
            raise AggregateError(
                f"{self.db_path} holds no finished aggregate run", "run `featuretree aggregate IMAGES_DIR --out DIR` first"
            )
        self.model = model or str(self.meta["model"]["spec"])  # the explorer's name for the aggregate's model
        self.settings: dict[str, Any] = self.meta["settings"]
        self.stable = _stable_of(self.dir / "graph.json")
        self._lock = threading.Lock()
        # One connection kept open (used under _lock): its PRAGMA data_version changes when a run commits.
        self._watch = self.open()
        self._picture_lock = threading.Lock()  # one batch of card pictures at a time (see picture)
        self._graph: tuple[tuple, dict[str, Any], dict[str, Any]] | None = None
        self._checked: str | None = None  # the weights fingerprint already checked against the database

    def open(self) -> AggregateDB:
        return AggregateDB(self.db_path)

    def load_explainer(self, device: str) -> Explainer:
        """The aggregate's model from its spec, chain and layouts (a zoo model or an importable one; a model that
        needs a weights file is given with --model and --weights instead)."""
        model = self.meta["model"]
        return load_explainer(str(model["spec"]), ",".join(model["layers"]), device, dict(model.get("layouts") or {}))

    def explainer(self, workspace: Workspace) -> Explainer:
        """The workspace's explainer of the aggregate's model, refused unless it is the one the database was built with."""
        explainer = workspace.explainer(self.model)
        fingerprint = explainer.weights_fingerprint()
        if self._checked != fingerprint:
            check_model(explainer, self.meta["model"], f"the aggregate {self.dir}")
            self._checked = fingerprint
        return explainer

    # ----- graphs ------------------------------------------------------------------------
    def graph(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """graph.json's content from the database, and each unit's first images (``unit_images`` order) for its
        card; recomputed when an aggregate run has committed to the database since."""
        with self._lock:
            # SQLite's own change counter, not the files' times: every connection that closes checkpoints the
            # WAL file and changes its size and time, which made each request rebuild the graphs (seconds each).
            stamp = self._watch.conn.execute("PRAGMA data_version").fetchone()[0]
            if self._graph is None or self._graph[0] != stamp:
                db = self._watch
                with db.snapshot():  # the graphs and their cards' images from the same rows
                    graph = aggregate_graph(db, self.stable)
                    top = db.top_images(THUMBS)
                thumbs = {
                    root: {unit: [{"image": p, "share": s} for p, s in rows] for unit, rows in units.items()} for root, units in top.items()
                }
                self._graph = (stamp, graph, thumbs)
            return self._graph[1], self._graph[2]

    def node(self, root: str, unit: str) -> dict[str, Any]:
        """The graph node of ``unit`` in the graph rooted at ``root``: 404 for a root or unit the graphs do not have."""
        graph, _ = self.graph()
        found = next((g for g in graph["graphs"] if g["root"] == root), None)
        if found is None:
            roots = ", ".join(g["root"] for g in graph["graphs"][:5])
            raise NotFoundError(f"the aggregate has no class graph rooted at {root[:80]!r}", f"use one of its roots ({roots})")
        name = str(Unit.parse(unit))  # a malformed unit is a 400 with the reason
        node = next((n for n in found["nodes"] if n["id"] == name), None)
        if node is None:
            raise NotFoundError(f"{name} is not in the class graph of {root}", "pick a unit the graph shows")
        return node

    def unit_images(self, root: str, unit: str, offset: int, limit: int) -> dict[str, Any]:
        """One page of the images whose tree shows ``unit``, largest share first (``AggregateDB.unit_images``' order)."""
        node = self.node(root, unit)
        with self.open() as db:
            rows = db.unit_images_page(root, node["id"], offset, limit)
            total = db.unit_image_count(root, node["id"])
        return {"root": root, "unit": node["id"], "total": total, "offset": offset, "images": rows}

    def image_node(self, root: str, unit: str, image: str) -> tuple[Unit, ...]:
        """The node (path from the root) of ``unit``'s strongest copy in the tree of ``image``."""
        node = self.node(root, unit)
        with self.open() as db:
            row = db.image_unit(image, root, node["id"])
        if row is None:
            raise NotFoundError(
                f"the tree of {image[:80]!r} rooted at {root} does not show {node['id']}", "use an image the unit's list gives"
            )
        return parse_path(row["node"])

    # ----- images ------------------------------------------------------------------------
    def load_picture(self, rel: str, max_pixels: int) -> tuple[Image.Image, str]:
        """An aggregated image by its relative path (the part of its id after ``aggregate:``) and its display name."""
        with self.open() as db:
            known = db.image_file(rel)
            if known is None or known["status"] != "ok":
                raise NotFoundError(f"{rel[:80]!r} is not an aggregated image of {self.dir}", "use an image the class graph lists")
            return read_image(db, rel, max_pixels), rel

    def picture(self, workspace: Workspace, root: str, unit: str, image: str) -> bytes:
        """``unit``'s map on ``image`` (JPEG): the contribution map of its node in that image's tree.

        The cards ask for their pictures one at a time, many per image: the first request for an image draws
        every card picture of that image in one batch (one analysis, shared backward passes), so the others
        are answered from the picture cache."""
        path = self.image_node(root, unit, image)
        self.explainer(workspace)
        args = (self.model, AGGREGATE_PREFIX + image)
        style = (VIEW, self.settings["rule"], self.settings["seed_mode"])
        found = workspace.cached_picture(*args, path, *style, encoding="view")
        if found is not None:
            return found
        # One batch at a time: the browser asks for six pictures at once, and six images analysed and drawn
        # together on a small CPU thrash the analysis cache (measured: 252 card pictures took 364 s with six
        # concurrent requests, 11 s one after another).
        with self._picture_lock:
            return self._draw_batch(workspace, root, image, path, args, style)

    def _draw_batch(self, workspace: Workspace, root: str, image: str, path: tuple[Unit, ...], args: tuple, style: tuple) -> bytes:
        found = workspace.cached_picture(*args, path, *style, encoding="view")
        if found is not None:  # drawn by the batch this request waited for
            return found
        _, thumbs = self.graph()
        others = [
            other for other, items in thumbs.get(root, {}).items() if other != str(path[-1]) and any(t["image"] == image for t in items)
        ]
        with self.open() as db:
            rows = [db.image_unit(image, root, other) for other in others]
        batch = [path] + [parse_path(row["node"]) for row in rows if row is not None]
        found = workspace.pictures_many(*args, batch, *style, encoding="view")[0]
        # A node without a map (pictures_many gives None) gets the single picture's own error.
        return found if found is not None else workspace.picture(*args, path, *style, encoding="view")

    def info(self) -> dict[str, Any]:
        graph, _ = self.graph()
        return {
            "model": self.model,
            "folder": str(self.meta["folder"]),
            "images": graph["images"]["ok"],
            "roots": [g["root"] for g in graph["graphs"]],
            "settings": {**self.settings, "stable": self.stable},
        }
