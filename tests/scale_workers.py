"""Workers the engine tests send to Ray actors (an importable module, as an actor must import what it runs)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class SlowEarlyShards:
    """Shard i sleeps longer the earlier it is, so actors finish out of shard order."""

    shards: int
    step: float = 0.15

    def __call__(self):
        def work(shard):
            time.sleep(self.step * (self.shards - shard[0]))
            return list(shard), os.getpid()

        return work


@dataclass(frozen=True)
class Failing:
    """Raises a featuretree error on the shard holding ``bad``."""

    bad: int

    def __call__(self):
        from featuretree.core.errors import ImageInputError

        def work(shard):
            if self.bad in shard:
                raise ImageInputError(f"item {self.bad} is bad", "drop it")
            return list(shard)

        return work
