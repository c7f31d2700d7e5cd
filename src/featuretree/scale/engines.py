"""Running a job's shards in this process or on Ray actors, with results handed back in shard order.

A job is a list of shards (each a list of work items) and a ``WorkerFactory``: a picklable recipe
that builds the worker (a callable from one shard to its result) wherever it runs. The local engine
builds one worker here; the Ray engine builds one per actor, each holding its own copy of the model.

Both engines yield ``(shard_index, result)`` in shard order, whatever order the actors finish in, so
the caller commits shard after shard exactly as the local engine would: the same database rows, row
ids included. At most ``2 x workers`` shards are out at once (submitted or finished but not yet
handed back), which keeps memory flat in the number of shards.

Exactly equal results also need the same arithmetic: every worker (and the local engine) runs torch
with the same number of intra-op threads (``threads``, by default this process's), because CPU
kernels split their sums by thread and a different split rounds differently.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ..core.errors import FeatureTreeError, OptionError

ENGINES = ("local", "ray")


class WorkerFactory(Protocol):
    """Picklable; called once per process (or actor) to build that process's worker."""

    def __call__(self) -> Callable[[Sequence[Any]], Any]: ...


@dataclass(frozen=True)
class EngineOptions:
    engine: str = "local"
    workers: int | None = None  # Ray actors (default: the cluster's CPUs, at least 1)
    ray_address: str | None = None  # an existing cluster ("auto" or HOST:6379); default: start one here
    threads: int | None = None  # torch intra-op threads per worker (default: this process's)
    gpus_per_worker: float = 0.0

    def checked(self) -> EngineOptions:
        if self.engine not in ENGINES:
            raise OptionError(f"unknown --engine {self.engine!r}", "use --engine local or --engine ray")
        if self.workers is not None and self.workers < 1:
            raise OptionError(f"--workers must be at least 1, got {self.workers}", "use --workers 2")
        if self.threads is not None and self.threads < 1:
            raise OptionError(f"--threads must be at least 1, got {self.threads}", "use --threads 1")
        if self.engine == "local" and self.ray_address:
            raise OptionError("--ray-address needs --engine ray", "add --engine ray, or drop --ray-address")
        if self.engine == "local" and self.workers is not None:
            raise OptionError("--workers (Ray actors) needs --engine ray", "add --engine ray, or drop --workers")
        return self


# (relative path, size, mtime_ns, content or None when it could not be read, and then why)
FileItem = tuple[str, int, int, "bytes | None", "str | None"]


class FileShards(Sequence):
    """Shards of ``FileItem`` from (relative path, size, mtime_ns) entries under ``root``, each file read
    only when its shard is handed out: workers get the bytes, so they need no shared file system."""

    def __init__(self, root: Path, entries: Sequence[tuple[str, int, int]], size: int) -> None:
        if size < 1:
            raise OptionError(f"shard size must be at least 1, got {size}", "use a shard size of 1 or more")
        self.root, self.entries, self.size = root, list(entries), size

    def __len__(self) -> int:
        return math.ceil(len(self.entries) / self.size)

    def __getitem__(self, index: int) -> list[FileItem]:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        entries = self.entries[index * self.size : (index + 1) * self.size]
        return [(rel, size, mtime, *_read(self.root / rel)) for rel, size, mtime in entries]


def _read(path: Path) -> tuple[bytes | None, str | None]:
    try:
        return path.read_bytes(), None
    except OSError as err:
        return None, f"unreadable ({err.strerror or err})"  # the text the local indexer records


def run_shards(
    factory: WorkerFactory, shards: Sequence[Sequence[Any]], options: EngineOptions, local_worker: Callable | None = None
) -> Iterator[tuple[int, Any]]:
    """``(index, worker(shard))`` for every shard, in shard order. ``local_worker`` (the local engine
    only) is a worker already built in this process, so its model is not loaded twice."""
    options = options.checked()
    threads = options.threads or torch.get_num_threads()
    if options.engine == "local":
        yield from _run_local(factory, shards, threads, local_worker)
    else:
        yield from _run_ray(factory, shards, options, threads)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` (None: left as it is) while active, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_local(factory: WorkerFactory, shards, threads: int, worker) -> Iterator[tuple[int, Any]]:
    with torch_threads(threads):
        worker = worker or factory()
        for index, shard in enumerate(shards):
            yield index, worker(shard)


# ----- Ray --------------------------------------------------------------------
def import_ray():
    try:
        import ray
    except ImportError:
        raise OptionError("--engine ray needs Ray, which is not installed", "pip install 'featuretree[ray]'") from None
    return ray


class _ShardActor:
    """One model per actor: built once, then one shard per call."""

    def __init__(self, factory: WorkerFactory, threads: int) -> None:
        torch.set_num_threads(threads)
        self.worker, self.problem = None, None
        try:
            self.worker = factory()
        except FeatureTreeError as err:  # raised again by the first call, where Ray hands it back as itself
            self.problem = err

    def run(self, shard: Sequence[Any]) -> Any:
        if self.problem is not None:
            raise self.problem
        return self.worker(shard)

    def pid(self) -> int:
        return os.getpid()


def connect(options: EngineOptions):
    """The Ray module, connected: to ``ray_address``, to the cluster this process already joined, or to
    a new local one with ``workers`` CPUs (no dashboard)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if options.ray_address:
        _check_reachable(options.ray_address)
    try:
        if options.ray_address:
            ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=options.workers or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise OptionError(
            f"could not connect to Ray at {options.ray_address or 'a new local cluster'} ({err})",
            "start it first (`ray start --head` on the head node) and pass --ray-address HOST:6379; a cluster with token "
            "authentication (Ray's default for clusters it starts) needs RAY_AUTH_MODE=token here too, and its token "
            "(`ray get-auth-token` there, as RAY_AUTH_TOKEN or in ~/.ray/auth_token)",
        ) from None
    return ray


def _check_reachable(address: str) -> None:
    """Refuse an address nothing listens on at once (Ray itself retries for minutes)."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return  # "auto", ray://HOST:PORT (Ray Client) and other forms are Ray's to resolve
    host = host.strip("[]")  # [::1]:6379
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise OptionError(
            f"nothing answers at --ray-address {address} ({err.strerror or err})",
            "start the cluster there (`ray start --head`), or fix the address (HOST:6379)",
        ) from None


ACTOR_START_SECONDS = 900.0  # loading a large model in every actor may take minutes; never hang for good


def _actor_count(ray, options: EngineOptions, shards: int) -> int:
    """The actors to start: ``--workers`` (default: the cluster's CPUs), refused in one line when the cluster
    cannot host that many (an actor that is never scheduled would leave its shards waiting for ever)."""
    resources = ray.cluster_resources()
    room = int(resources.get("CPU", 1))
    if options.gpus_per_worker:
        room = min(room, int(resources.get("GPU", 0) // options.gpus_per_worker))
    if room < 1:
        raise OptionError("the Ray cluster has no room for a worker (no GPU for --device cuda)", "add GPU nodes, or use --device cpu")
    if options.workers is not None and options.workers > room:
        raise OptionError(
            f"--workers {options.workers} is more than the Ray cluster can host ({room}: one CPU"
            f"{' and one GPU' if options.gpus_per_worker else ''} per worker)",
            f"use --workers {room} or fewer, or add nodes",
        )
    return max(1, min(options.workers or room, shards))


def _run_ray(factory: WorkerFactory, shards, options: EngineOptions, threads: int) -> Iterator[tuple[int, Any]]:
    if not shards:
        return
    ray = connect(options)
    workers = _actor_count(ray, options, len(shards))
    actor_class = ray.remote(num_cpus=1, num_gpus=options.gpus_per_worker)(_ShardActor)
    actors = [actor_class.remote(factory, threads) for _ in range(workers)]
    try:
        started, _ = ray.wait([actor.pid.remote() for actor in actors], num_returns=workers, timeout=ACTOR_START_SECONDS)
        if len(started) < workers:
            raise OptionError(
                f"only {len(started)} of {workers} Ray workers started within {ACTOR_START_SECONDS:.0f}s", "use fewer --workers"
            )
        window = 2 * workers
        idle = [k for _ in range(2) for k in range(workers)]  # two shards queued per actor keep each one busy
        pending: dict[Any, tuple[int, int]] = {}  # object ref -> (shard index, actor)
        finished: dict[int, Any] = {}
        next_submit = next_yield = 0
        while next_yield < len(shards):
            while idle and next_submit < len(shards) and next_submit - next_yield < window:
                actor = idle.pop(0)  # the next shard goes to an actor with a free slot, not in strict rotation
                pending[actors[actor].run.remote(shards[next_submit])] = (next_submit, actor)
                next_submit += 1
            if next_yield not in finished:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    index, actor = pending.pop(ref)
                    idle.append(actor)
                    finished[index] = _result(ray, ref)
            while next_yield in finished:
                yield next_yield, finished.pop(next_yield)
                next_yield += 1
    finally:
        for actor in actors:
            ray.kill(actor)


def _result(ray, ref) -> Any:
    """The shard's result; a featuretree error raised in the actor comes back as itself (one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, FeatureTreeError):
            raise cause from None
        raise
    except ray.exceptions.RayActorError as err:
        raise FeatureTreeError(
            f"a Ray worker died: {_last_error_line(str(err))}", "fix that (every worker must be able to import the model), then run again"
        ) from None


def _last_error_line(text: str) -> str:
    """The innermost ``SomeError: message`` line of a Ray error's text (which carries the remote traceback)."""
    lines = [line.strip() for line in text.splitlines()]
    found = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit): ", line)]
    return found[-1] if found else (lines[0] if lines else "no reason given")
