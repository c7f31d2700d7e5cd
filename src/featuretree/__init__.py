"""featuretree: image-specific trees of CNN units, scored by gradient x activation."""

from __future__ import annotations

from .engine import RULES, SEED_MODES, Analysis, Explainer, Unit
from .errors import FeatureTreeError
from .images import Preprocess, load_image
from .tree import FeatureTree, Node
from .zoo import MODELS, ZooModel, load_model

__version__ = "0.1.0"

__all__ = [
    "RULES",
    "SEED_MODES",
    "MODELS",
    "Analysis",
    "Explainer",
    "FeatureTree",
    "FeatureTreeError",
    "Node",
    "Preprocess",
    "Unit",
    "ZooModel",
    "explain",
    "load_image",
    "load_model",
]


def explain(image, model: str | Explainer = "efficientnet_lite0", **options) -> FeatureTree:
    """Explain ``image`` (path, PIL image, array or tensor) with a zoo model name or an Explainer.

    Options: root, k, depth, rule, seed_mode, negatives, images, progress (see ``Analysis.tree``).
    """
    explainer = model if isinstance(model, Explainer) else Explainer.from_zoo(model)
    return explainer.explain(image, **options)
