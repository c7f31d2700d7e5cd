"""`featuretree check` and ``Explainer.check()``: what can be trusted for this model and chain.

One photo through the model, read three ways: the analysis's own capture (layouts, cuts, the
nonlinearities the rules care about), a scan that says which module ran each nonlinearity and how
often each module runs, and a timed expansion that gives the speed estimate. Nothing here decides
anything new: each verdict is read off the check the engine itself applies (``guided_problem``,
``fixed_linearisation``, the cut check), so ``check`` says what an explanation will then do.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .analysis.chain_model import ChainModel
from .analysis.image_analysis import ImageAnalysis
from .capture.sites import ModelSites, name_patterns, scan_model
from .core.errors import FeatureTreeError, ModelError
from .core.images import prepare_image
from .core.samples import sample_path
from .evidence.evidence import evidence_many
from .rules import get_rule, rule_names
from .tree.expansion import expand

EXACT, APPROXIMATE, UNAVAILABLE = "exact", "approximate", "unavailable"
_BUILT_IN_RULES = ("gradient", "guided", "integrated", "ablation")
_TRAINING_KINDS = ((nn.modules.batchnorm._BatchNorm, "batch norm"), (nn.modules.dropout._DropoutNd, "dropout"))


@dataclass
class LayerCheck:
    name: str
    type: str
    layout: str | None
    shape: list[int] | None
    cuts: bool | None  # None where the capture could not run
    bypass: str | None  # what goes around the layer below, where it does not cut
    calls: int


@dataclass
class RuleCheck:
    rule: str
    verdict: str  # exact, approximate or unavailable
    reason: str


@dataclass
class ModelCheck:
    model: str
    input_size: int
    layers: list[LayerCheck]
    rules: list[RuleCheck]
    receptive_fields: dict[str, Any]  # {"shared": bool, "reason": str}
    state: list[str]  # problems with the model's state; empty when there are none
    speed: dict[str, Any] | None  # the depth-3 estimate and what it was measured from
    problems: list[str] = field(default_factory=list)  # what stops an explanation (a chain that does not cut, ...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rule(self, name: str) -> RuleCheck:
        return next(r for r in self.rules if r.rule == name)

    def format(self) -> str:
        return format_check(self)


def _where(sites: ModelSites, names: tuple[str, ...], found: dict[str, tuple[str, ...]] | None = None) -> str:
    """``gelu in blocks.*.mlp.act; softmax in blocks.*.attn`` for the first few nonlinearities."""
    found = sites.nonlinearities if found is None else found
    parts = []
    for name in names[:4]:
        patterns = name_patterns(found.get(name, ()))
        shown = ", ".join(patterns[:3]) + (", ..." if len(patterns) > 3 else "")
        parts.append(f"{name} in {shown}" if shown else name)
    return "; ".join(parts) + ("; ..." if len(names) > 4 else "")


def _rf_blockers(sites: ModelSites, found: tuple[str, ...]) -> str:
    if found:
        return _where(sites, found)
    unlisted = tuple(sites.unlisted)  # max pooling and ops capture.linearity does not list
    return _where(sites, unlisted, sites.unlisted) if unlisted else "ops the capture could not see into"


def rule_checks(analysis: ImageAnalysis | None, sites: ModelSites) -> list[RuleCheck]:
    """Each registered rule's verdict for this model, from the same facts the engine acts on."""
    if analysis is None:
        return [RuleCheck(name, UNAVAILABLE, "the forward pass was refused (see problems)") for name in rule_names()]
    found = analysis.record.nonlinearities
    where = _where(sites, found)
    checks = []
    for name in rule_names():
        rule = get_rule(name)
        if rule.backward == "guided" and analysis.guided_problem:
            checks.append(RuleCheck(name, UNAVAILABLE, f"{where}: not rectifiers, so guided backprop has no meaning here"))
        elif name == "ablation":
            checks.append(RuleCheck(name, EXACT, "measured: the drop when the child is zeroed"))
        elif name == "integrated":
            checks.append(RuleCheck(name, APPROXIMATE, "a 16-step sum of the path integral from a zero baseline"))
        elif rule.backward == "guided":
            checks.append(RuleCheck(name, EXACT, "every nonlinearity is a ReLU-family rectifier or max pooling"))
        elif found:
            checks.append(RuleCheck(name, APPROXIMATE, f"first-order: {where} curve between layers"))
        else:
            checks.append(RuleCheck(name, EXACT, "piecewise linear: gradient x activation is the exact first-order split"))
        if name not in _BUILT_IN_RULES:
            checks[-1].reason = f"judged by its {rule.backward} backward only (a registered rule): {checks[-1].reason}"
    return checks


def state_problems(explainer: ChainModel, analysis: ImageAnalysis | None, x: torch.Tensor) -> list[str]:
    """Training-mode layers, batch statistics, randomness, mixed devices, an output that is not class logits."""
    model = explainer.model
    problems = []
    for kind, label in _TRAINING_KINDS:
        training = [n for n, m in model.named_modules() if isinstance(m, kind) and m.training]
        if training:
            problems.append(f"{label} in training mode: {', '.join(name_patterns(training)[:3])} (call model.eval())")
    batch_stats = [
        n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None and not m.training
    ]
    if batch_stats:
        problems.append(
            f"batch norm without running statistics (normalises with this image's own): {', '.join(name_patterns(batch_stats)[:3])}"
        )
    devices = sorted({str(t.device) for t in (*model.parameters(), *model.buffers())})
    if len(devices) > 1:
        problems.append(f"parameters on mixed devices ({', '.join(devices)}): move the model to one device")
    with torch.no_grad(), explainer.forward_lock:
        first, second = model(x), model(x)
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) and not torch.equal(first, second):
        problems.append("the output changes between two runs on the same image (dropout or another random op is active)")
    if analysis is not None:
        problems.extend(_output_problems(analysis))
    return problems


def _output_problems(analysis: ImageAnalysis) -> list[str]:
    if not analysis.has_classes:
        return [f"the model's output is {analysis.record.output_description}, not class logits [1, classes]: roots are chain units only"]
    problems = []
    out = analysis.logits.double()
    if bool((out >= 0).all()) and abs(float(out.sum()) - 1.0) < 1e-4:
        problems.append("the output looks like probabilities (non-negative, sums to 1): return the logits, before the softmax")
    if analysis.logits_layer is None:
        problems.append(f"the chain does not end at the logits: trees start at units of {analysis.layers[-1]!r}, not at classes")
    return problems


def _click(analysis: ImageAnalysis, path: tuple, k: int) -> tuple[float, list]:
    """Seconds for one explorer click: a node's expansion and its children's pictures."""
    start = time.perf_counter()
    ex = expand(analysis, path, k)
    kinds = ("heat", "box") if analysis.guided_problem else ("guided", "heat", "box")
    children = [(*path, c.unit) for c in ex.children]
    evidence_many(analysis, children, kinds=kinds)
    return time.perf_counter() - start, children


def speed_estimate(analysis: ImageAnalysis, forward_seconds: float, k: int = 5, depth: int = 3) -> dict[str, Any] | None:
    """A depth-3 tree's time from clicks measured once: per level of the tree, the first node's expansion with
    its children's pictures (it pays what later nodes of that layer share, such as shared receptive-field boxes)
    and a second node's, which stands for the rest of the level."""
    depth = min(depth, len(analysis.layers) - 1)
    root = analysis.resolve_root(None)
    if depth < 1 or root.layer != analysis.layers[-1]:
        return None
    levels, frontier, seconds, count, nodes = [], [(root,)], forward_seconds, 1, 1
    for _ in range(depth):
        first, children = _click(analysis, frontier[0], k)
        later = _click(analysis, frontier[1], k)[0] if count > 1 and len(frontier) > 1 else first
        levels.append({"nodes": count, "first_seconds": first, "later_seconds": later})
        seconds += first + (count - 1) * later
        count *= len(children)  # the next level, if every node has as many children as the first
        nodes += count
        frontier = children
        if not frontier:
            break
    shown = ", ".join(f"{lv['nodes']} at {lv['later_seconds']:.2f} s" for lv in levels)
    return {
        "seconds": seconds,
        "depth": depth,
        "k": k,
        "nodes": nodes,
        "forward_seconds": forward_seconds,
        "levels": levels,
        "text": f"estimate: a depth-{depth} tree (k {k}, {nodes} nodes) takes about {seconds:.1f} s here (forward "
        f"{forward_seconds:.2f} s; expansions with pictures per level: {shown}; two of each level measured once)",
    }


def check_model(explainer: ChainModel, image: Any = None, speed: bool = True) -> ModelCheck:
    """Everything `featuretree check` reports, for ``explainer``'s model and chain on ``image`` (default: a sample photo)."""
    prepared = prepare_image(image if image is not None else sample_path("chelsea"), explainer.preprocess)
    x = prepared.tensor.to(explainer.device)
    try:
        with explainer.forward_lock:
            sites = scan_model(explainer.model, x)
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:
        size = explainer.preprocess.size
        raise ModelError(
            f"the model failed on a {size}x{size} input ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})",
            "check --input-size and that the model takes one [1, 3, H, W] image",
        ) from None
    problems: list[str] = []
    analysis: ImageAnalysis | None = None
    start = time.perf_counter()
    try:
        analysis = ImageAnalysis(explainer, prepared, enforce_cuts=False)
    except FeatureTreeError as err:
        problems.append(str(err))
    forward_seconds = time.perf_counter() - start
    layers = _layer_checks(explainer, analysis, sites)
    if analysis is not None:
        problems.extend(f"{b.problem}; {b.suggestion}, or pass --allow-bypass" for b in analysis.bypasses if not explainer.allow_bypass)
    rf = {"shared": False, "reason": "the forward pass was refused"}
    if analysis is not None:
        found = analysis.record.nonlinearities
        rf = (
            {"shared": True, "reason": "every op besides the rectifiers is linear: one box per position for all images"}
            if analysis.record.fixed_linearisation
            else {
                "shared": False,
                "reason": f"per image: {_rf_blockers(sites, found)} make the linearised network depend on the image",
            }
        )
    return ModelCheck(
        model=explainer.name,
        input_size=explainer.preprocess.size,
        layers=layers,
        rules=rule_checks(analysis, sites),
        receptive_fields=rf,
        state=state_problems(explainer, analysis, x),
        speed=speed_estimate(analysis, forward_seconds) if speed and analysis is not None else None,
        problems=problems,
    )


def _layer_checks(explainer: ChainModel, analysis: ImageAnalysis | None, sites: ModelSites) -> list[LayerCheck]:
    modules = dict(explainer.model.named_modules())
    bypassed = {b.layer: b for b in analysis.bypasses} if analysis is not None else {}
    rows = []
    for name in explainer.layers:
        info = analysis.layer_info(name) if analysis is not None else None
        bypass = bypassed.get(name)
        rows.append(
            LayerCheck(
                name=name,
                type=info.type if info else type(modules[name]).__name__,
                layout=repr(info.layout) if info else None,
                shape=list(info.shape) if info else None,
                cuts=None if analysis is None else (bypass is None),
                bypass=f"receives {bypass.source} around {bypass.below!r}, through {bypass.kind}" if bypass else None,
                calls=sites.calls.get(name, 0),
            )
        )
    return rows


def format_check(check: ModelCheck) -> str:
    """The printed table."""
    yes_no = {True: "yes", False: "NO", None: "?"}
    lines = [f"model {check.model} at {check.input_size} px, chain of {len(check.layers)} layers (input side first)", ""]
    width = max(12, *(len(r.name) for r in check.layers))
    lines.append(f"  {'layer':<{width}} {'type':<16} {'layout':<16} {'shape':<14} {'cuts':<5} calls")
    for row in check.layers:
        shape = "x".join(map(str, row.shape)) if row.shape else "-"
        calls = f"{row.calls}" + (" (more than once: pick its parent block)" if row.calls > 1 else "")
        line = f"  {row.name:<{width}} {row.type:<16} {row.layout or '-':<16} {shape:<14} {yes_no[row.cuts]:<5} {calls}"
        lines.append(line + (f"  <- {row.bypass}" if row.bypass else ""))
    lines += ["", "rules"]
    for rule in check.rules:
        lines.append(f"  {rule.rule:<12} {rule.verdict:<12} {rule.reason}")
    rf = check.receptive_fields
    lines += ["", f"receptive fields: {'shared across images' if rf['shared'] else 'computed per image'} ({rf['reason']})"]
    lines.append("model state: " + ("ok (eval mode, one device, class logits, deterministic)" if not check.state else ""))
    lines += [f"  - {problem}" for problem in check.state]
    if check.speed:
        lines.append(f"speed: {check.speed['text']}")
    if check.problems:
        lines += ["", "problems (an explanation would stop here):"] + [f"  - {p}" for p in check.problems]
    return "\n".join(lines)
