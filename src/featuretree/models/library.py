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
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        module, preprocess, classes = _torchvision(name) if library == "torchvision" else _timm(name)
        if weights is None:
            _redraw_zero_matrices(module)
    if weights is not None:
        load_weights(module, weights)
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


def _torchvision(name: str) -> tuple[nn.Module, Preprocess, list[str] | None]:
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
        transforms = default.transforms()
        preprocess = Preprocess(size=int(transforms.crop_size[0]), mean=tuple(transforms.mean), std=tuple(transforms.std))
        classes = list(default.meta.get("categories") or []) or None
        if "image_size" in accepts and "min_size" in default.meta:
            # A ViT whose default weights are for another resolution (vit_h_14: 518 px) is built for it.
            options["image_size"] = int(default.meta["min_size"][0])
            preprocess = Preprocess(size=options["image_size"], mean=preprocess.mean, std=preprocess.std)
    except (ValueError, AttributeError, KeyError, TypeError):
        pass
    module = builder(weights=None, **options)
    return module, preprocess, classes


def _timm(name: str) -> tuple[nn.Module, Preprocess, list[str] | None]:
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError:
        raise ModelError("timm is not installed", "pip install timm") from None
    if not timm.is_model(name):
        raise ModelError(f"timm has no model {name!r}", did_you_mean(name, timm.list_models()) or "see timm.list_models()")
    module = timm.create_model(name, pretrained=False)
    config = resolve_data_config({}, model=module)
    size = int(config["input_size"][-1])
    mean, std = tuple(config.get("mean", IMAGENET_MEAN)), tuple(config.get("std", IMAGENET_STD))
    return module, Preprocess(size=size, mean=mean, std=std), None


def _default_classes(module: nn.Module, size: int) -> list[str] | None:
    with torch.no_grad():
        out = module(torch.zeros(1, 3, size, size))
    return imagenet_class_names() if out.dim() == 2 and out.shape[1] == 1000 else None


def load_weights(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state dict, or a checkpoint dict holding one (under state_dict, model or model_state_dict)."""
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
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches (another class count, another width)
        first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err)[:200]
        raise ModelError(f"the weights do not fit the model: {first.strip()}", "give the weights of this architecture") from None
    if result.missing_keys or result.unexpected_keys:
        missing, unexpected = result.missing_keys, result.unexpected_keys
        raise ModelError(
            f"the weights do not fit the model: {len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})",
            "give the weights of this architecture",
        )
