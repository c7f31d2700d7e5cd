"""The tree data model and its versioned JSON form."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any

from ..core.errors import OptionError
from ..render.export import render_html, save_tree
from .graph import completeness, merged_graph

if TYPE_CHECKING:
    from PIL import Image

    from ..evidence.evidence import NodeEvidence

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 has no "bypass" on nodes


@dataclass
class Edge:
    """A ranked unit below a node that is listed but not expanded (e.g. negative contributors)."""

    unit: str
    score: float
    share: float


@dataclass
class Node:
    id: str
    path: list[str]
    layer: str
    unit: int
    depth: int
    label: str | None = None  # a class name; for a contrastive root "A − B"
    contrast: int | None = None  # a contrastive root's second unit: the objective is unit minus contrast
    score: float | None = None  # contribution to the root objective through the path (None at the root)
    share: float | None = None  # score / parent's total positive contribution
    activation_sum: float = 0.0
    activation_max: float = 0.0
    location: list[int] | None = None  # [row, col] of strongest evidence in the node's own map
    box: list[int] | None = None  # [left, top, right, bottom] in model-input pixels
    expanded: bool = False
    coverage: float | None = None  # share of positive contribution covered by the children
    total_positive: float | None = None
    total_negative: float | None = None
    leaf_reason: str | None = None
    # What the shown children leave out: {"share", "score"} of the positive total, plus "negative".
    rest: dict[str, float] | None = None
    # Where the chain does not cut (allow_bypass): the part of this node's evidence that goes around the
    # children's layer: {"share", "score", "total", "layer", "source", "kind"} (schema version 2).
    bypass: dict[str, float | str] | None = None
    # Measured edge from the parent (tree.verify): estimate, parent_drop, root_drop, ...
    verification: dict[str, Any] | None = None
    # All shown children zeroed together (on expanded, verified nodes).
    verification_all: dict[str, Any] | None = None
    images: dict[str, str] = field(default_factory=dict)
    negatives: list[Edge] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["children"] = [c.to_dict() for c in self.children]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Node:
        data = dict(data)
        children = [cls.from_dict(c) for c in data.pop("children", [])]
        negatives = [Edge(**e) for e in data.pop("negatives", [])]
        return cls(**data, negatives=negatives, children=children)


@dataclass
class FeatureTree:
    """An explanation of one image: metadata plus the root Node. ``evidence`` is not serialised."""

    model: dict[str, Any]
    image: dict[str, Any]
    top_classes: list[dict[str, Any]]
    settings: dict[str, Any]
    root: Node
    version: int = SCHEMA_VERSION
    evidence: dict[str, NodeEvidence] = field(default_factory=dict, repr=False, compare=False)
    picture: Image.Image | None = field(default=None, repr=False, compare=False)

    def walk(self) -> Iterator[Node]:
        return self.root.walk()

    def find(self, node_id: str) -> Node | None:
        return next((n for n in self.walk() if n.id == node_id), None)

    def __len__(self) -> int:
        return sum(1 for _ in self.walk())

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model": self.model,
            "image": self.image,
            "top_classes": self.top_classes,
            "settings": self.settings,
            "root": self.root.to_dict(),
            # Derived from the nodes (so loading ignores them and a round trip reproduces them).
            "completeness": self.completeness(),
            "graph": self.graph(),
        }

    def graph(self) -> dict[str, Any]:
        """The merged graph: each distinct unit once, with every edge into it (see tree.graph)."""
        return merged_graph(self)

    def completeness(self) -> dict[str, Any] | None:
        """The share of the root's positive evidence the shown leaves, and each level, account for."""
        return completeness(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureTree:
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise OptionError(
                f"unsupported tree.json version {version!r}", f"this featuretree reads versions {', '.join(map(str, READABLE_VERSIONS))}"
            )
        return cls(
            model=data["model"],
            image=data["image"],
            top_classes=data["top_classes"],
            settings=data["settings"],
            root=Node.from_dict(data["root"]),
        )

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureTree:
        return cls.from_dict(json.loads(FsPath(path).read_text()))

    def save(self, out_dir: str | os.PathLike[str], html: bool = True) -> FsPath:
        """Write tree.json, the node pictures and (optionally) a self-contained tree.html into ``out_dir``."""
        return save_tree(self, out_dir, html=html)

    def _repr_html_(self) -> str:
        return render_html(self, inline_frame=True)
