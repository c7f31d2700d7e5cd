"""One image through one model: a single forward pass, then backward queries on demand.

Vocabulary
- chain: ordered layer names, input side first; the last is usually the logits.
- unit: (layer, channel). A path is a tuple of units from the root down.
- delta(path): the gradient of the root objective at the path's last layer, where the
  flow was masked at every node on the path to that node's channel (see gradients.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..capture.cuts import Bypass, find_bypasses
from ..capture.forward import ForwardRecord, capture_forward, guided_problem, producer_layout
from ..core.cache import ByteLRU
from ..core.errors import GuidedUndefinedError, ImageInputError, LayerError, UnitError, check_choice, did_you_mean
from ..core.images import PreparedImage
from ..core.layouts import layout_for
from ..core.units import ClassScore, LayerInfo, Path, Unit
from .chain_model import ChainModel
from .gradients import PathGradients
from .roots import resolve_root, unit_label

SEED_MODES: tuple[str, ...] = ("sum", "max")


class ImageAnalysis:
    """The forward record of one image, its chain, roots and paths, and the backward passes on it.

    Path-conditioned gradients are memoised (LRU bounded by bytes), so expanding a child costs
    one backward step from its parent's layer. Safe to share between threads: every backward
    pass holds the lock of this forward pass's BackwardRule.
    """

    def __init__(self, explainer: ChainModel, image: PreparedImage, enforce_cuts: bool = True) -> None:
        self.explainer = explainer
        self.image = image
        x = image.tensor.to(explainer.device)
        if explainer.uses_channels_last():
            x = x.contiguous(memory_format=torch.channels_last)
        if x.shape[-2:] != (explainer.preprocess.size, explainer.preprocess.size) and image.source != "<tensor>":
            raise ImageInputError("prepared image has the wrong size", "report this as a bug")
        with explainer.forward_lock:
            self.record: ForwardRecord = capture_forward(explainer.model, x, explainer.layers)
        self.layers = explainer.layers
        # Neighbouring chain layers that the network does not cut (refused unless the explainer allows them).
        self.bypasses: list[Bypass] = find_bypasses(self.record, self.layers, explainer.module_names)
        if enforce_cuts:
            explainer.accept_bypasses(self.bypasses)
        self._index = {name: i for i, name in enumerate(self.layers)}
        input_hw = (int(x.shape[-2]), int(x.shape[-1]))
        self.chain = []
        for name in self.layers:
            act = self.record.activations[name]
            shape = tuple(act.shape[1:])
            layout = layout_for(name, shape, input_hw, producer_layout(act), explainer.layouts.get(name))
            self.chain.append(LayerInfo(name, self.record.module_types[name], shape, layout))
        output = self.record.output
        # A [1, classes] output has classes; any other (a segmenter's maps, a tuple, ...) has none: roots
        # are then units of chain layers, and class roots are refused saying why.
        self.has_classes = output is not None and output.dim() == 2 and output.shape[0] == 1
        self.logits = output.detach()[0].float().cpu() if self.has_classes else torch.zeros(0)
        self.probabilities = self.logits.softmax(0)
        # Gradients, scores and per-analysis receptive fields, bounded by bytes.
        self.memo: ByteLRU[torch.Tensor] = ByteLRU(explainer.cache_bytes)
        self.gradients = PathGradients(self)

    # ----- layers, classes, roots and paths --------------------------------
    @property
    def logits_layer(self) -> str | None:
        """The chain layer that is the model output (if the chain ends at the logits)."""
        last = self.layers[-1]
        act = self.record.activations[last]
        if (
            self.has_classes
            and act.dim() == 2
            and act.shape == self.record.output.shape
            and torch.equal(act.detach(), self.record.output.detach())
        ):
            return last
        return None

    def class_name(self, index: int) -> str:
        names = self.explainer.class_names
        return names[index] if names is not None and 0 <= index < len(names) else f"class {index}"

    def top_classes(self, n: int = 5) -> list[ClassScore]:
        if not self.has_classes:
            return []
        n = max(1, min(n, self.logits.numel()))
        probs, idx = self.probabilities.topk(n)
        return [ClassScore(int(i), self.class_name(int(i)), float(p), float(self.logits[i])) for p, i in zip(probs, idx)]

    def layer_info(self, name: str) -> LayerInfo:
        if name not in self._index:
            hint = did_you_mean(name, self.layers)
            raise LayerError(
                f"layer {name!r} is not in the chain ({', '.join(self.layers)})",
                hint or "add it with --layers (input side first)",
            )
        return self.chain[self._index[name]]

    def layer_below(self, unit: Unit) -> str:
        """The chain layer one step below ``unit``'s; a clear error for the first layer."""
        index = self._index[unit.layer]
        if index == 0:
            raise UnitError(f"{unit} is in the first chain layer; there is no layer below it", "expand a deeper node")
        return self.layers[index - 1]

    def resolve_root(self, root: str | Unit | None = None) -> Unit:
        """``None`` -> the top class logit; ``class:N`` / ``class:NAME``; ``LAYER:CHANNEL``; or a Unit."""
        return resolve_root(self, root)

    def unit_label(self, unit: Unit) -> str | None:
        """A logits unit's class name ("Egyptian cat − tabby" for a contrastive root); None elsewhere."""
        return unit_label(self, unit)

    def validate_path(self, path: Sequence[Unit]) -> Path:
        """Check that each unit sits one chain layer below its parent and is in range."""
        path = tuple(path)
        if not path:
            raise UnitError("empty path", "give at least the root unit")
        self.resolve_root(path[0])
        for parent, child in zip(path, path[1:]):
            if child.contrast is not None:
                raise UnitError(f"{child} is a contrast; only a root can be one", "give the units below the root as LAYER:CHANNEL")
            expected = self._index[parent.layer] - 1
            if expected < 0 or child.layer not in self._index or self._index[child.layer] != expected:
                below = self.layers[expected] if expected >= 0 else "nothing (first layer)"
                raise UnitError(
                    f"{child} cannot follow {parent}: the layer below {parent.layer!r} is {below}",
                    "each step of a path goes one chain layer down",
                )
            info = self.chain[expected]
            if not 0 <= child.channel < info.channels:
                raise UnitError(f"unit {child} is out of range", f"layer {child.layer!r} has channels 0..{info.channels - 1}")
        return path

    # ----- activations and backward passes ---------------------------------
    def activation(self, layer: str) -> torch.Tensor:
        return self.record.activations[layer].detach()

    def seed(self, unit: Unit, seed_mode: str = "sum") -> torch.Tensor:
        """Gradient that defines the root objective: sum of the unit's map, or its max position."""
        check_choice(seed_mode, SEED_MODES, "seed mode")
        act = self.activation(unit.layer)
        layout = self.layer_info(unit.layer).layout
        seeds = [layout.keep_channel(torch.ones_like(act), c) if seed_mode == "sum" else layout.max_seed(act, c) for c in unit.channels]
        # A contrastive root's objective is the first unit's minus the second's: so is its seed.
        return seeds[0] if len(seeds) == 1 else seeds[0] - seeds[1]

    def unit_values(self, unit: Unit) -> torch.Tensor:
        """The unit's values at every position (for a contrast, the first channel's minus the second's)."""
        layout = self.layer_info(unit.layer).layout
        act = self.activation(unit.layer)
        return sum(sign * layout.unit_values(act, c) for c, sign in zip(unit.channels, unit.signs))

    @property
    def guided_problem(self) -> str | None:
        """Why guided backprop has no meaning for this model (None where it has one)."""
        return guided_problem(self.record)

    def check_backward(self, mode: str) -> None:
        """Refuse the guided backward where it is undefined, rather than mixing rules silently."""
        if mode == "guided" and self.guided_problem:
            raise GuidedUndefinedError(
                self.guided_problem, "use the gradient rule (the default), integrated or ablation, and the heatmap view"
            )

    def backward(self, upper: str, lower: str | None, grad_output: torch.Tensor, mode: str) -> torch.Tensor:
        """Vector-Jacobian product from layer ``upper`` down to ``lower`` (None = the input)."""
        self.check_backward(mode)
        target = self.record.input if lower is None else self.record.activations[lower]
        with self.record.rule.use(mode):
            (grad,) = torch.autograd.grad(self.record.activations[upper], target, grad_output, retain_graph=True, allow_unused=True)
        return torch.zeros_like(target) if grad is None else grad.detach()

    def backward_many(self, upper: str, lower: str | None, grad_outputs: list[torch.Tensor], mode: str) -> list[torch.Tensor]:
        """One vector-Jacobian product per grad_output through the shared graph.

        Batched into one ``autograd.grad(is_grads_batched=True)`` call when the explainer batches
        (default on accelerators); a loop otherwise, which is faster on CPU (benchmarks/bench_speed.py).
        """
        self.check_backward(mode)
        if len(grad_outputs) > 1 and self.explainer.batch_backward:
            target = self.record.input if lower is None else self.record.activations[lower]
            with self.record.rule.use(mode):
                (grads,) = torch.autograd.grad(
                    self.record.activations[upper],
                    target,
                    torch.stack(grad_outputs),
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
            if grads is None:
                return [torch.zeros_like(target) for _ in grad_outputs]
            return list(grads.detach())
        return [self.backward(upper, lower, g, mode) for g in grad_outputs]

    # ----- path-conditioned gradients (see gradients.py) --------------------
    def delta(self, path: Sequence[Unit], backward: str = "gradient", seed_mode: str = "sum") -> torch.Tensor:
        return self.gradients.delta(tuple(path), backward, seed_mode)

    def layer_gradient(self, path: Sequence[Unit], backward: str = "gradient", seed_mode: str = "sum") -> torch.Tensor:
        return self.gradients.layer_gradient(tuple(path), backward, seed_mode)

    def prefetch_layer_gradients(self, paths: Sequence[Sequence[Unit]], backward: str = "gradient", seed_mode: str = "sum") -> None:
        self.gradients.prefetch(paths, backward, seed_mode)

    def input_gradient(self, path: Sequence[Unit], backward: str = "gradient", seed_mode: str = "sum") -> torch.Tensor:
        return self.gradients.input_gradient(tuple(path), backward, seed_mode)
