"""Loading a model by name: a zoo model, ``path/to/file.py:function`` or ``package.module:function``."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from torch import nn

from .core.errors import ModelError, OptionError
from .explainer import Explainer
from .models.zoo import MODELS, ZooModel, load_model


def load_explainer(model: str, layers: str | None, device: str) -> Explainer:
    """``--model`` is a zoo name or ``path/to/file.py:function`` / ``package.module:function``.

    The function returns a ZooModel, or an nn.Module (then ``--layers`` is required).
    """
    layer_list = [part.strip() for part in layers.split(",") if part.strip()] if layers else None
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
            return Explainer.from_zoo_model(built, device, layer_list)
        if isinstance(built, nn.Module):
            if not layer_list:
                raise OptionError(
                    "a custom nn.Module needs a layer chain",
                    "pass --layers name1,name2,... (input side first; see `featuretree layers --model ...`)",
                )
            return Explainer(built, layer_list, name=model, device=device)
        raise ModelError(f"{model} returned {type(built).__name__}", "return a torch.nn.Module or featuretree.ZooModel")
    return Explainer.from_zoo_model(load_model(model), device, layer_list)
