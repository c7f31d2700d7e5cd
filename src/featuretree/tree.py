"""The tree data model, its construction from an Analysis, and its versioned JSON form."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any

from .errors import OptionError

if TYPE_CHECKING:
    from PIL import Image

    from .engine import Analysis, NodeEvidence, Unit

SCHEMA_VERSION = 1


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
    label: str | None = None
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
    # Measured edge from the parent (featuretree.verify): estimate, parent_drop, root_drop, ...
    verification: dict[str, float] | None = None
    # All shown children zeroed together (on expanded, verified nodes).
    verification_all: dict[str, float] | None = None
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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureTree:
        version = data.get("version")
        if version != SCHEMA_VERSION:
            raise OptionError(f"unsupported tree.json version {version!r}", f"this featuretree reads version {SCHEMA_VERSION}")
        return cls(
            model=data["model"],
            image=data["image"],
            top_classes=data["top_classes"],
            settings=data["settings"],
            root=Node.from_dict(data["root"]),
            version=version,
        )

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureTree:
        return cls.from_dict(json.loads(FsPath(path).read_text()))

    def save(self, out_dir: str | os.PathLike[str], html: bool = True) -> FsPath:
        """Write tree.json, the node PNGs and (optionally) a self-contained tree.html into ``out_dir``."""
        from .export import save_tree

        return save_tree(self, out_dir, html=html)

    def _repr_html_(self) -> str:
        from .export import render_html

        return render_html(self, inline_frame=True)


def _node_for(analysis: Analysis, path: tuple[Unit, ...], score: float | None, share: float | None) -> Node:
    from .engine import path_id

    unit = path[-1]
    label = analysis.class_name(unit.channel) if unit.layer == analysis.logits_layer else None
    return Node(
        id=path_id(path),
        path=[str(u) for u in path],
        layer=unit.layer,
        unit=unit.channel,
        depth=len(path) - 1,
        label=label,
        score=score,
        share=share,
    )


def fill_evidence(node: Node, evidence: NodeEvidence) -> None:
    """Copy the evidence's numbers (activation, location, box) onto the node."""
    node.activation_sum = evidence.activation_sum
    node.activation_max = evidence.activation_max
    node.location = list(evidence.location) if evidence.location else None
    node.box = list(evidence.box) if evidence.box else None


def apply_expansion(node: Node, expansion) -> None:
    node.expanded = True
    node.coverage = expansion.coverage
    node.total_positive = expansion.total_positive
    node.total_negative = expansion.total_negative
    node.leaf_reason = expansion.leaf_reason
    node.negatives = [Edge(str(s.unit), s.score, s.share) for s in expansion.negatives]
    node.rest = expansion.rest


def build_tree(
    analysis: Analysis,
    root=None,
    *,
    k: int = 5,
    depth: int = 3,
    rule: str = "gradient",
    seed_mode: str = "sum",
    negatives: int = 0,
    images: bool = True,
    progress: bool = False,
    verify: bool = False,
) -> FeatureTree:
    from tqdm.auto import tqdm

    from .engine import RULES, SEED_MODES, _check_choice

    if k < 1:
        raise OptionError(f"k must be at least 1, got {k}", "use --k 1 or more")
    if depth < 0:
        raise OptionError(f"depth must be 0 or more, got {depth}", "use --depth 0 for the root alone")
    if negatives < 0:
        raise OptionError(f"negatives must be 0 or more, got {negatives}", "use --negatives 0 to hide them")
    _check_choice(rule, RULES, "rule")
    _check_choice(seed_mode, SEED_MODES, "seed mode")
    root_unit = analysis.resolve_root(root)
    below = analysis.layers.index(root_unit.layer)
    if depth > below:
        raise OptionError(
            f"depth {depth} is deeper than the chain: root layer {root_unit.layer!r} has {below} layer(s) below it",
            f"use --depth {below} or less, or add layers with --layers",
        )
    tree = FeatureTree(
        model={
            "name": analysis.explainer.name,
            "preprocess": analysis.explainer.preprocess.to_dict(),
            "chain": [{"name": c.name, "type": c.type, "shape": list(c.shape)} for c in analysis.chain],
            "rectifiers": analysis.record.rectifier_count,
        },
        image={
            "source": os.path.basename(analysis.image.source),
            "original_size": list(analysis.image.original_size),
            "size": [analysis.image.picture.width, analysis.image.picture.height],
        },
        top_classes=[asdict(c) for c in analysis.top_classes(5)],
        settings={"k": k, "depth": depth, "rule": rule, "seed_mode": seed_mode, "negatives": negatives},
        root=_node_for(analysis, (root_unit,), None, None),
        picture=analysis.image.picture,
    )
    total = sum(k**level for level in range(depth + 1))
    frontier: list[tuple[Node, tuple[Unit, ...]]] = [(tree.root, (root_unit,))]
    with tqdm(total=total, desc="explaining", unit="node", disable=not progress, leave=False) as bar:
        while frontier:
            next_frontier = []
            # One level of a tree is one layer: its nodes share batched backward passes.
            if images:
                for (node, _), evidence in zip(frontier, analysis.evidence_many([p for _, p in frontier], rule, seed_mode)):
                    tree.evidence[node.id] = evidence
                    fill_evidence(node, evidence)
            if depth > (frontier[0][0].depth if frontier else depth):
                analysis.prefetch_layer_gradients([p for _, p in frontier], rule, seed_mode)
            for node, path in frontier:
                if not images:
                    act = analysis.activation(path[-1].layer)[0, path[-1].channel]
                    node.activation_sum, node.activation_max = float(act.sum()), float(act.max())
                if node.depth < depth:
                    expansion = analysis.expand(path, k, rule, seed_mode, negatives)
                    apply_expansion(node, expansion)
                    for scored in expansion.children:
                        child_path = path + (scored.unit,)
                        child = _node_for(analysis, child_path, scored.score, scored.share)
                        node.children.append(child)
                        next_frontier.append((child, child_path))
                bar.update(1)
            frontier = next_frontier
    if verify:
        from .verify import verify_tree

        verify_tree(analysis, tree)
    return tree
