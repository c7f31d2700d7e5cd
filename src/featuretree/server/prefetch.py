"""Work the explorer will probably ask for next, done while the user looks at the page.

After ``/api/expand`` answers a node's children, the next click is usually on one of them, and its
cost is the backward passes behind its children's pictures (about 100 ms on a 2-core CPU). A
``Prefetcher`` runs such jobs on one background thread so the click finds them cached. The newest
jobs run first (what the user just opened is what they look at); past ``max_pending`` the oldest
waiting jobs are dropped. A job that fails is dropped quietly: the request that needs the same work
later does it again and reports the error there.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

log = logging.getLogger(__name__)


class Prefetcher:
    """One background thread running keyed jobs, newest first; a key already waiting is moved up, not repeated."""

    def __init__(self, max_pending: int = 32) -> None:
        self.max_pending = max_pending
        self._pending: OrderedDict[Hashable, Callable[[], object]] = OrderedDict()
        self._running: Hashable | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.finished = 0  # jobs run to the end (failed ones included)

    def submit(self, jobs: Sequence[tuple[Hashable, Callable[[], object]]]) -> None:
        """Queue ``jobs`` ahead of everything waiting; the first of them runs first."""
        with self._cond:
            if self._closed:
                return
            for key, job in reversed(jobs):
                self._pending.pop(key, None)
                self._pending[key] = job
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="featuretree-prefetch", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                self._running, job = self._pending.popitem(last=True)
            try:
                job()
            except Exception:  # the foreground request for the same work raises it properly
                log.debug("prefetch job %r failed", self._running, exc_info=True)
            finally:
                with self._cond:
                    self._running = None
                    self.finished += 1
                    self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is waiting or running; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and self._running is None, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Drop waiting jobs and stop the thread once the running job (if any) ends."""
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
