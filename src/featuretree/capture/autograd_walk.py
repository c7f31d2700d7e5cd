"""One walk of an autograd graph: every node below a start node, children before their parents.

Decisions about a node (does it reach the input? does it pass a chain layer?) depend on its children's,
so callers fill a memo in post-order; the walk is iterative (graphs of deep networks exceed Python's
recursion limit) and visits each node once however many paths reach it.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator


def children(node) -> list:
    """The autograd nodes ``node`` takes gradients to (its inputs' nodes; None entries dropped)."""
    return [child for child, _ in node.next_functions if child is not None]


def postorder(start, done: Container, is_leaf: Callable[[object], bool]) -> Iterator:
    """Yield each node reachable from ``start`` not yet in ``done``, after all its children; ``is_leaf``
    nodes are yielded without looking below them. The caller records every yielded node in ``done``
    (a memo keyed by node) before asking for the next one."""
    stack = [start]
    while stack:
        node = stack[-1]
        if node in done:
            stack.pop()
            continue
        if not is_leaf(node):
            pending = [child for child in children(node) if child not in done]
            if pending:
                stack.extend(pending)
                continue
        yield node
        if node not in done:
            raise RuntimeError("postorder: the caller must record each yielded node in done")
        stack.pop()
