"""Loading a model by spec: a zoo model, ``torchvision:NAME``, ``timm:NAME``, ``path/to/file.py:function``
or ``package.module:function``; without ``--layers``, the chain is the model's own or the one
``analysis.discovery.default_chain`` proposes."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
from pathlib import Path

from torch import nn

from .analysis.discovery import default_chain
from .core.errors import ModelError, OptionError
from .core.images import Preprocess
from .explainer import Explainer
from .models.library import is_library_spec, load_library_model
from .models.zoo import MODELS, ZooModel, load_model


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything ``load_explainer`` needs, as plain values: what a worker process (a Ray actor) is sent
    so that it builds the same explainer as the process that started it."""

    model: str
    layers: str | None = None
    device: str = "cpu"
    layouts: tuple[tuple[str, str], ...] = ()
    weights: str | None = None
    random_weights: bool = False
    allow_bypass: bool = False
    input_size: int | None = None
    resize: str | None = None

    @classmethod
    def from_args(cls, args) -> ModelSpec:
        """From parsed CLI model arguments (--model, --layers, --device, --layout, --weights, ...)."""
        options = model_options(args)
        return cls(
            model=args.model,
            layers=args.layers,
            device=args.device,
            layouts=tuple(sorted(options["layouts"].items())),
            weights=options["weights"],
            random_weights=options["random_weights"],
            allow_bypass=options["allow_bypass"],
            input_size=getattr(args, "input_size", None),
            resize=getattr(args, "resize", None),
        )

    def load(self) -> Explainer:
        explainer = load_explainer(
            self.model,
            self.layers,
            self.device,
            dict(self.layouts),
            self.weights,
            self.random_weights,
            self.allow_bypass,
            self.input_size,
        )
        if self.resize:
            explainer.preprocess = dataclasses.replace(explainer.preprocess, resize=self.resize)
        return explainer

    def load_matching(self, identity: dict | None) -> Explainer:
        """``load()``, refused in one line unless the result has ``identity`` (the starting process's
        ``explainer_identity``): a worker elsewhere may see another file at a path, or the starting
        process may have changed its explainer after loading it."""
        explainer = self.load()
        if identity is not None and explainer_identity(explainer) != identity:
            raise ModelError(
                f"a worker's {self.model} differs from the starting process's (weights, chain or preprocessing)",
                "give every worker the same model code and --weights file, and pass the spec the explainer was loaded from",
            )
        return explainer


def explainer_identity(explainer: Explainer) -> dict:
    """What must agree between processes that share work, and between a database and the model that reads it:
    the chain, the preprocessing and the weights, in the form JSON stores them (tuples become lists)."""
    identity = {"layers": list(explainer.layers), "preprocess": explainer.preprocess.to_dict(), "weights": explainer.weights_fingerprint()}
    return json.loads(json.dumps(identity))


def model_options(args) -> dict:
    """``load_explainer``'s keyword options from parsed CLI model arguments (--layout, --weights, --random-weights)."""
    layouts = {}
    for item in getattr(args, "layout", None) or []:
        layer, sep, kind = item.partition("=")
        if not sep or not layer.strip() or not kind.strip():
            raise OptionError(f"bad --layout {item!r}", "write --layout LAYER=KIND, e.g. --layout blocks.3=tokens")
        layouts[layer.strip()] = kind.strip()
    return {
        "layouts": layouts,
        "weights": getattr(args, "weights", None),
        "random_weights": getattr(args, "random_weights", False),
        "allow_bypass": getattr(args, "allow_bypass", False),
    }


def load_explainer(
    model: str,
    layers: str | None,
    device: str,
    layouts: dict[str, str] | None = None,
    weights: str | None = None,
    random_weights: bool = False,
    allow_bypass: bool = False,
    input_size: int | None = None,
) -> Explainer:
    """``--model`` is a zoo name, ``torchvision:NAME`` / ``timm:NAME`` (with ``weights`` or
    ``random_weights``), or ``path/to/file.py:function`` / ``package.module:function`` returning a
    ZooModel or an nn.Module. Without ``layers``, the model's own chain or a proposed one is used.
    ``allow_bypass`` accepts a chain that does not cut the network (a warning instead of an error);
    ``input_size`` replaces the model's input size (and is the size a chain is proposed at).
    """
    explainer = _load(model, layers, device, layouts, weights, random_weights, allow_bypass, input_size)
    if input_size is not None:
        explainer.preprocess = dataclasses.replace(explainer.preprocess, size=input_size)
    return explainer


def _load(model, layers, device, layouts, weights, random_weights, allow_bypass, input_size) -> Explainer:
    layer_list = [part.strip() for part in layers.split(",") if part.strip()] if layers else None
    options = {"layouts": layouts or None, "allow_bypass": allow_bypass}
    if (weights is not None or random_weights) and not is_library_spec(model):
        raise OptionError(
            "--weights and --random-weights apply to torchvision:NAME and timm:NAME models", "drop them, or name such a model"
        )
    if is_library_spec(model):
        zoo = load_library_model(model, weights, random_weights)
        zoo.default_layers = layer_list or default_chain(zoo.module, input_size or zoo.preprocess.size)
        return Explainer.from_zoo_model(zoo, device, **options)
    if ":" in model and model not in MODELS:
        source, _, func_name = model.rpartition(":")
        if source.endswith(".py"):
            path = Path(source)
            if not path.is_file():
                raise ModelError(f"model file {path} not found", "give --model path/to/file.py:function")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            try:
                module = importlib.import_module(source)
            except ImportError as err:
                raise ModelError(f"cannot import {source!r} ({err})", "give --model package.module:function") from None
        factory = getattr(module, func_name, None)
        if factory is None:
            raise ModelError(f"{source} has no function {func_name!r}", "name a function that returns the model")
        built = factory()
        if isinstance(built, ZooModel):
            explainer = Explainer.from_zoo_model(built, device, layer_list, **options)
            explainer.name = model  # the spec: what an exemplar database records and is matched against
            return explainer
        if isinstance(built, nn.Module):
            size = input_size or 224
            return Explainer(
                built, layer_list or default_chain(built, size), name=model, device=device, preprocess=Preprocess(size=size), **options
            )
        raise ModelError(f"{model} returned {type(built).__name__}", "return a torch.nn.Module or featuretree.ZooModel")
    return Explainer.from_zoo_model(load_model(model), device, layer_list, **options)
