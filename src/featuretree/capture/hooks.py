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
def forward_hooks(hooks: Iterable[tuple[nn.Module, ForwardHook]]) -> Iterator[None]:
    """Inside: each (module, hook) pair is registered as a forward hook (a hook returning a value
    replaces the module's output)."""
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def forward_pre_hooks(hooks: Iterable[tuple[nn.Module, ForwardPreHook]]) -> Iterator[None]:
    """Inside: each (module, hook) pair is registered as a forward pre-hook (run before the module's forward)."""
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


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


@contextlib.contextmanager
def watching(modules: dict[str, nn.Module], store: dict[str, object]) -> Iterator[None]:
    """Inside: the outputs of ``modules`` are kept in ``store`` by name."""
    with forward_hooks((module, recording_hook(store, name)) for name, module in modules.items()):
        yield
