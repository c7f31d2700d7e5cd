"""featuretree: image-specific trees of CNN units, scored by gradient x activation."""

from __future__ import annotations

from .analysis.image_analysis import SEED_MODES
from .capture.cuts import ChainCutError
from .checkup import ModelCheck
from .core.errors import BypassWarning, FeatureTreeError
from .core.images import Preprocess, load_image
from .core.units import Unit
from .explainer import Analysis, Explainer
from .models.zoo import MODELS, ZooModel, load_model
from .rules import rule_names
from .tree.model import FeatureTree, Node

__version__ = "0.1.0"

__all__ = [
    "SEED_MODES",
    "MODELS",
    "Analysis",
    "BypassWarning",
    "ChainCutError",
    "Explainer",
    "FeatureTree",
    "FeatureTreeError",
    "ModelCheck",
    "Node",
    "Preprocess",
    "Unit",
    "ZooModel",
    "explain",
    "load_image",
    "load_model",
    "rule_names",
]


def explain(image, model: str | Explainer = "efficientnet_lite0", **options) -> FeatureTree:
    """Explain ``image`` (path, PIL image, array or tensor) with a zoo model name or an Explainer.

    Options: root, k, depth, rule, seed_mode, negatives, images, progress (see ``Analysis.tree``).
    """
    explainer = model if isinstance(model, Explainer) else Explainer.from_zoo(model)
    return explainer.explain(image, **options)
