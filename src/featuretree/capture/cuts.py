"""Does the chain cut the network? A walk of one forward pass's autograd graph.

Scores, shares, the rest entry and coverage split a parent's evidence among the units of the chain
layer below it; that is a split of the whole only when every path from the input to a chain layer
passes through the chain layer just below it. From each chain layer's output the walk follows
``next_functions`` down, stopping at the layer below (the flow through it) and at parameters; reaching
the input, or an earlier chain layer, means some of the evidence goes around the layer below.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..core.errors import LayerError
from .autograd_walk import children, postorder
from .forward import ForwardRecord

INPUT = "the input"


@dataclass(frozen=True)
class Bypass:
    """Chain layer ``layer`` receives evidence from ``source`` that does not pass ``below``."""

    layer: str
    below: str
    source: str  # INPUT or the name of an earlier chain layer
    kind: str  # how the bypass joins the flow through ``below``: "a skip connection (an addition)", ...
    block: str | None = None  # the enclosing block of ``below`` to use instead, where one is known

    @property
    def problem(self) -> str:
        origin = INPUT if self.source == INPUT else f"chain layer {self.source!r}"
        return f"chain layer {self.layer!r} also receives input that bypasses {self.below!r}: from {origin}, through {self.kind}"

    @property
    def suggestion(self) -> str:
        if self.block:
            return f"use the enclosing block {self.block!r} instead of {self.below!r}"
        return f"drop {self.below!r} from the chain or pick a layer every path passes"

    def to_dict(self) -> dict[str, str | None]:
        return {"layer": self.layer, "below": self.below, "source": self.source, "kind": self.kind, "block": self.block}


class ChainCutError(LayerError):
    """A chain whose layers do not cut the network (evidence bypasses a chain layer)."""

    def __init__(self, bypass: Bypass) -> None:
        self.bypass = bypass
        super().__init__(bypass.problem, f"{bypass.suggestion}, or pass --allow-bypass (allow_bypass=True) to go on with it reported")


def _join_kind(node_name: str) -> str:
    if node_name.startswith(("Add", "Sub")):
        return "a skip connection (an addition)"
    if node_name.startswith(("Cat", "Stack")):
        return "a concatenation"
    if node_name.startswith(("Mul", "Div")):
        return "a product (gating)"
    return f"an op that merges two flows ({node_name.removesuffix('Backward0').removesuffix('Backward1')})"


def _walk(start, below, below_name: str, earlier: dict[object, str], input_leaf) -> tuple[str | None, str | None]:
    """From ``start`` down to ``below``: (the source of a bypass or None, how it joins).

    Post-order, each node visited once: ``through[n]`` says whether n's graph reaches ``below``,
    ``around[n]`` names a source it reaches without passing ``below``. The join is the deepest node
    where one input comes through ``below`` and another comes around it."""
    through: dict[object, bool] = {}
    around: dict[object, str | None] = {}
    join: str | None = None

    def is_leaf(node) -> bool:
        return node is below or node in earlier or type(node).__name__ == "AccumulateGrad"

    for node in postorder(start, through, is_leaf):
        if node is below:
            through[node], around[node] = True, None
        elif node in earlier:
            through[node], around[node] = False, earlier[node]
        elif type(node).__name__ == "AccumulateGrad":
            through[node], around[node] = False, (INPUT if node.variable is input_leaf else None)
        else:
            kids = children(node)
            through[node] = any(through[c] for c in kids)
            around[node] = next((around[c] for c in kids if around[c] is not None), None)
            if join is None and through[node] and any(around[c] is not None and not through[c] for c in kids):
                join = _join_kind(type(node).__name__)
    source = around[start]
    if source is None:
        return None, None
    if not through[start]:
        return source, f"a parallel path (it does not receive {below_name!r} at all)"
    return source, join or "a path the walk could not name"


def enclosing_block(below: str, layer: str, module_names: Iterable[str]) -> str | None:
    """The nearest module around ``below`` that does not also hold ``layer``: its block."""
    names = set(module_names)
    parts = below.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:cut])
        if candidate in names and not (layer == candidate or layer.startswith(candidate + ".")):
            return candidate
    return None


def find_bypasses(record: ForwardRecord, layers: Sequence[str], module_names: Iterable[str] = ()) -> list[Bypass]:
    """Every pair of neighbouring chain layers (input side first) that the network's graph does not cut."""
    names = list(module_names)
    nodes = [record.activations[name].grad_fn for name in layers]
    found = []
    for i in range(1, len(layers)):
        start, below = nodes[i], nodes[i - 1]
        if start is None or start is below or below is None:
            continue
        earlier = {nodes[j]: layers[j] for j in range(i - 1) if nodes[j] is not None}
        source, kind = _walk(start, below, layers[i - 1], earlier, record.input)
        if source is not None and kind is not None:
            found.append(Bypass(layers[i], layers[i - 1], source, kind, enclosing_block(layers[i - 1], layers[i], names)))
    return found
