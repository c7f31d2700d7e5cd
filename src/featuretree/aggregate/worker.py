"""One image's tree, reduced to what the class graph counts: its distinct units and edges.

A worker (in this process, or one per Ray actor) gets a shard of files as (path, size, mtime_ns,
bytes, why they could not be read): the driver reads the bytes, so workers need no shared file system. Each image is analysed
on its own (a batch of one), so its record does not depend on which shard or worker it landed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.errors import FeatureTreeError, ImageInputError
from ..core.images import decode_image
from ..loading import ModelSpec
from ..scale.engines import FileItem
from ..tree.graph import carried_shares, merged_graph
from ..tree.model import FeatureTree
from .db import EdgeRecord, ImageRecord, UnitRecord


@dataclass(frozen=True)
class TreeSettings:
    """How every image's tree is built: rooted at ``root`` (e.g. "class:285"), or at the image's own
    top class when ``root`` is None (``--predicted``)."""

    root: str | None
    depth: int = 3
    k: int = 5
    rule: str = "gradient"
    seed_mode: str = "sum"


def image_record(tree: FeatureTree) -> tuple[list[UnitRecord], list[EdgeRecord]]:
    """A tree's distinct units (each with the evidence share it carries, summed over its copies) and
    its merged edges (``tree.graph``)."""
    units: dict[str, UnitRecord] = {}
    best: dict[str, float] = {}
    for node, carried in carried_shares(tree):
        key = node.path[-1]
        unit = units.get(key)
        if unit is None:
            unit = units[key] = UnitRecord(key, node.layer, node.unit, node.depth, 0.0, None, node.id)
            best[key] = -1.0
        unit.share += carried
        if node.score is not None:
            unit.score = (unit.score or 0.0) + node.score
        if carried > best[key]:
            best[key], unit.path = carried, node.id
    graph = merged_graph(tree)
    layer_of = {u.unit: u.layer for u in units.values()}
    edges = [EdgeRecord(e["source"], e["target"], layer_of[e["target"]], e["score"], e["share"]) for e in graph["edges"]]
    return list(units.values()), edges


class AggregateWorker:
    """Builds each file's tree with one explainer; a shard's records in the shard's order."""

    def __init__(self, explainer, settings: TreeSettings) -> None:
        self.explainer = explainer
        self.settings = settings

    def __call__(self, shard: Sequence[FileItem]) -> list[ImageRecord]:
        return [self.record(*item) for item in shard]

    def record(self, path: str, size: int, mtime_ns: int, data: bytes | None, problem: str | None = None) -> ImageRecord:
        if data is None:  # not stored (no sha256): the next run tries it again
            return ImageRecord(path, None, size, mtime_ns, error=problem or "unreadable")
        record = ImageRecord(path, hashlib.sha256(data).hexdigest(), size, mtime_ns)
        try:
            picture = decode_image(data, name=path)
        except ImageInputError as err:
            record.error = err.problem
            return record
        except Exception as err:  # a decoder bug must not stop a long run
            record.error = f"could not decode ({type(err).__name__}: {err})"
            return record
        s = self.settings
        analysis = self.explainer.analyze(picture)
        try:
            tree = analysis.tree(root=s.root, k=s.k, depth=s.depth, rule=s.rule, seed_mode=s.seed_mode, images=False)
        except FeatureTreeError as err:  # this image only (e.g. non-finite scores): skipped and listed, the run goes on
            record.error = err.problem
            return record
        top = analysis.top_classes(1)
        if top:
            record.top_class, record.top_probability = top[0].index, top[0].probability
        record.root = tree.root.path[-1]
        record.root_label = tree.root.label
        complete = tree.completeness()
        record.completeness = complete["leaves"] if complete else None
        record.units, record.edges = image_record(tree)
        return record


@dataclass(frozen=True)
class AggregateWorkerFactory:
    """What a Ray actor is sent: it loads the model from ``spec`` and builds its worker."""

    spec: ModelSpec
    settings: TreeSettings
    identity: dict | None = None  # the starting process's explainer_identity, checked in every worker

    def __call__(self) -> AggregateWorker:
        return AggregateWorker(self.spec.load_matching(self.identity), self.settings)


def check_settings(explainer, settings: TreeSettings):
    """Fail before any image is read: a blank input through the same tree settings (root, depth, rule).
    Returns that blank analysis (its chain gives each layer's units)."""
    import torch

    size = explainer.preprocess.size
    analysis = explainer.analyze(torch.zeros(1, 3, size, size))
    analysis.tree(root=settings.root, k=settings.k, depth=settings.depth, rule=settings.rule, seed_mode=settings.seed_mode, images=False)
    return analysis
