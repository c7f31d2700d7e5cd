"""``featuretree aggregate``: every image of a folder through the same tree settings, merged into class graphs.

One streaming pass over the files not yet in ``DIR/aggregate.db`` (new, or changed since), in shards
of ``shard_size`` files, each shard committed in one transaction in shard order (the local engine and
Ray alike), then ``graph.json`` and ``graph.html`` written from the database. Memory holds a few
shards at a time, never all the trees.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import OptionError, OutputError
from ..core.folders import files_to_read, scan_folder
from ..loading import ModelSpec, explainer_identity
from ..render.aggregate_page import render_aggregate_html
from ..scale.engines import EngineOptions, FileShards, connect, run_shards
from .db import DB_NAME, AggregateDB, AggregateError
from .graph import DEFAULT_STABLE, aggregate_graph
from .pictures import graph_pictures
from .worker import AggregateWorker, AggregateWorkerFactory, TreeSettings, check_settings

DEFAULT_SHARD = 8


@dataclass
class AggregateReport:
    out: str
    total: int = 0  # image files in the folder
    aggregated: int = 0  # trees built in this run
    already: int = 0  # unchanged since an earlier run
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    gone: int = 0  # in the database but no longer in the folder (still counted)
    seconds: float = 0.0
    roots: list[tuple[str, str | None, int]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.aggregated / self.seconds if self.seconds > 0 else 0.0

    def format(self, limit: int = 10) -> str:
        lines = [
            f"{self.out}: {self.aggregated} trees built in {self.seconds:.1f}s ({self.images_per_second:.2f} images/s), "
            f"{self.already} already in the database, {len(self.skipped)} skipped"
        ]
        for root, label, n in self.roots[:limit]:
            lines.append(f"  {root}{f' ({label})' if label else ''}: {n} images")
        if len(self.roots) > limit:
            lines.append(f"  ... and {len(self.roots) - limit} more roots")
        for path, why in self.skipped[:limit]:
            lines.append(f"  skipped {path}: {why}")
        if self.ignored:
            lines.append(f"  {len(self.ignored)} files ignored (not an image file extension)")
        if self.gone:
            lines.append(f"  {self.gone} images no longer in the folder are still counted (aggregate into a new --out to drop them)")
        return "\n".join(lines)


def _meta_for(explainer, identity: dict, spec: ModelSpec, settings: TreeSettings, folder: Path) -> dict[str, Any]:
    meta = {
        "model": {"spec": spec.model, **identity, "layouts": dict(sorted(explainer.layouts.items()))},
        "settings": {"root": settings.root or "predicted", **{k: v for k, v in asdict(settings).items() if k != "root"}},
        "folder": str(folder),
    }
    return json.loads(json.dumps(meta))  # the stored form (tuples become lists)


_OPTION_OF = {"model": "--model, --layers, --weights and --layout", "settings": "--class/--predicted, --depth, --k and --rule"}


def _check_meta(db: AggregateDB, wanted: dict[str, Any]) -> None:
    have = db.meta()
    if not have:
        return
    if have["folder"] != wanted["folder"]:
        raise AggregateError(f"{db.path} aggregates {have['folder']}, not {wanted['folder']}", "choose a new --out for another folder")
    for key in ("model", "settings"):
        if have[key] != wanted[key]:
            changed = sorted(k for k in set(have[key]) | set(wanted[key]) if have[key].get(k) != wanted[key].get(k))
            raise AggregateError(
                f"{db.path} was built with other {key} ({', '.join(changed)}: {have[key].get(changed[0])!r}, not {wanted[key].get(changed[0])!r})",
                f"use the same {_OPTION_OF[key]} to add images, or choose a new --out",
            )


def aggregate_folder(
    images_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    explainer,
    spec: ModelSpec,
    settings: TreeSettings,
    engine: EngineOptions | None = None,
    *,
    shard_size: int = DEFAULT_SHARD,
    stable: float = DEFAULT_STABLE,
    progress: bool = True,
    html: bool = True,
) -> AggregateReport:
    """Build every new or changed image's tree into ``out_dir/aggregate.db``, then write ``graph.json``
    (and ``graph.html``) for every root."""
    from tqdm.auto import tqdm

    if not 0 < stable <= 1:
        raise OptionError(f"--stable must be in (0, 1], got {stable}", "use --stable 0.5")
    if shard_size < 1:
        raise OptionError(f"--shard-size must be at least 1, got {shard_size}", "use --shard-size 8")
    engine = (engine or EngineOptions()).checked()
    if engine.engine == "ray":
        connect(engine)  # a cluster that cannot be reached fails here, before anything is written
    root = Path(images_dir).resolve()
    files, ignored = scan_folder(root)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder", "choose a folder for --out")
    blank = check_settings(explainer, settings)  # a bad root, depth or rule fails here, before the database is touched
    identity = explainer_identity(explainer)  # what the database records and every worker must match
    wanted = _meta_for(explainer, identity, spec, settings, root)
    chain = [{"name": info.name, "channels": info.channels} for info in blank.chain]
    report = AggregateReport(out=str(out), total=len(files), ignored=ignored)
    with AggregateDB(out / DB_NAME, create=True) as db:
        _check_meta(db, wanted)
        if not db.meta():
            with db.transaction() as conn:
                db.set_meta(conn, {**wanted, "chain": chain})
        known = db.known_files()
        report.gone = len(set(known) - set(files))
        scan = files_to_read(root, files, known)
        report.already, report.skipped = scan.already, scan.skipped
        todo = scan.todo
        shards = FileShards(root, todo, shard_size)
        factory = AggregateWorkerFactory(spec, settings, identity)
        local = AggregateWorker(explainer, settings) if engine.engine == "local" else None
        start = time.perf_counter()
        bar = tqdm(total=len(todo), unit="img", desc=f"aggregate ({engine.engine})", disable=not progress, dynamic_ncols=True)
        try:
            for _, records in run_shards(factory, shards, engine, local_worker=local):
                with db.transaction() as conn:
                    for record in records:
                        if record.sha256 is not None:  # an unreadable file is not remembered: the next run tries again
                            db.put(conn, record)
                for record in records:
                    if record.error is None:
                        report.aggregated += 1
                    else:
                        report.skipped.append((record.path, record.error))
                bar.update(len(records))
                if report.skipped:
                    bar.set_postfix(skipped=len(report.skipped), refresh=False)
        finally:
            bar.close()
            report.seconds = time.perf_counter() - start
        report.roots = db.roots()
        write_outputs(db, out, stable, html=html, explainer=explainer, progress=progress)
    return report


def write_outputs(
    db: AggregateDB, out: Path, stable: float = DEFAULT_STABLE, html: bool = True, explainer=None, progress: bool = False
) -> dict[str, Any]:
    """graph.json and graph.html from the database, each written whole or not at all. With ``explainer``
    (the model the database was built with), graph.html shows each unit's maps on its top images."""
    graph = aggregate_graph(db, stable)
    _write_atomic(out / "graph.json", json.dumps(graph, indent=1))
    if html:
        pictures = graph_pictures(db, graph, explainer, progress=progress) if explainer is not None else None
        _write_atomic(out / "graph.html", render_aggregate_html(graph, pictures))
    return graph


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
