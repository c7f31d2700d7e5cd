"""The explorer's model panel: each model's `featuretree check`, computed once per model and kept.

A check runs a forward pass, a scan of every module and two timed expansions (a second or two), so it
is built on first request, one build per model at a time, and reused for the life of the server.
"""

from __future__ import annotations

import threading
from typing import Any

from .session import Workspace


class ModelChecks:
    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._done: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, model: str) -> dict[str, Any]:
        """The check of ``model`` as a dict (``ModelCheck.to_dict``)."""
        explainer = self.workspace.explainer(model)  # unknown models fail here, in one line
        with self._guard:
            lock = self._locks.setdefault(model, threading.Lock())
        with lock:
            if model not in self._done:
                self._done[model] = explainer.check().to_dict()
            return self._done[model]
