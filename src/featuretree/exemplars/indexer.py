"""Indexing a folder of images into an exemplar database.

One streaming pass: images are decoded in DataLoader worker processes, run through the model
in batches under ``torch.inference_mode`` with forward hooks that reduce every chain layer's
output to a per-unit spatial max and its location, and merged into a per-unit top-N that lives
in memory (size units x N, independent of the number of images). After each batch the new
``images`` rows and the updated top-N state are committed in one transaction.

Then a finishing pass (idempotent, so it also resumes): the top-N state becomes the relational
``exemplars`` table with the engine's receptive-field box of every kept entry (``exemplar_boxes``),
and the receptive-field crops of the kept entries are cut from their images.
Guided-backprop reconstructions are computed for kept entries on request (``--reconstructions``
or lazily by the grid renderer) and cached in the database.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..capture.forward import resolve_modules
from ..capture.hooks import forward_hooks
from ..core.errors import FeatureTreeError, GuidedUndefinedError, ImageInputError, LayerError, OptionError
from ..core.folders import IMAGE_EXTENSIONS, files_to_read, scan_folder
from ..core.images import Preprocess, decode_image, load_image
from ..core.layouts import Layout
from ..evidence.receptive_field import receptive_fields
from ..loading import ModelSpec, explainer_identity, load_explainer
from ..models.zoo import MODELS
from ..render.pictures import png_bytes
from ..scale.engines import EngineOptions, FileItem, FileShards, connect, run_shards, torch_threads
from .db import ACTIVATION, ENGINE_BOXES, Box, BoxFunction, BoxKey, DatabaseError, Exemplar, ExemplarDB, LayerRecord, tie_key

CROP_MAX_SIDE = 80  # stored crops are downscaled to at most this many pixels on the longer side (grids show 64 px tiles)
DEFAULT_TOP_N = 16


# ----- decoding in workers -----------------------------------------------
@dataclass
class _Item:
    index: int
    tensor: torch.Tensor | None
    sha256: str | None
    error: str | None
    width: int = 0
    height: int = 0


class _Files(torch.utils.data.Dataset):
    def __init__(self, root: Path, rels: Sequence[str], preprocess: Preprocess) -> None:
        self.root = root
        self.rels = list(rels)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, index: int) -> _Item:
        path = self.root / self.rels[index]
        try:
            data = path.read_bytes()
        except OSError as err:
            return _Item(index, None, None, f"unreadable ({err.strerror or err})")
        return _decode_item(index, data, str(path), self.preprocess)


def _decode_item(index: int, data: bytes, name: str, preprocess: Preprocess) -> _Item:
    """The model input of one file's bytes, or why it cannot be had (the same in every engine)."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        rgb = decode_image(data, name=name)
    except ImageInputError as err:
        return _Item(index, None, sha, err.problem.replace(name, "").strip() or str(err))
    except Exception as err:  # a decoder bug must not stop a long run
        return _Item(index, None, sha, f"could not decode ({type(err).__name__}: {err})")
    picture = preprocess.fit(rgb)
    return _Item(index, preprocess.to_tensor(picture)[0], sha, None, rgb.width, rgb.height)


def _keep(items: list[_Item]) -> list[_Item]:
    return items


def default_workers() -> int:
    """Decoding processes that leave two cores to the model's forward pass.

    On a 2-core machine worker processes only compete with the forward pass (measured with
    benchmarks/bench_index.py: 71% of plain forward throughput with 1-2 workers, 84% decoding in
    the main process), so there the default is 0.
    """
    return max(0, min(4, (os.cpu_count() or 1) - 2))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


# ----- forward hooks --------------------------------------------------------
@contextlib.contextmanager
def unit_maxima(model: nn.Module, layouts: Mapping[str, Layout]) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor, int]]]:
    """While active, each forward pass leaves {layer: (max [B, C], flat grid argmax [B, C], grid width)}
    for the layers of ``layouts`` (input side first), each read through its layout."""
    modules = resolve_modules(model, list(layouts))
    found: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def make_hook(name: str):
        layout = layouts[name]

        def hook(module: nn.Module, inputs, output) -> None:
            if not isinstance(output, torch.Tensor):
                raise LayerError(f"layer {name!r} returns {type(output).__name__}, not a tensor", "pick a layer whose output is a tensor")
            values, where = layout.grid_values(output.detach()).max(2)
            found[name] = (values.float().cpu(), where.cpu(), layout.grid(output.shape[1:])[1] if layout.spatial else 1)

        return hook

    with forward_hooks((modules[name], make_hook(name)) for name in layouts):
        yield found


def unit_relevance(
    model: nn.Module, layouts: Mapping[str, Layout], x: torch.Tensor, classes: Sequence[int]
) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, int]]:
    """Per class K and chain layer: relevance of every unit to logit K, the sum over all its positions of
    a * d logit_K / d a [B, C], the grid position of its largest term [B, C], and the grid width.
    One forward and one backward per class."""
    layers = list(layouts)
    modules = resolve_modules(model, layers)
    acts: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs, output):
            acts[name] = output
            return output.clone()  # later in-place ops must not touch the saved activation

        return hook

    found: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, int]] = {}
    with forward_hooks((modules[name], make_hook(name)) for name in layers), torch.enable_grad():
        logits = model(x)
        if logits.dim() != 2:
            raise LayerError(f"the model output has shape {list(logits.shape)}, not [B, classes]", "relevance ranking needs class logits")
        for k in classes:
            if not 0 <= k < logits.shape[1]:
                raise OptionError(f"class {k} is out of range", f"the model has classes 0..{logits.shape[1] - 1}")
            grads = torch.autograd.grad(logits[:, k].sum(), [acts[n] for n in layers], retain_graph=True, allow_unused=True)
            for name, grad in zip(layers, grads):
                layout = layouts[name]
                act = acts[name].detach()
                terms = act * grad.detach() if grad is not None else torch.zeros_like(act)
                width = layout.grid(terms.shape[1:])[1] if layout.spatial else 1
                totals = layout.channel_totals(terms).float().cpu()
                found[f"class:{k}", name] = (totals, layout.grid_values(terms).argmax(2).cpu(), width)
    return found


# ----- one batch, in every engine ------------------------------------------
@dataclass
class _BatchResult:
    decoded: list[int]  # positions in the batch of the files that decoded, the rows of ``found``
    found: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, int]]
    predictions: list[tuple[int, float]] | None


class _BatchForward:
    """One batch through the model: every unit's spatial max (and relevance) and each image's predicted class."""

    def __init__(self, explainer, classes: Sequence[int], blank=None) -> None:
        blank = blank or blank_analysis(explainer)
        self.model, self.device, self.classes = explainer.model, explainer.device, list(classes)
        self.layouts = {info.name: info.layout for info in blank.chain}
        # Each image's predicted class, read off the logits layer's hook (its values are the logits).
        self.logits_layer = blank.logits_layer if blank.has_classes else None

    def __call__(self, batch: Sequence[_Item]) -> _BatchResult:
        decoded = [k for k, item in enumerate(batch) if item.tensor is not None]
        found: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, int]] = {}
        predictions = None
        if decoded:
            x = torch.stack([batch[k].tensor for k in decoded]).to(self.device)
            with unit_maxima(self.model, self.layouts) as maxima:
                if self.classes:
                    found.update(unit_relevance(self.model, self.layouts, x, self.classes))
                else:
                    with torch.inference_mode():
                        self.model(x)
            found.update({(ACTIVATION, name): value for name, value in maxima.items()})
            if self.logits_layer is not None:
                best, predicted = maxima[self.logits_layer][0].double().softmax(1).max(1)
                predictions = list(zip(predicted.tolist(), best.tolist()))
        return _BatchResult(decoded, found, predictions)


class _ShardWorker:
    """A Ray actor's worker: one shard of files (their bytes) decoded as the local engine decodes them, then one batch."""

    def __init__(self, explainer, classes: Sequence[int]) -> None:
        self.preprocess = explainer.preprocess
        self.forward = _BatchForward(explainer, classes)

    def __call__(self, shard: Sequence[FileItem]) -> tuple[list[_Item], _BatchResult]:
        batch = [
            _Item(k, None, None, problem) if data is None else _decode_item(k, data, rel, self.preprocess)
            for k, (rel, _, _, data, problem) in enumerate(shard)
        ]
        result = self.forward(batch)
        for item in batch:
            item.tensor = None  # sent back without the pixels
        return batch, result


@dataclass(frozen=True)
class IndexWorkerFactory:
    spec: ModelSpec
    classes: tuple[int, ...]
    identity: dict | None = None  # the starting process's explainer_identity, checked in every worker

    def __call__(self) -> _ShardWorker:
        return _ShardWorker(self.spec.load_matching(self.identity), self.classes)


def _batch_results(explainer, blank, spec, engine: EngineOptions, root: Path, todo, batch_size: int, workers: int, classes):
    """(batch, result) for consecutive batches of ``todo``; the items' ``index`` is their place in ``todo``."""
    if engine.engine == "ray":
        shards = FileShards(root, todo, batch_size)  # one shard per batch: the same batches as the local engine
        for index, (batch, result) in run_shards(IndexWorkerFactory(spec, tuple(classes), explainer_identity(explainer)), shards, engine):
            for item in batch:
                item.index += index * batch_size
            yield batch, result
        return
    forward = _BatchForward(explainer, classes, blank)
    loader = torch.utils.data.DataLoader(
        _Files(root, [t[0] for t in todo], explainer.preprocess),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_keep,
        worker_init_fn=_worker_init if workers else None,
    )
    with torch_threads(engine.threads):
        for batch in loader:
            yield batch, forward(batch)


# ----- the report -----------------------------------------------------------
@dataclass
class IndexReport:
    db: str
    total: int = 0  # image files seen in the folder
    indexed: int = 0  # processed in this run
    already: int = 0  # found in the database unchanged
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    changed: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # not an image extension
    missing_crops: list[tuple[str, str]] = field(default_factory=list)
    blank_boxes: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): box from a blank image, not the file
    stream_seconds: float = 0.0
    finish_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.stream_seconds if self.stream_seconds > 0 else 0.0

    def format(self, limit: int = 10) -> str:
        lines = [
            f"{self.db}: {self.indexed} images indexed in {self.stream_seconds:.1f}s ({self.images_per_second:.1f} images/s), "
            f"{self.already} already indexed, {len(self.skipped)} skipped, finished in {self.finish_seconds:.1f}s"
        ]

        def listing(title: str, items: list[str]) -> None:
            if not items:
                return
            lines.append(f"{title} ({len(items)}):")
            lines.extend(f"  {item}" for item in items[:limit])
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")

        listing("skipped (unreadable, corrupt or not an image)", [f"{f}: {why}" for f, why in self.skipped])
        listing("ignored (not an image file extension)", self.ignored)
        listing("changed since they were indexed (old entries kept; index into a new --out to refresh)", self.changed)
        listing("crops not made (file moved or changed)", [f"{f}: {why}" for f, why in self.missing_crops])
        listing(
            "receptive fields taken from a blank image, not the file (moved or changed; a later run recomputes them)",
            [f"{f}: {why}" for f, why in self.blank_boxes],
        )
        return "\n".join(lines)


# ----- the streaming pass ---------------------------------------------------
def _meta_for(explainer, model_spec: str, top_n: int, rankings: Sequence[str]) -> dict:
    # Layers, preprocessing and the weights (the same spec can name other weights: --weights, --random-weights).
    identity = explainer_identity(explainer)
    meta = {"model": model_spec, **identity, "top_n": top_n, "rankings": list(rankings), "layouts": dict(sorted(explainer.layouts.items()))}
    return json.loads(json.dumps(meta))  # the form it is stored in (tuples become lists)


def _check_meta(db: ExemplarDB, wanted: dict) -> None:
    have = db.meta()
    if not have:
        return
    for key in ("model", "layers", "preprocess", "top_n", "rankings", "weights", "layouts"):
        if key in ("weights", "layouts") and key not in have:
            continue  # databases from before these were recorded
        if have.get(key) != wanted[key]:
            shown = ",".join(have[key]) if key in ("layers", "rankings") else have.get(key)
            option = {
                "model": "--model",
                "layers": "--layers",
                "preprocess": "--model",
                "top_n": "--top",
                "rankings": "--relevance-class",
                "weights": "--weights",
                "layouts": "--layout",
            }[key]
            raise DatabaseError(
                f"{db.path} was built with {key} {shown!r}, not {wanted[key]!r}",
                f"use the same {option} to add images, or choose a new --out",
            )


def index_folder(
    images_dir: str | os.PathLike[str],
    db_path: str | os.PathLike[str],
    explainer,
    model_spec: str,
    *,
    top_n: int = DEFAULT_TOP_N,
    batch_size: int = 16,
    workers: int | None = None,
    progress: bool = True,
    finish: bool = True,
    reconstructions: bool = False,
    relevance_classes: Sequence[int] = (),
    engine: EngineOptions | None = None,
    spec: ModelSpec | None = None,
) -> IndexReport:
    """Index every image under ``images_dir`` into ``db_path`` (created or resumed/extended).

    The streaming pass runs here (``workers`` decoding processes) or, with ``engine`` Ray, in shards of
    ``batch_size`` files on Ray actors that each load the model from ``spec``; either way the batches
    and their commits are the same, so the database is the same.

    Every unit gets its top ``top_n`` images by spatial max activation (ranking "activation") and,
    for each class K in ``relevance_classes``, by relevance to logit K (ranking "class:K":
    sum over positions of activation x gradient of the logit, located at the largest term).
    """
    from tqdm.auto import tqdm

    if top_n < 1:
        raise OptionError(f"--top must be at least 1, got {top_n}", "use --top 16")
    if batch_size < 1:
        raise OptionError(f"--batch-size must be at least 1, got {batch_size}", "use --batch-size 16")
    engine = (engine or EngineOptions()).checked()
    if engine.engine == "ray" and spec is None:
        raise OptionError("the Ray engine needs the model's ModelSpec", "pass spec=ModelSpec(...) to index_folder")
    if engine.engine == "ray":
        connect(engine)  # a cluster that cannot be reached fails here, before anything is written
    if workers is None:
        workers = default_workers()
    if workers < 0:
        raise OptionError(f"--workers must be 0 or more, got {workers}", "use --workers 2")
    root = Path(images_dir).resolve()
    files, ignored = scan_folder(root)
    preprocess: Preprocess = explainer.preprocess
    model: nn.Module = explainer.model
    device = explainer.device
    size = preprocess.size
    classes = sorted({int(k) for k in relevance_classes})
    rankings = [ACTIVATION] + [f"class:{k}" for k in classes]
    wanted = _meta_for(explainer, model_spec, top_n, rankings)
    report = IndexReport(db=str(db_path), total=len(files), ignored=ignored)
    if classes:  # check before the database records these rankings for good
        with torch.inference_mode(), explainer.forward_lock:
            n_classes = model(torch.zeros(1, 3, size, size, device=device)).shape[-1]
        bad = [k for k in classes if not 0 <= k < n_classes]
        if bad:
            raise OptionError(f"class {bad[0]} is out of range", f"the model has classes 0..{n_classes - 1}")

    blank = blank_analysis(explainer)  # the chain's layouts; also checks early that the engine can analyse this model
    chain = blank.chain
    with ExemplarDB(db_path, create=True) as db:
        _check_meta(db, wanted)
        if not db.layers():
            with db.transaction() as conn:
                db.set_meta(conn, wanted)
                for position, info in enumerate(chain):
                    height, width = info.grid if info.spatial else (1, 1)
                    rf = {"kind": "spatial" if info.spatial else "vector", "boxes": ENGINE_BOXES}
                    conn.execute(
                        "INSERT INTO layers (name, position, channels, height, width, rf) VALUES (?, ?, ?, ?, ?, ?)",
                        (info.name, position, info.channels, height, width, json.dumps(rf)),
                    )
        layer_recs = db.layers()
        with db.transaction() as conn:
            root_id = db.root_id(conn, str(root))
        known = db.known_files(str(root))
        scan = files_to_read(root, files, known)
        todo = scan.todo
        report.already += scan.already
        report.skipped.extend(scan.skipped)

        state = db.load_topn(layer_recs, top_n, rankings)
        start = time.perf_counter()
        bar = tqdm(total=len(todo), unit="img", desc=f"indexing ({engine.engine})", disable=not progress, dynamic_ncols=True)
        try:
            for batch, result in _batch_results(explainer, blank, spec, engine, root, todo, batch_size, workers, classes):
                decoded = [batch[k] for k in result.decoded]
                _commit_batch(db, root_id, todo, known, batch, decoded, result.found, state, report, result.predictions)
                bar.update(len(batch))
                if report.skipped:
                    bar.set_postfix(skipped=len(report.skipped), refresh=False)
        finally:
            bar.close()
            report.stream_seconds = time.perf_counter() - start
        if finish:
            started = time.perf_counter()
            finish_db(db, explainer, progress=progress, report=report)
            if reconstructions:
                fill_reconstructions(db, explainer, progress=progress)
            report.finish_seconds = time.perf_counter() - started
    return report


def _commit_batch(db, root_id, todo, known, batch, decoded, found, state, report, predictions=None) -> None:
    """One transaction: the batch's image rows (with their predicted class, where the chain ends in the
    logits) and the updated top-N states."""
    position = {item.index: k for k, item in enumerate(decoded)}
    merge_rows: list[int] = []
    merge_ids: list[int] = []
    merge_ties: list[int] = []
    with db.transaction() as conn:
        for item in batch:
            rel, size, mtime = todo[item.index]
            prev = known.get(rel)
            if prev is not None and prev.status == "ok":
                if item.sha256 == prev.sha256:  # touched but identical: just remember the new stat
                    conn.execute("UPDATE images SET size = ?, mtime_ns = ? WHERE root_id = ? AND path = ?", (size, mtime, root_id, rel))
                else:
                    report.changed.append(rel)
                continue
            if prev is not None:  # skipped before and changed since: try again
                conn.execute("DELETE FROM images WHERE root_id = ? AND path = ?", (root_id, rel))
            status = "ok" if item.error is None else "skipped"
            top_class, top_probability = (
                predictions[position[item.index]] if predictions is not None and item.index in position else (None, None)
            )
            cur = conn.execute(
                "INSERT INTO images (root_id, path, sha256, size, mtime_ns, status, error, width, height, top_class, top_probability) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    root_id,
                    rel,
                    item.sha256,
                    size,
                    mtime,
                    status,
                    item.error,
                    item.width or None,
                    item.height or None,
                    top_class,
                    top_probability,
                ),
            )
            if item.error is not None:
                report.skipped.append((rel, item.error))
                continue
            report.indexed += 1
            merge_rows.append(position[item.index])
            merge_ids.append(int(cur.lastrowid))
            merge_ties.append(tie_key(rel))
        if merge_rows:
            pick = torch.tensor(merge_rows)
            ids = np.asarray(merge_ids, np.int64)
            ties = np.asarray(merge_ties, np.int64)
            for (ranking, name), top in state.items():
                values, where, width = found[ranking, name]
                where = where[pick].numpy()
                if top.merge(values[pick].numpy(), ids, ties, where // width, where % width):
                    conn.execute("INSERT OR REPLACE INTO topn (ranking, layer, state) VALUES (?, ?, ?)", (ranking, name, top.to_bytes()))


# ----- finishing: relational table, boxes and crops -------------------------
def blank_analysis(explainer):
    """The engine's analysis of a blank (all-zero) model input at the model's input size."""
    size = explainer.preprocess.size
    return explainer.analyze(torch.zeros(1, 3, size, size))


def exemplar_boxes(db: ExemplarDB, explainer, report: IndexReport | None = None, progress: bool = False) -> BoxFunction:
    """The ``boxes`` callback of ``ExemplarDB.materialize``: the engine's ``receptive_fields`` of each
    entry's position, so a stored box equals the box the explorer shows for that layer and position.

    When the model's linearised backward is the same for every image (``fixed_linearisation``: only
    rectifiers and linear ops), every distinct (layer, position) is computed once from an analysis of
    a blank image, through the explainer's shared box cache, unless the database already has it.
    Otherwise (SiLU, max-pool, ...) the box depends on the image: each image that has entries is
    analysed (one forward pass) and its positions of each layer share the backward passes of one
    ``receptive_fields`` call. Vector layers (logits) see the whole image.
    """
    from tqdm.auto import tqdm

    layers = {rec.name: rec for rec in db.layers()}

    def boxes(wanted: dict[str, set[tuple[int, int, int]]]) -> dict[BoxKey, Box]:
        blank = blank_analysis(explainer)
        fixed = blank.record.fixed_linearisation
        stored = _stored_position_boxes(db, layers) if fixed else {}
        found: dict[tuple[str, int, int], Box] = {}  # (layer, row, col) -> box, for boxes that do not depend on the image
        per_layer: dict[str, list[tuple[int, int]]] = {}  # positions to compute on the blank image
        per_image: dict[int, dict[str, set[tuple[int, int]]]] = {}
        for name, keys in wanted.items():
            if layers[name].rf["kind"] != "spatial":
                (box,) = receptive_fields(blank, name, [None])
                found.update(((name, r, c), box) for _, r, c in keys)
            elif fixed:
                found.update(((name, r, c), stored[name, r, c]) for _, r, c in keys if (name, r, c) in stored)
                per_layer[name] = sorted({(r, c) for _, r, c in keys if (name, r, c) not in found})
            else:
                for i, r, c in keys:
                    per_image.setdefault(i, {}).setdefault(name, set()).add((r, c))
        total = sum(map(len, per_layer.values()))
        with tqdm(total=total, desc="receptive fields", unit="pos", disable=not progress or not total, dynamic_ncols=True) as bar:
            for name, positions in per_layer.items():
                for start in range(0, len(positions), 32):  # one backward pass per position; chunks only for the bar
                    chunk = positions[start : start + 32]
                    found.update(((name, r, c), box) for (r, c), box in zip(chunk, receptive_fields(blank, name, chunk)))
                    bar.update(len(chunk))
        out: dict[BoxKey, Box] = {
            (name, i, r, c): found[name, r, c] for name, keys in wanted.items() for i, r, c in keys if (name, r, c) in found
        }
        bar = tqdm(sorted(per_image), desc="receptive fields", unit="img", disable=not progress or not per_image, dynamic_ncols=True)
        for image_id in bar:
            analysis, problem = _image_analysis(db, explainer, image_id)
            if analysis is None:  # a stand-in until a later run finds the file again (its crop is missing too)
                analysis = blank
                if report is not None:
                    report.blank_boxes.append(problem)
            for name, positions in per_image[image_id].items():
                ordered = sorted(positions)
                for (r, c), box in zip(ordered, receptive_fields(analysis, name, ordered)):
                    out[name, image_id, r, c] = box
        return out

    return boxes


def _stored_position_boxes(db: ExemplarDB, layers: dict[str, LayerRecord]) -> dict[tuple[str, int, int], Box]:
    """The engine's boxes already in the database by (layer, row, col): for a model with fixed
    linearisation a box does not depend on the image, so a new entry at a known position costs nothing."""
    engine = {name for name, rec in layers.items() if rec.rf.get("boxes") == ENGINE_BOXES}
    rows = db.conn.execute("SELECT DISTINCT layer, row, col, box_left, box_top, box_right, box_bottom FROM exemplars")
    return {(layer, r, c): tuple(box) for layer, r, c, *box in rows if layer in engine}


def _image_analysis(db: ExemplarDB, explainer, image_id: int):
    """The engine's analysis of an indexed image (the same model input the streaming pass saw),
    or None and the reason when its file is gone or changed."""
    rel, root, sha = db.conn.execute(
        "SELECT i.path, r.path, i.sha256 FROM images i JOIN roots r ON r.id = i.root_id WHERE i.id = ?", (image_id,)
    ).fetchone()
    try:
        picture = _indexed_picture(Path(root) / rel, sha, explainer.preprocess)
    except (OSError, FeatureTreeError) as err:
        return None, (rel, getattr(err, "problem", None) or str(err))
    return explainer.analyze(explainer.preprocess.to_tensor(picture)), None


def _indexed_picture(path: Path, sha: str, preprocess: Preprocess) -> Image.Image:
    """The model-input picture of an indexed file, read once; FeatureTreeError if it changed since it was indexed."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha:
        raise FeatureTreeError("changed since it was indexed")
    return preprocess.fit(decode_image(data, name=str(path)))


def _check_explainer(db: ExemplarDB, explainer) -> None:
    meta = db.meta()
    same_preprocess = json.loads(json.dumps(explainer.preprocess.to_dict())) == meta.get("preprocess")
    if not same_preprocess or meta.get("layers") != list(explainer.layers):
        raise DatabaseError(
            f"{db.path} was indexed with another preprocessing or layer chain than this explainer's",
            "finish it with the model and --layers it was indexed with",
        )


def finish_db(db: ExemplarDB, explainer, progress: bool = True, report: IndexReport | None = None) -> None:
    """Rebuild ``exemplars`` from the top-N state with the engine's receptive-field boxes (computed
    with ``explainer``, the model the database was indexed with) and cut the missing crops."""
    from tqdm.auto import tqdm

    _check_explainer(db, explainer)
    preprocess: Preprocess = explainer.preprocess
    db.materialize(exemplar_boxes(db, explainer, report=report, progress=progress))
    pending = db.conn.execute(
        "SELECT e.ranking, e.layer, e.unit, e.image_id, e.box_left, e.box_top, e.box_right, e.box_bottom, i.path, r.path, i.sha256 "
        "FROM exemplars e JOIN images i ON i.id = e.image_id JOIN roots r ON r.id = i.root_id "
        "WHERE e.crop IS NULL ORDER BY e.image_id"
    ).fetchall()
    by_image: dict[int, list] = {}
    for row in pending:
        by_image.setdefault(row[3], []).append(row)
    for rows in tqdm(by_image.values(), desc="cropping", unit="img", disable=not progress or not by_image, dynamic_ncols=True):
        rel, root, sha = rows[0][8], rows[0][9], rows[0][10]
        path = Path(root) / rel
        try:
            picture = _indexed_picture(path, sha, preprocess)
        except (OSError, FeatureTreeError) as err:
            if report is not None:
                report.missing_crops.append((rel, getattr(err, "problem", None) or str(err)))
            continue
        made: dict[tuple[int, int, int, int], bytes] = {}
        with db.transaction() as conn:
            for ranking, layer, unit, image_id, left, top, right, bottom, *_ in rows:
                box = (left, top, right, bottom)
                if box not in made:
                    made[box] = png_bytes(crop_picture(picture, box), compress_level=6)
                sha_png = db.put_blob(conn, made[box])
                conn.execute(
                    "UPDATE exemplars SET crop = ? WHERE ranking = ? AND layer = ? AND unit = ? AND image_id = ?",
                    (sha_png, ranking, layer, unit, image_id),
                )
    db.collect_garbage()


def crop_picture(picture: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    crop = picture.crop(box)
    scale = CROP_MAX_SIDE / max(crop.size)
    if scale < 1:
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.BICUBIC)
    return crop


# ----- guided-backprop reconstructions -------------------------------------
def reconstruct(explainer, entries: Sequence[Exemplar]) -> list[bytes]:
    """Guided-backprop reconstruction of each entry (its unit seeded at its max location), cropped to its box, as PNG."""
    std = torch.tensor(explainer.preprocess.std).view(3, 1, 1)
    out: list[bytes] = []
    analyses: dict[int, object] = {}
    for ex in entries:
        analysis = analyses.get(ex.image_id)
        if analysis is None:
            analyses.clear()  # one image's graph at a time
            # The engine's analysis: the forward record and each layer's layout from one forward pass.
            analysis = analyses[ex.image_id] = explainer.analyze(load_image(ex.file))
            problem = analysis.guided_problem
            if problem:  # reconstructions are guided backprop: refuse them where it means nothing
                raise GuidedUndefinedError(
                    f"no reconstructions: {problem}", "index without --reconstructions; the image patches still show each unit"
                )
        info = analysis.layer_info(ex.layer)
        seed = info.layout.point_seed(analysis.activation(ex.layer), ex.unit, (ex.row, ex.col))
        grad = analysis.backward(ex.layer, None, seed, "guided")
        delta = (grad[0].detach().cpu() / std).permute(1, 2, 0).numpy()
        left, top, right, bottom = ex.box
        region = delta[top:bottom, left:right]
        scale = float(np.percentile(np.abs(region), 99.5)) if region.size else 0.0
        if scale <= 0:
            scale = float(np.abs(region).max(initial=0.0))
        shown = np.full(region.shape, 0.5, np.float32) if scale == 0 else 0.5 + 0.5 * np.clip(region / scale, -1, 1)
        image = Image.fromarray((shown * 255 + 0.5).astype(np.uint8), "RGB")
        out.append(png_bytes(crop_picture(image, (0, 0, image.width, image.height)), compress_level=6))
    return out


def ensure_reconstructions(db: ExemplarDB, entries: Sequence[Exemplar], explainer) -> list[bytes | None]:
    """Reconstruction PNGs for ``entries``, computing and caching the missing ones."""
    result: list[bytes | None] = [db.blob(ex.recon) for ex in entries]
    missing = [k for k, png in enumerate(result) if png is None]
    if not missing:
        return result
    todo = []
    for k in missing:
        if _unchanged(db, entries[k]):  # a moved or edited file would give another image's reconstruction
            todo.append(k)
    if todo and (explainer is None or not _matches(db, explainer, {entries[k].layer for k in todo})):
        explainer = explainer_for_db(db)  # the given model sees images differently from the one the index was built with
    pngs = reconstruct(explainer, [entries[k] for k in todo]) if todo else []
    with db.transaction() as conn:
        for k, png in zip(todo, pngs):
            db.set_recon(conn, entries[k], db.put_blob(conn, png))
            result[k] = png
    return result


def _unchanged(db: ExemplarDB, ex: Exemplar) -> bool:
    """Whether the entry's file still has the content that was indexed."""
    row = db.conn.execute("SELECT sha256 FROM images WHERE id = ?", (ex.image_id,)).fetchone()
    try:
        return row is not None and hashlib.sha256(ex.file.read_bytes()).hexdigest() == row[0]
    except OSError:
        return False


def _matches(db: ExemplarDB, explainer, layers: set[str]) -> bool:
    meta = db.meta()
    same_preprocess = json.loads(json.dumps(explainer.preprocess.to_dict())) == meta.get("preprocess")
    same_weights = meta.get("weights", explainer.weights_fingerprint()) == explainer.weights_fingerprint()
    return meta.get("model") == explainer.name and same_preprocess and same_weights and layers <= set(explainer.layers)


def fill_reconstructions(db: ExemplarDB, explainer, progress: bool = True, layer: str | None = None) -> None:
    from tqdm.auto import tqdm

    layers = [layer] if layer else [rec.name for rec in db.layers()]
    for name in tqdm(layers, desc="reconstructions", unit="layer", disable=not progress):
        entries = [ex for ranking in db.rankings() for ex in db.exemplars(name, ranking=ranking) if ex.recon is None]
        entries.sort(key=lambda ex: ex.image_id)
        for start in range(0, len(entries), 64):
            ensure_reconstructions(db, entries[start : start + 64], explainer)


def explainer_for_db(db: ExemplarDB, device: str = "cpu"):
    """Load the model a database was built with (its ``--model`` and ``--layers``).

    Only built-in models are loaded this way: a ``file.py:function`` spec read from a database
    would run code that came with the file.
    """

    meta = db.meta()
    if meta["model"] not in MODELS:
        raise DatabaseError(
            f"{db.path} was built with the custom model {meta['model']!r}, which is not loaded from a database",
            "pass that model explicitly (featuretree serve --db DB --model SPEC, or exemplar_grid_png(..., explainer=...))",
        )
    explainer = load_explainer(meta["model"], ",".join(meta["layers"]), device)
    explainer.preprocess = Preprocess.from_dict(meta["preprocess"])
    return explainer


def layer_summary(db: ExemplarDB, layer: str, top: int = 3, ranking: str = ACTIVATION) -> list[tuple[int, list[tuple[float, str]]]]:
    """Per unit: its best ``top`` (value, file) pairs."""
    rec = db.layer(layer)
    db.check_ranking(ranking)
    by_unit: dict[int, list[tuple[float, str]]] = {u: [] for u in range(rec.channels)}
    for ex in db.exemplars(layer, limit=top, ranking=ranking):
        by_unit[ex.unit].append((ex.value, ex.path))
    return sorted(by_unit.items())


__all__ = [
    "IMAGE_EXTENSIONS",
    "IndexReport",
    "ensure_reconstructions",
    "explainer_for_db",
    "finish_db",
    "exemplar_boxes",
    "index_folder",
    "reconstruct",
    "scan_folder",
]
