"""The one way featuretree puts hooks on a user's model: a context manager that removes them.

Every hook lives only inside ``forward_hooks``; the handles are removed in ``finally``, so a
model that raises (or a caller that raises) never leaves a hook behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

from torch import nn

ForwardHook = Callable[[nn.Module, tuple, object], object]
ForwardPreHook = Callable[[nn.Module, tuple], object]


@contextlib.contextmanager
def _registered(hooks: Iterable[tuple[nn.Module, Callable]], register: Callable[[nn.Module, Callable], object]) -> Iterator[None]:
    """Inside: each (module, hook) pair is registered with ``register``; every handle is removed in ``finally``."""
    handles = []
    try:
        for module, hook in hooks:
            handles.append(register(module, hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def forward_hooks(hooks: Iterable[tuple[nn.Module, ForwardHook]]) -> contextlib.AbstractContextManager[None]:
    """Inside: each (module, hook) pair is registered as a forward hook (a hook returning a value
    replaces the module's output)."""
    return _registered(hooks, lambda module, hook: module.register_forward_hook(hook))


def forward_pre_hooks(hooks: Iterable[tuple[nn.Module, ForwardPreHook]]) -> contextlib.AbstractContextManager[None]:
    """Inside: each (module, hook) pair is registered as a forward pre-hook (run before the module's forward)."""
    return _registered(hooks, lambda module, hook: module.register_forward_pre_hook(hook))


def recording_hook(store: dict[str, object], name: str) -> ForwardHook:
    """A hook that keeps the module's output in ``store[name]``."""

    def hook(module: nn.Module, inputs, output) -> None:
        store[name] = output

    return hook


def replacing_hook(value: object) -> ForwardHook:
    """A hook that makes the module return ``value`` instead of its output."""

    def hook(module: nn.Module, inputs, output) -> object:
        return value

    return hook


def copying_hook(value) -> ForwardHook:
    """A hook that makes the module return a fresh copy of ``value`` on every call: a non-leaf that code
    downstream may modify in place (``F.relu(x, inplace=True)``), with gradients still flowing to ``value``."""

    def hook(module: nn.Module, inputs, output) -> object:
        return value.clone()

    return hook


class _AllWatched(BaseException):
    """Raised from a hook once every watched output is in, to end a forward pass early (a BaseException,
    so model code that catches Exception does not swallow it and run on)."""


@contextlib.contextmanager
def watching(modules: dict[str, nn.Module], store: dict[str, object], *, stop: bool = False) -> Iterator[None]:
    """Inside: the outputs of ``modules`` are kept in ``store`` by name.

    With ``stop``, the forward pass inside ends as soon as every watched output is in: the rest of the
    model (a classifier's head, a detector's proposal and box stages) is neither run nor needed, and
    the ``with`` block is left at that point without an error.
    """
    names = set(modules)

    def hook_for(name: str) -> ForwardHook:
        def hook(module: nn.Module, inputs, output) -> None:
            store[name] = output
            if stop and names <= store.keys():
                raise _AllWatched

        return hook

    with forward_hooks((module, hook_for(name)) for name, module in modules.items()), contextlib.suppress(_AllWatched):
        yield
