"""The class graph: every image's tree of one root merged into counts and means, read from the database.

For each root (one with ``--class N``; one per predicted class with ``--predicted``) over its n images:

- a node per unit that appears in any image's tree: in how many images (``images``, ``frequency`` =
  images / n), its mean share of the root's positive evidence and its mean score over those images;
- an edge per (parent unit, child unit) pair: in how many images, its mean score and mean share;
- chance: how often a random unit of the same layer would appear (a node), or would be a child of the
  same parent (an edge), given how many units the trees show there; ``p_value`` is the binomial
  probability of appearing in at least this many of the n images at that chance rate;
- ``stable``: an edge that appears in at least the ``stable`` share of the images.

Sums are exact (``math.fsum`` is correctly rounded, whatever the order of its terms), so the graph does
not depend on which worker finished first: a Ray run and a local run give the same file.
"""

from __future__ import annotations

import math
from itertools import groupby
from typing import Any

from scipy.stats import binom

from .db import AggregateDB

FORMAT = "featuretree-aggregate"
VERSION = 1
DEFAULT_STABLE = 0.5


def _p_value(hits: int, n: int, chance: float | None) -> float | None:
    if chance is None:
        return None
    return float(binom.sf(hits - 1, n, min(max(chance, 0.0), 1.0)))


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def class_graph(db: AggregateDB, root: str, label: str | None, n: int, channels: dict[str, int], stable: float) -> dict[str, Any]:
    """One root's graph over its ``n`` images (``channels``: units per chain layer)."""
    where = "FROM image_units u JOIN images i ON i.id = u.image_id WHERE i.status = 'ok' AND i.root = ?"
    shown = dict(db.conn.execute(f"SELECT u.layer, COUNT(*) {where} GROUP BY u.layer", (root,)).fetchall())
    layer_chance = {layer: shown.get(layer, 0) / (n * channels[layer]) for layer in channels}
    nodes = []
    rows = db.conn.execute(f"SELECT u.unit, u.layer, u.channel, u.depth, u.share, u.score {where} ORDER BY u.unit", (root,))
    for unit, group in groupby(rows, key=lambda row: row[0]):
        group = list(group)
        scores = [row[5] for row in group if row[5] is not None]
        is_root = unit == root
        chance = None if is_root else layer_chance[group[0][1]]
        nodes.append(
            {
                "id": unit,
                "layer": group[0][1],
                "unit": group[0][2],
                "label": label if is_root else None,
                "depth": min(row[3] for row in group),
                "images": len(group),
                "frequency": len(group) / n,
                "mean_share": _mean([row[4] for row in group]),
                "mean_score": _mean(scores) if scores else None,
                "chance": chance,
                "p_value": _p_value(len(group), n, chance),
            }
        )
    nodes.sort(key=lambda node: (node["depth"], -node["images"], -node["mean_share"], node["id"]))

    edge_where = "FROM image_edges e JOIN images i ON i.id = e.image_id WHERE i.status = 'ok' AND i.root = ?"
    children = {
        source: (layer, count)
        for source, layer, count in db.conn.execute(f"SELECT e.source, e.target_layer, COUNT(*) {edge_where} GROUP BY e.source", (root,))
    }
    edges = []
    rows = db.conn.execute(f"SELECT e.source, e.target, e.score, e.share {edge_where} ORDER BY e.source, e.target", (root,))
    for (source, target), group in groupby(rows, key=lambda row: (row[0], row[1])):
        group = list(group)
        layer, count = children[source]
        chance = count / (n * channels[layer])  # a random unit of the child layer as a child of this source
        edges.append(
            {
                "source": source,
                "target": target,
                "images": len(group),
                "frequency": len(group) / n,
                "mean_score": _mean([row[2] for row in group]),
                "mean_share": _mean([row[3] for row in group]),
                "stable": len(group) / n >= stable,
                "chance": chance,
                "p_value": _p_value(len(group), n, chance),
            }
        )
    order = {node["id"]: i for i, node in enumerate(nodes)}
    edges.sort(key=lambda edge: (order[edge["source"]], -edge["images"], -edge["mean_score"], edge["target"]))
    layers = [
        {"name": name, "channels": channels[name], "units_per_image": shown.get(name, 0) / n, "chance": layer_chance[name]}
        for name in channels
        if shown.get(name)
    ]
    return {"root": root, "label": label, "images": n, "layers": layers, "nodes": nodes, "edges": edges}


def aggregate_graph(db: AggregateDB, stable: float = DEFAULT_STABLE) -> dict[str, Any]:
    """graph.json: the settings the trees were built with and one class graph per root, all read from one
    snapshot of the database (a run committing meanwhile cannot make the counts disagree)."""
    with db.snapshot():
        return _aggregate_graph(db, stable)


def _aggregate_graph(db: AggregateDB, stable: float) -> dict[str, Any]:
    meta = db.meta()
    channels = {layer["name"]: layer["channels"] for layer in meta["chain"]}
    counts = db.counts()
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": meta["model"],
        "folder": meta["folder"],
        "settings": {**meta["settings"], "stable": stable},
        "chain": meta["chain"],
        "images": {"ok": counts.get("ok", 0), "skipped": counts.get("skipped", 0)},
        "graphs": [class_graph(db, root, label, n, channels, stable) for root, label, n in db.roots()],
    }
