"""The Python API: ``Explainer`` (a model and its chain) and ``Analysis`` (one image through it).

These classes put the layers together: the forward record, roots and gradients come from
``analysis``, child scores from ``rules``, pictures' raw material from ``evidence``, and trees
from ``tree``. Code inside the package calls those layers directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .analysis.chain_model import ChainModel
from .analysis.image_analysis import ImageAnalysis
from .analysis.interventions import InterventionResult, intervention_result
from .checkup import ModelCheck, check_model
from .core.images import DEFAULT_MAX_PIXELS, prepare_image
from .core.units import Unit
from .evidence.evidence import EVIDENCE_KINDS, NodeEvidence, evidence_many, path_gain
from .rules import score_children
from .tree.builder import build_tree
from .tree.expansion import Expansion, expand
from .tree.model import FeatureTree
from .tree.verify import verify_tree


class Analysis(ImageAnalysis):
    """One image through one model: a single forward pass, then trees, scores and evidence on demand."""

    def contributions(self, path: Sequence[Unit], rule: str = "gradient", seed_mode: str = "sum") -> torch.Tensor:
        """Per-channel scores of the layer below the path's end under ``rule``, shape [C] float64."""
        return score_children(self, path, rule, seed_mode)

    def expand(
        self,
        path: Sequence[Unit],
        k: int = 5,
        rule: str = "gradient",
        seed_mode: str = "sum",
        negatives: int = 0,
        coverage: float | None = None,
        rerank: int | None = None,
    ) -> Expansion:
        """Rank the units of the layer below ``path[-1]`` by their contribution through the path; keep the
        top ``k``, or with ``coverage`` F the fewest of them whose shares reach F; with ``rerank`` N, the k
        of the top N*k whose removal (measured) lowers the parent most."""
        return expand(self, path, k, rule, seed_mode, negatives, coverage, rerank)

    def evidence(
        self, path: Sequence[Unit], rule: str = "gradient", seed_mode: str = "sum", kinds: Sequence[str] = EVIDENCE_KINDS
    ) -> NodeEvidence:
        """Everything one node's pictures need (see ``evidence_many``)."""
        return evidence_many(self, [path], rule, seed_mode, kinds)[0]

    def evidence_many(
        self, paths: Sequence[Sequence[Unit]], rule: str = "gradient", seed_mode: str = "sum", kinds: Sequence[str] = EVIDENCE_KINDS
    ) -> list[NodeEvidence]:
        """Node evidence for many paths; nodes of one layer share batched backward passes."""
        return evidence_many(self, paths, rule, seed_mode, kinds)

    def path_gain(self, path: Sequence[Unit], seed_mode: str = "sum") -> float:
        return path_gain(self, tuple(path), seed_mode)

    def tree(
        self,
        root: str | Unit | None = None,
        k: int = 5,
        depth: int = 3,
        rule: str = "gradient",
        seed_mode: str = "sum",
        negatives: int = 0,
        images: bool = True,
        progress: bool = False,
        verify: bool = False,
        coverage: float | None = None,
        rerank: int | None = None,
    ) -> FeatureTree:
        """Expand breadth-first from ``root`` to ``depth`` levels below it, keeping ``k`` children each
        (with ``coverage`` F: the fewest of the top k whose shares reach F).

        ``verify=True`` also measures every edge by ablation."""
        return build_tree(
            self,
            root,
            k=k,
            depth=depth,
            rule=rule,
            seed_mode=seed_mode,
            negatives=negatives,
            images=images,
            progress=progress,
            verify=verify,
            coverage=coverage,
            rerank=rerank,
        )

    def verify(self, tree: FeatureTree) -> FeatureTree:
        """Measure every edge of ``tree`` (made from this analysis) by ablation."""
        return verify_tree(self, tree)

    def intervene(
        self, units: Sequence[Unit | str], scale: float = 0.0, root: str | Unit | None = None, top: int = 5
    ) -> InterventionResult:
        """Multiply ``units`` (any chain layers, several at once; ``"LAYER:CH"`` or ``Unit``) by ``scale`` in
        one forward pass: the top classes and the root objective before and after."""
        parsed = [u if isinstance(u, Unit) else Unit.parse(u) for u in units]
        return intervention_result(self, parsed, scale, root, top)


class Explainer(ChainModel):
    """A model plus the ordered layer chain whose units make up the tree."""

    def analyze(self, image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Analysis:
        """Prepare ``image`` and run the single forward pass every later query reuses."""
        return Analysis(self, prepare_image(image, self.preprocess, max_pixels))

    def explain(self, image, **options) -> FeatureTree:
        """Build a tree for ``image``; options as in ``Analysis.tree``."""
        return self.analyze(image).tree(**options)

    def check(self, image=None, speed: bool = True) -> ModelCheck:
        """What can be trusted for this model and chain (``featuretree check``): per chain layer its layout,
        shape, whether it cuts and how often it runs; per rule exact / approximate / unavailable and why;
        shared or per-image receptive fields; the model's state; a speed estimate. ``print(result.format())``."""
        return check_model(self, image, speed=speed)
