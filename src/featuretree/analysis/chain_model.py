"""A model plus the ordered layer chain whose units make up a tree."""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..capture.cuts import Bypass, ChainCutError
from ..capture.forward import resolve_modules
from ..core.cache import ByteLRU
from ..core.errors import BypassWarning, LayerError, OptionError
from ..core.images import Preprocess
from ..core.layouts import check_overrides
from ..models.zoo import ZooModel, load_model

DEFAULT_CACHE_BYTES = 512 * 2**20
RECEPTIVE_FIELD_CACHE_BYTES = 8 * 2**20  # counted as 256 bytes a box: ~32k boxes


class ChainModel:
    """A model, its chain of layers (input side first), its preprocessing and class names.

    Holds what every analysis of this model shares: the device, the forward lock and the
    receptive-field boxes of models whose linearised backward does not depend on the image.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        *,
        preprocess: Preprocess | None = None,
        class_names: Sequence[str] | None = None,
        name: str = "custom",
        device: str | torch.device = "cpu",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        batch_backward: bool | None = None,
        layouts: Mapping[str, str] | None = None,
        allow_bypass: bool = False,
    ) -> None:
        if isinstance(layers, str):
            layers = [part for part in layers.split(",") if part]
        layers = list(layers)
        if not layers:
            raise LayerError("the layer chain is empty", "give at least one layer name")
        duplicated = sorted({n for n in layers if layers.count(n) > 1})
        if duplicated:
            raise LayerError(f"layer {duplicated[0]!r} appears twice in the chain", "list each layer once")
        resolve_modules(model, layers)
        # Per-layer layout overrides (``--layout NAME=KIND``) for shapes detection cannot settle.
        self.layouts = dict(layouts or {})
        check_overrides(self.layouts, layers)
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.layers = layers
        self.preprocess = preprocess or Preprocess()
        self.class_names = list(class_names) if class_names is not None else None
        self.name = name
        self.cache_bytes = cache_bytes
        # Batched (vmapped) backward passes pay off on accelerators; on CPU a plain loop is faster.
        self.batch_backward = self.device.type != "cpu" if batch_backward is None else batch_backward
        # Receptive-field boxes of models whose linearised backward is image-independent, shared by
        # every analysis of this model (see ForwardRecord.fixed_linearisation).
        self.receptive_fields: ByteLRU[tuple[int, int, int, int]] = ByteLRU(RECEPTIVE_FIELD_CACHE_BYTES)
        # Capture and ablation hooks sit on the shared modules during a forward pass: one forward
        # at a time. Re-entrant, so code holding it may call helpers that take it again.
        self.forward_lock = threading.RLock()
        # A chain that does not cut the network is refused unless allowed; then each expansion
        # reports the share of its parent's evidence that goes around the child layer.
        self.allow_bypass = allow_bypass
        self.module_names = [name for name, _ in model.named_modules() if name]
        self._bypasses_warned: set[tuple[str, str]] = set()

    def accept_bypasses(self, bypasses: Sequence[Bypass]) -> None:
        """Refuse a chain that does not cut the network, or (``allow_bypass``) warn once per layer pair."""
        if not bypasses:
            return
        if not self.allow_bypass:
            raise ChainCutError(bypasses[0])
        for bypass in bypasses:
            if (bypass.layer, bypass.below) not in self._bypasses_warned:
                self._bypasses_warned.add((bypass.layer, bypass.below))
                warnings.warn(
                    BypassWarning(f"{bypass.problem}; each expansion of {bypass.layer!r} reports the share that goes around it"),
                    stacklevel=2,
                )

    @classmethod
    def from_zoo(cls, name: str = "efficientnet_lite0", device: str = "cpu", layers: Sequence[str] | None = None, **kw):
        return cls.from_zoo_model(load_model(name), device, layers, **kw)

    @classmethod
    def from_zoo_model(cls, zoo: ZooModel, device: str = "cpu", layers: Sequence[str] | None = None, **kw):
        """A built ZooModel (module, preprocessing, class names, default chain) with an optional other chain."""
        return cls(
            zoo.module,
            layers or zoo.default_layers,
            preprocess=zoo.preprocess,
            class_names=zoo.class_names,
            name=zoo.name,
            device=device,
            **kw,
        )

    def weights_version(self) -> int:
        """Changes whenever a parameter or buffer is modified in place or replaced."""
        tensors = (*self.model.parameters(), *self.model.buffers())
        return hash(tuple((id(t), t._version) for t in tensors))

    def weights_fingerprint(self) -> str:
        """SHA-256 of every parameter and buffer (names, dtypes, shapes, bytes): which weights these are,
        however they were loaded. Kept until a weight changes."""
        version = self.weights_version()
        cached = getattr(self, "_fingerprint", None)
        if cached is not None and cached[0] == version:
            return cached[1]
        digest = hashlib.sha256()
        for name, tensor in (*self.model.named_parameters(), *self.model.named_buffers()):
            data = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes())
        self._fingerprint = (version, digest.hexdigest())
        return self._fingerprint[1]

    def uses_channels_last(self) -> bool:
        weight = next((p for p in self.model.parameters() if p.dim() == 4), None)
        return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(f"unknown device {device!r}", "use cpu, cuda, cuda:0 or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda was asked for but no CUDA GPU is available", "use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError("--device mps was asked for but MPS is not available", "use --device cpu")
    return dev
