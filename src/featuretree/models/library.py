"""Models from torchvision and timm by spec, ``torchvision:NAME`` or ``timm:NAME``.

Nothing is ever downloaded: the weights come from ``--weights FILE`` (a state dict, or a checkpoint
holding one), or stay random with ``--random-weights``. Preprocessing comes from the library (timm's
data config; torchvision's weights metadata, which ships with the package), class names from the
same metadata or, for 1000 classes, ImageNet's.
"""

from __future__ import annotations

import inspect
import os

import torch
from torch import nn

from ..core.errors import ModelError, did_you_mean
from ..core.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .zoo import ZooModel, imagenet_class_names

LIBRARIES = ("torchvision", "timm")


def is_library_spec(spec: str) -> bool:
    return spec.partition(":")[0] in LIBRARIES and bool(spec.partition(":")[2])


def load_library_model(spec: str, weights: str | os.PathLike[str] | None = None, random_weights: bool = False) -> ZooModel:
    """The model, its preprocessing and class names; ``default_layers`` is left empty for the caller
    to propose (``analysis.discovery.default_chain``)."""
    library, _, name = spec.partition(":")
    if weights is None and not random_weights:
        raise ModelError(
            f"{spec} has no weights here: featuretree never downloads them",
            "pass --weights FILE (a state dict or checkpoint), or --random-weights to try the architecture",
        )
    # Random weights are drawn from a fixed seed, without touching the caller's random state, so every
    # load of the same spec is the same model (an index and a server built from it agree).
    state = read_state_dict(weights) if weights is not None else None
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        build = _torchvision if library == "torchvision" else _timm
        module, preprocess, classes = build(name, None)
        classes_in_weights = head_class_count(module, state) if state is not None else None
        if classes_in_weights is not None:
            # A fine-tuned checkpoint: the same architecture with another classifier head.
            module, preprocess, _ = build(name, classes_in_weights)
            classes = None
        if state is None:
            _redraw_zero_matrices(module)
    if state is not None:
        load_state(module, state, weights)
    module.eval()
    classes = classes or _default_classes(module, preprocess.size)
    return ZooModel(
        name=spec,
        module=module,
        preprocess=preprocess,
        class_names=classes,
        default_layers=[],
        description=f"{spec} ({'weights: ' + os.fspath(weights) if weights is not None else 'random weights'})",
    )


def _redraw_zero_matrices(module: nn.Module) -> None:
    """Random weights: weight matrices the library starts at zero (torchvision's ViT head) would stop
    every gradient, so a tree could not be built; they are drawn from N(0, 0.02^2) instead."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("weight") and param.dim() >= 2 and not param.any():
                param.normal_(0.0, 0.02)


def head_class_count(module: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The class count of ``state`` when it differs from ``module``'s only in the classifier head: every
    tensor whose shape differs has the module's class count as its first dimension, and the weights
    have one other count there (a checkpoint fine-tuned on 10 classes). None otherwise."""
    own = module.state_dict()
    differing = [key for key, value in state.items() if key in own and own[key].shape != value.shape]
    if not differing:
        return None
    pairs = {(own[k].shape[0], state[k].shape[0]) for k in differing if own[k].dim() == state[k].dim() >= 1}
    same_rest = all(own[k].shape[1:] == state[k].shape[1:] for k in differing)
    if len(pairs) != 1 or not same_rest:
        return None
    return int(next(iter(pairs))[1])


def _torchvision(name: str, num_classes: int | None) -> tuple[nn.Module, Preprocess, list[str] | None]:
    try:
        import torchvision
    except ImportError:
        raise ModelError("torchvision is not installed", "pip install torchvision (built for the installed torch)") from None
    available = torchvision.models.list_models()
    if name not in available:
        raise ModelError(f"torchvision has no model {name!r}", did_you_mean(name, available) or "see torchvision.models.list_models()")
    builder = torchvision.models.get_model_builder(name)
    accepts = inspect.signature(builder).parameters
    # Detection and segmentation builders would fetch ImageNet backbone weights by default: never.
    options: dict[str, object] = {"weights_backbone": None} if "weights_backbone" in accepts else {}
    preprocess, classes = Preprocess(size=224), None
    try:  # the weights' metadata ships with torchvision: input size, normalisation, class names
        default = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError, KeyError, TypeError):
        default = None
    if default is not None:
        transforms = default.transforms()
        kind = type(transforms).__name__
        if kind in ("VideoClassification", "OpticalFlow"):
            raise ModelError(
                f"torchvision:{name} takes {'video clips' if kind == 'VideoClassification' else 'pairs of frames'}, not one image",
                "featuretree explains image models: pick a classifier, segmenter or detector",
            )
        classes = list(default.meta.get("categories") or []) or None
        preprocess = _torchvision_preprocess(transforms)
        if "image_size" in accepts and "min_size" in default.meta:
            # A ViT whose default weights are for another resolution (vit_h_14: 518 px) is built for it.
            options["image_size"] = int(default.meta["min_size"][0])
            preprocess = Preprocess(size=options["image_size"], mean=preprocess.mean, std=preprocess.std)
    if num_classes is not None:
        options["num_classes"] = num_classes
    module = builder(weights=None, **options)
    if hasattr(module, "transform") and hasattr(module.transform, "min_size"):
        # Detectors scale their input to min_size themselves (the last entry in eval mode): feed it at that
        # size, so their feature maps line up with the photo (scale 1), in [0, 1] since they normalise inside.
        preprocess = Preprocess(size=int(module.transform.min_size[-1]), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return module, preprocess, classes


def _torchvision_preprocess(transforms: object) -> Preprocess:
    """Input size and normalisation from a weights' transforms: classifiers crop, segmenters resize."""
    size = getattr(transforms, "crop_size", None) or getattr(transforms, "resize_size", None) or [224]
    mean = tuple(getattr(transforms, "mean", IMAGENET_MEAN))
    std = tuple(getattr(transforms, "std", IMAGENET_STD))
    return Preprocess(size=int(size[0]), mean=mean, std=std)


def _timm(name: str, num_classes: int | None) -> tuple[nn.Module, Preprocess, list[str] | None]:
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError:
        raise ModelError("timm is not installed", "pip install timm") from None
    if not timm.is_model(name):
        raise ModelError(f"timm has no model {name!r}", did_you_mean(name, timm.list_models()) or "see timm.list_models()")
    options = {"num_classes": num_classes} if num_classes is not None else {}
    module = timm.create_model(name, pretrained=False, **options)
    config = resolve_data_config({}, model=module)
    size = int(config["input_size"][-1])
    mean, std = tuple(config.get("mean", IMAGENET_MEAN)), tuple(config.get("std", IMAGENET_STD))
    return module, Preprocess(size=size, mean=mean, std=std), None


def _default_classes(module: nn.Module, size: int) -> list[str] | None:
    with torch.no_grad():
        out = module(torch.zeros(1, 3, size, size))
    is_logits = isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] == 1000
    return imagenet_class_names() if is_logits else None


def load_weights(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state dict, or a checkpoint dict holding one (under state_dict, model or model_state_dict)."""
    load_state(module, read_state_dict(path), path)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in a file: saved directly, or inside a checkpoint under state_dict, model or
    model_state_dict; a ``module.`` prefix (DataParallel) is dropped. Never runs pickled code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"weights file {os.fspath(path)} not found", "check --weights") from None
    except Exception as err:  # pickles with code, truncated files: torch raises many types
        raise ModelError(
            f"cannot read weights from {os.fspath(path)} ({type(err).__name__})", "give a state dict saved with torch.save"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"{os.fspath(path)} holds a {type(state).__name__}, not a state dict", "save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_state(module: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """``module.load_state_dict(state)``, with every mismatch a one-line error."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches (another width, another patch size)
        first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err)[:200]
        raise ModelError(f"the weights do not fit the model: {first.strip()}", "give the weights of this architecture") from None
    if result.missing_keys or result.unexpected_keys:
        missing, unexpected = result.missing_keys, result.unexpected_keys
        raise ModelError(
            f"the weights in {os.fspath(path)} do not fit the model: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})",
            "give the weights of this architecture",
        )
