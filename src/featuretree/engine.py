"""The explanation engine: units, path-conditioned gradients, child scores and node evidence.

Vocabulary
- chain: ordered layer names, input side first; the last is usually the logits.
- unit: (layer, channel). A path is a tuple of units from the root down.
- delta(path): the gradient of the root objective at the path's last layer, where the
  flow was masked at every node on the path to that node's channel. A child c of node N
  scores s_c = sum_{h,w} a_c * g_c with g = d(delta(path) . a_N) / d a_child.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .cache import ByteLRU
from .capture import ForwardRecord, capture_forward, resolve_modules
from .errors import ImageInputError, LayerError, ModelError, OptionError, UnitError, did_you_mean
from .images import DEFAULT_MAX_PIXELS, PreparedImage, Preprocess, prepare_image

if TYPE_CHECKING:
    from .tree import FeatureTree

RULES: tuple[str, ...] = ("gradient", "guided", "integrated", "ablation")
# Rules that only change how children are scored (featuretree.attribution); path conditioning and
# pictures use the true gradient for them.
SCORING_RULES: dict[str, str] = {"integrated": "gradient", "ablation": "gradient"}
SEED_MODES: tuple[str, ...] = ("sum", "max")
DEFAULT_CACHE_BYTES = 512 * 2**20
RECEPTIVE_FIELD_CACHE_BYTES = 8 * 2**20  # counted as 256 bytes a box: ~32k boxes
EVIDENCE_KINDS: tuple[str, ...] = ("guided", "heat", "box")


_INTEGER = re.compile(r"-?[0-9]+")  # str.isdigit() also accepts "²", which int() refuses


@dataclass(frozen=True, order=True)
class Unit:
    layer: str
    channel: int

    def __str__(self) -> str:
        return f"{self.layer}:{self.channel}"

    @classmethod
    def parse(cls, text: str) -> Unit:
        layer, sep, channel = text.rpartition(":")
        if not sep or not layer or not _INTEGER.fullmatch(channel.strip()):
            raise UnitError(f"cannot read unit {text!r}", "write it as LAYER:CHANNEL, e.g. _blocks.15:7")
        return cls(layer, int(channel))


Path = tuple[Unit, ...]


def path_id(path: Sequence[Unit]) -> str:
    return "/".join(str(u) for u in path)


def parse_path(text: str) -> Path:
    if not text:
        raise UnitError("empty path", "give at least the root unit, LAYER:CHANNEL")
    return tuple(Unit.parse(part) for part in text.split("/"))


@dataclass(frozen=True)
class LayerInfo:
    name: str
    type: str
    shape: tuple[int, ...]  # without the batch dimension

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 3


@dataclass(frozen=True)
class ClassScore:
    index: int
    name: str
    probability: float
    logit: float


@dataclass(frozen=True)
class ScoredUnit:
    unit: Unit
    score: float  # signed first-order contribution to the root objective through the path
    share: float  # score / parent's total positive contribution


@dataclass(frozen=True)
class Expansion:
    path: Path
    child_layer: str | None
    children: tuple[ScoredUnit, ...]
    negatives: tuple[ScoredUnit, ...]
    total_positive: float
    total_negative: float
    coverage: float  # share of total_positive covered by the shown children
    leaf_reason: str | None = None

    @property
    def rest(self) -> dict[str, float] | None:
        """What the shown children leave out: share and score of the positive total, and the negative total."""
        if self.child_layer is None:
            return None
        shown = sum(c.score for c in self.children)
        return {"share": max(0.0, 1.0 - self.coverage), "score": self.total_positive - shown, "negative": self.total_negative}


@dataclass(frozen=True)
class NodeEvidence:
    """Input-space evidence for one node; arrays are float32 numpy, HxW or 3xHxW."""

    guided: np.ndarray | None  # path-conditioned guided backprop at the input, pixel units
    heat: np.ndarray | None  # gradient x input summed over colour channels (scoring rule)
    location: tuple[int, int] | None  # (row, col) of strongest evidence in the node's own map
    box: tuple[int, int, int, int] | None  # (left, top, right, bottom) in input pixels
    path_gain: float  # product of the original's auto_1 multipliers along the path
    activation_sum: float
    activation_max: float


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise OptionError(f"unknown {what} {value!r}", f"use one of {', '.join(choices)}")


class Explainer:
    """A model plus the ordered layer chain whose units make up the tree."""

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
        # every analysis of this explainer (see ForwardRecord.fixed_linearisation).
        self.receptive_fields: ByteLRU[tuple[int, int, int, int]] = ByteLRU(RECEPTIVE_FIELD_CACHE_BYTES)
        # Capture and ablation hooks sit on the shared modules during a forward pass: one forward
        # at a time. Re-entrant, so code holding it may call helpers that take it again.
        self.forward_lock = threading.RLock()

    @classmethod
    def from_zoo(cls, name: str = "efficientnet_lite0", device: str = "cpu", layers: Sequence[str] | None = None, **kw) -> Explainer:
        from .zoo import load_model

        zoo = load_model(name)
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

    def analyze(self, image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Analysis:
        """Prepare ``image`` and run the single forward pass every later query reuses."""
        prepared = prepare_image(image, self.preprocess, max_pixels)
        return Analysis(self, prepared)

    def explain(self, image, **options) -> FeatureTree:
        """Build a tree for ``image``; options as in ``Analysis.tree``."""
        return self.analyze(image).tree(**options)


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


def central_interval(marginal: torch.Tensor, mass: float = 0.9) -> tuple[int, int]:
    """[lo, hi) indices holding the central ``mass`` of a non-negative 1-D distribution."""
    cdf = marginal.cumsum(0) / marginal.sum()
    tail = (1.0 - mass) / 2
    lo = int(torch.searchsorted(cdf, torch.tensor(tail, dtype=cdf.dtype)))
    hi = int(torch.searchsorted(cdf, torch.tensor(1.0 - tail, dtype=cdf.dtype)))
    return lo, min(hi + 1, marginal.numel())


def _uses_channels_last(model: nn.Module) -> bool:
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


class Analysis:
    """One image through one model: a single forward pass, then backward queries on demand.

    Path-conditioned gradients are memoised (LRU bounded by bytes), so expanding a child
    costs one backward step from its parent's layer. Safe to share between threads: every
    backward pass holds the lock of this forward pass's BackwardRule.
    """

    def __init__(self, explainer: Explainer, image: PreparedImage) -> None:
        self.explainer = explainer
        self.image = image
        x = image.tensor.to(explainer.device)
        if _uses_channels_last(explainer.model):
            x = x.contiguous(memory_format=torch.channels_last)
        if x.shape[-2:] != (explainer.preprocess.size, explainer.preprocess.size) and image.source != "<tensor>":
            raise ImageInputError("prepared image has the wrong size", "report this as a bug")
        with explainer.forward_lock:
            self.record: ForwardRecord = capture_forward(explainer.model, x, explainer.layers)
        self.layers = explainer.layers
        self._index = {name: i for i, name in enumerate(self.layers)}
        self.chain = [
            LayerInfo(name, self.record.module_types[name], tuple(self.record.activations[name].shape[1:])) for name in self.layers
        ]
        logits = self.record.output.detach()
        if logits.dim() != 2 or logits.shape[0] != 1:
            raise ModelError(
                f"the model output has shape {list(logits.shape)}; expected [1, classes]",
                "wrap the model so forward() returns class logits",
            )
        self.logits = logits[0].float().cpu()
        self.probabilities = self.logits.softmax(0)
        self._memo: ByteLRU[torch.Tensor] = ByteLRU(explainer.cache_bytes)

    # ----- units and roots -------------------------------------------------
    @property
    def logits_layer(self) -> str | None:
        """The chain layer that is the model output (if the chain ends at the logits)."""
        last = self.layers[-1]
        act = self.record.activations[last]
        if act.dim() == 2 and act.shape == self.record.output.shape and torch.equal(act.detach(), self.record.output.detach()):
            return last
        return None

    def class_name(self, index: int) -> str:
        names = self.explainer.class_names
        return names[index] if names is not None and 0 <= index < len(names) else f"class {index}"

    def top_classes(self, n: int = 5) -> list[ClassScore]:
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

    def resolve_root(self, root: str | Unit | None = None) -> Unit:
        """``None`` -> the top class logit; ``class:N`` / ``class:NAME``; ``LAYER:CHANNEL``; or a Unit."""
        if root is None or root == "":
            layer = self.logits_layer
            if layer is None:
                # Without a logits layer in the chain, default to the strongest unit of the top layer.
                top = self.layers[-1]
                act = self.record.activations[top].detach()[0]
                strength = act.flatten(1).amax(1) if act.dim() == 3 else act
                return Unit(top, int(strength.argmax()))
            return Unit(layer, int(self.logits.argmax()))
        if isinstance(root, Unit):
            unit = root
        elif root.startswith("class:"):
            unit = self._class_unit(root[len("class:") :].strip())
        else:
            unit = Unit.parse(root)
        info = self.layer_info(unit.layer)
        if not 0 <= unit.channel < info.channels:
            raise UnitError(
                f"unit {unit.channel} is out of range for layer {unit.layer!r}",
                f"it has channels 0..{info.channels - 1}",
            )
        return unit

    def _class_unit(self, text: str) -> Unit:
        layer = self.logits_layer
        if layer is None:
            raise UnitError(
                "class roots need the logits layer at the top of the chain",
                "end --layers with the model's output layer, or give the root as LAYER:CHANNEL",
            )
        n = self.logits.numel()
        if _INTEGER.fullmatch(text):
            index = int(text)
            if not 0 <= index < n:
                raise UnitError(f"class {index} is out of range", f"the model has classes 0..{n - 1}")
            return Unit(layer, index)
        names = [s.lower() for s in (self.explainer.class_names or [])]
        if text.lower() in names:
            return Unit(layer, names.index(text.lower()))
        hint = did_you_mean(text, list(self.explainer.class_names or []))
        raise UnitError(f"unknown class {text!r}", hint or "give the class index, e.g. class:285")

    def validate_path(self, path: Sequence[Unit]) -> Path:
        """Check that each unit sits one chain layer below its parent and is in range."""
        path = tuple(path)
        if not path:
            raise UnitError("empty path", "give at least the root unit")
        self.resolve_root(path[0])
        for parent, child in zip(path, path[1:]):
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

    # ----- gradients -------------------------------------------------------
    def activation(self, layer: str) -> torch.Tensor:
        return self.record.activations[layer].detach()

    def seed(self, unit: Unit, seed_mode: str = "sum") -> torch.Tensor:
        """Gradient that defines the root objective: sum of the unit's map, or its max pixel."""
        _check_choice(seed_mode, SEED_MODES, "seed mode")
        act = self.activation(unit.layer)
        seed = torch.zeros_like(act)
        if act.dim() == 2 or seed_mode == "sum":
            seed[0, unit.channel] = 1.0
        else:
            fmap = act[0, unit.channel]
            flat = int(fmap.argmax())
            seed[0, unit.channel].view(-1)[flat] = 1.0
        return seed

    def _backward(self, upper: str, lower: str | None, grad_output: torch.Tensor, rule: str) -> torch.Tensor:
        """Vector-Jacobian product from layer ``upper`` down to ``lower`` (None = the input)."""
        target = self.record.input if lower is None else self.record.activations[lower]
        with self.record.rule.use(rule):
            (grad,) = torch.autograd.grad(self.record.activations[upper], target, grad_output, retain_graph=True, allow_unused=True)
        return torch.zeros_like(target) if grad is None else grad.detach()

    def delta(self, path: Sequence[Unit], rule: str = "gradient", seed_mode: str = "sum") -> torch.Tensor:
        """Path-conditioned gradient at the last unit's layer, masked to its channel."""
        _check_choice(rule, RULES, "rule")
        path = tuple(path)
        if len(path) == 1:
            return self.seed(path[0], seed_mode)
        below = self.layer_gradient(path[:-1], rule, seed_mode)
        masked = torch.zeros_like(below)
        masked[:, path[-1].channel] = below[:, path[-1].channel]
        return masked

    def layer_gradient(self, path: Sequence[Unit], rule: str = "gradient", seed_mode: str = "sum") -> torch.Tensor:
        """Gradient at the chain layer below the path's last unit (memoised)."""
        rule = SCORING_RULES.get(rule, rule)
        path = tuple(path)
        key = ("layer", rule, seed_mode, path)
        cached = self._memo.get(key)
        if cached is not None:
            return cached
        index = self._index[path[-1].layer]
        if index == 0:
            raise UnitError(f"{path[-1]} is in the first chain layer; there is no layer below it", "expand a deeper node")
        grad = self._backward(path[-1].layer, self.layers[index - 1], self.delta(path, rule, seed_mode), rule)
        self._memo.put(key, grad)
        return grad

    def prefetch_layer_gradients(self, paths: Sequence[Sequence[Unit]], rule: str = "gradient", seed_mode: str = "sum") -> None:
        """Fill the memo for many nodes' expansions at once: nodes of one layer (siblings, a tree
        level) share one batched backward pass when the explainer batches."""
        rule = SCORING_RULES.get(rule, rule)
        groups: dict[str, list[Path]] = {}
        for path in paths:
            path = tuple(path)
            index = self._index[path[-1].layer]
            if index > 0 and self._memo.get(("layer", rule, seed_mode, path)) is None:
                groups.setdefault(path[-1].layer, []).append(path)
        for layer, members in groups.items():
            lower = self.layers[self._index[layer] - 1]
            grads = self._backward_many(layer, lower, [self.delta(p, rule, seed_mode) for p in members], rule)
            for path, grad in zip(members, grads):
                self._memo.put(("layer", rule, seed_mode, path), grad)

    def contributions(self, path: Sequence[Unit], rule: str = "gradient", seed_mode: str = "sum") -> torch.Tensor:
        """Per-channel gradient x activation of the layer below the path's end, shape [C] float64."""
        path = self.validate_path(path)
        index = self._index[path[-1].layer]
        if index == 0:
            raise UnitError(f"{path[-1]} is in the first chain layer; there is no layer below it", "expand a deeper node")
        if rule in SCORING_RULES:
            from .attribution import child_scores

            return child_scores(self, path, rule, seed_mode)
        act = self.activation(self.layers[index - 1])
        grad = self.layer_gradient(path, rule, seed_mode)
        prod = (act.double() * grad.double())[0]
        return prod.flatten(1).sum(1) if prod.dim() == 3 else prod

    def expand(
        self,
        path: Sequence[Unit],
        k: int = 5,
        rule: str = "gradient",
        seed_mode: str = "sum",
        negatives: int = 0,
    ) -> Expansion:
        """Rank the units of the layer below ``path[-1]`` by their contribution through the path."""
        if k < 1:
            raise OptionError(f"k must be at least 1, got {k}", "use --k 1 or more")
        _check_choice(rule, RULES, "rule")
        path = self.validate_path(path)
        index = self._index[path[-1].layer]
        if index == 0:
            return Expansion(path, None, (), (), 0.0, 0.0, 0.0, "first layer of the chain: nothing below to expand")
        scores = self.contributions(path, rule, seed_mode).cpu()
        if not torch.isfinite(scores).all():
            raise ModelError(
                f"the scores below {path_id(path)} are not finite (NaN or inf in the model's activations or gradients)",
                "check the model and input for overflow, e.g. run it in float32 or float64",
            )
        positive = scores.clamp(min=0)
        total_pos = float(positive.sum())
        total_neg = float(scores.clamp(max=0).sum())
        child_layer = self.layers[index - 1]

        def pick(values: torch.Tensor, count: int, sign: float) -> tuple[ScoredUnit, ...]:
            count = min(count, values.numel())
            if count <= 0:
                return ()
            top_vals, top_idx = (sign * values).topk(count)
            picked = []
            for v, i in zip(top_vals.tolist(), top_idx.tolist()):
                if v <= 0 or not math.isfinite(v):  # zero or non-finite scores are never children
                    break
                denom = total_pos if sign > 0 else -total_neg
                picked.append(ScoredUnit(Unit(child_layer, int(i)), sign * v, (sign * v) / denom if denom else 0.0))
            return tuple(picked)

        children = pick(scores, k, 1.0)
        negs = pick(scores, negatives, -1.0)
        coverage = sum(c.share for c in children)
        reason = None if children else "no unit below contributes positively through this path (zero gradient)"
        return Expansion(path, child_layer, children, negs, total_pos, total_neg, coverage, reason)

    def input_gradient(self, path: Sequence[Unit], rule: str = "gradient", seed_mode: str = "sum") -> torch.Tensor:
        """Path-conditioned gradient at the input tensor, [3, H, W]."""
        rule = SCORING_RULES.get(rule, rule)
        path = tuple(path)
        return self._backward(path[-1].layer, None, self.delta(path, rule, seed_mode), rule)[0]

    def path_gain(self, path: Sequence[Unit], seed_mode: str = "sum") -> float:
        """The original's auto_1 rescaling: product over the path of |G|_1 / |G[u]|_1 (guided)."""
        gain = 1.0
        for j in range(1, len(path)):
            grad = self.layer_gradient(path[:j], "guided", seed_mode)
            kept = float(grad[:, path[j].channel].abs().sum())
            whole = float(grad.abs().sum())
            if kept > 0:
                gain *= whole / kept
        return gain

    def _backward_many(self, upper: str, lower: str | None, grad_outputs: list[torch.Tensor], rule: str) -> list[torch.Tensor]:
        """One vector-Jacobian product per grad_output through the shared graph.

        Batched into one ``autograd.grad(is_grads_batched=True)`` call when the explainer batches
        (default on accelerators); a loop otherwise, which is faster on CPU (benchmarks/bench_speed.py).
        """
        if len(grad_outputs) > 1 and self.explainer.batch_backward:
            target = self.record.input if lower is None else self.record.activations[lower]
            with self.record.rule.use(rule):
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
        return [self._backward(upper, lower, g, rule) for g in grad_outputs]

    def evidence(
        self, path: Sequence[Unit], rule: str = "gradient", seed_mode: str = "sum", kinds: Sequence[str] = EVIDENCE_KINDS
    ) -> NodeEvidence:
        """Everything one node's pictures need (see ``evidence_many``)."""
        return self.evidence_many([path], rule, seed_mode, kinds)[0]

    def evidence_many(
        self,
        paths: Sequence[Sequence[Unit]],
        rule: str = "gradient",
        seed_mode: str = "sum",
        kinds: Sequence[str] = EVIDENCE_KINDS,
    ) -> list[NodeEvidence]:
        """Node evidence for many paths; nodes in the same layer (siblings, a tree level) share batched
        backward passes: guided backprop to the input, the rule's gradient to the input, and the
        receptive fields of their strongest positions (cached per layer and position).

        ``kinds`` picks what to compute ("guided", "heat", "box"): an explorer showing one view
        pays for one backward pass per node, not three.
        """
        _check_choice(rule, RULES, "rule")
        for kind in kinds:
            _check_choice(kind, EVIDENCE_KINDS, "evidence kind")
        paths = [self.validate_path(p) for p in paths]
        results: dict[int, NodeEvidence] = {}
        groups: dict[str, list[int]] = {}
        for i, path in enumerate(paths):
            groups.setdefault(path[-1].layer, []).append(i)
        std = torch.tensor(self.explainer.preprocess.std, device=self.record.input.device).view(3, 1, 1)
        x = self.record.input.detach()[0]
        for layer, members in groups.items():
            none: list[torch.Tensor | None] = [None] * len(members)
            guided = none
            if "guided" in kinds or ("heat" in kinds and rule == "guided"):
                guided = self._backward_many(layer, None, [self.delta(paths[i], "guided", seed_mode) for i in members], "guided")
            grads = none
            if "heat" in kinds:
                grads = (
                    guided
                    if rule == "guided"
                    # integrated / ablation rules picture with the true gradient
                    else self._backward_many(
                        layer, None, [self.delta(paths[i], rule, seed_mode) for i in members], SCORING_RULES.get(rule, rule)
                    )
                )
            locations = [self._strongest_position(paths[i], rule, seed_mode) for i in members]
            boxes = self._receptive_fields(layer, locations) if "box" in kinds else [None] * len(members)
            for i, g_guided, g_rule, location, box in zip(members, guided, grads, locations, boxes):
                act = self.activation(layer)[0, paths[i][-1].channel]
                results[i] = NodeEvidence(
                    # d objective / d pixel (0..1 units)
                    guided=(g_guided[0] / std).float().cpu().numpy() if "guided" in kinds else None,
                    heat=(g_rule[0] * x).sum(0).float().cpu().numpy() if g_rule is not None else None,
                    location=location,
                    box=box,
                    path_gain=self.path_gain(paths[i], seed_mode) if "guided" in kinds else 1.0,
                    activation_sum=float(act.sum()),
                    activation_max=float(act.max()),
                )
        return [results[i] for i in range(len(paths))]

    def _strongest_position(self, path: Path, rule: str, seed_mode: str) -> tuple[int, int] | None:
        """(row, col) where the node's own path-conditioned contribution a * delta peaks."""
        unit = path[-1]
        act = self.activation(unit.layer)[0, unit.channel]
        if act.dim() != 2:
            return None
        contribution = act * self.delta(path, rule, seed_mode)[0, unit.channel]
        if float(contribution.abs().max()) == 0.0:
            contribution = act
        flat = int(contribution.argmax()) if float(contribution.max()) > 0 else int(contribution.abs().argmax())
        return (flat // act.shape[1], flat % act.shape[1])

    def _receptive_fields(self, layer: str, locations: list[tuple[int, int] | None]) -> list[tuple[int, int, int, int]]:
        """Receptive field of each position: the central 90% of the input-gradient mass of all the
        layer's channels there, with every rectifier open (so saturated or dead units still show
        where they look). It depends on the layer and position only, so it is cached per pair: per
        analysis, or per explainer and weights when no op but the rectifiers depends on the image."""
        height, width = (int(s) for s in self.record.input.shape[-2:])
        if self.record.fixed_linearisation:
            cache, scope = self.explainer.receptive_fields, ("rf", self.explainer.weights_version(), (height, width))
        else:
            cache, scope = self._memo, ("rf",)
        boxes: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        todo = []
        for loc in locations:
            if loc is None or loc in boxes:
                continue
            cached = cache.get((*scope, layer, loc))
            if cached is not None:
                boxes[loc] = cached
            else:
                boxes[loc] = (0, 0, 0, 0)
                todo.append(loc)
        if todo:
            seeds = []
            for row, col in todo:
                seed = torch.zeros_like(self.activation(layer))
                seed[0, :, row, col] = 1.0
                seeds.append(seed)
            shape = self.activation(layer).shape[-2:]
            for loc, grad in zip(todo, self._backward_many(layer, None, seeds, "linear")):
                boxes[loc] = self._mass_box(grad[0].abs().sum(0).double().cpu(), loc, shape)
                cache.put((*scope, layer, loc), boxes[loc])
        return [(0, 0, width, height) if loc is None else boxes[loc] for loc in locations]

    @staticmethod
    def _mass_box(mass: torch.Tensor, location: tuple[int, int], shape: Sequence[int]) -> tuple[int, int, int, int]:
        height, width = mass.shape
        if float(mass.sum()) == 0.0:
            # No gradient at all: fall back to the position's footprint under a uniform stride.
            sy, sx = height / shape[0], width / shape[1]
            return (
                int(location[1] * sx),
                int(location[0] * sy),
                int(math.ceil((location[1] + 1) * sx)),
                int(math.ceil((location[0] + 1) * sy)),
            )

        top, bottom = central_interval(mass.sum(1))
        left, right = central_interval(mass.sum(0))
        return (left, top, right, bottom)

    # ----- whole trees -----------------------------------------------------
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
    ) -> FeatureTree:
        """Expand breadth-first from ``root`` to ``depth`` levels below it, keeping ``k`` children each.

        ``verify=True`` also measures every edge by ablation (see featuretree.verify)."""
        from .tree import build_tree

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
        )
