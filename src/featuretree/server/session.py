"""Server-side state: loaded models, uploaded photos, analyses and rendered pictures.

Everything lives on one ``Workspace`` object owned by the app (no module-level state).
Each cache is an LRU bounded by bytes, so a long session cannot exhaust memory:
- uploads: the raw file bytes, keyed by their SHA-256;
- analyses: one ``Analysis`` (one forward pass, reused by every expansion) per
  (model, image id, device);
- evidence: per-node input-space evidence, keyed by (model, image, device, path, rule, seed mode);
- pictures: encoded PNGs of node views and exemplar grids;
- verifications: measured ablation effects of a node's shown children (one batched forward pass each).

The model's capture hooks are shared, so every forward pass the server runs itself (edge
verification, exemplar reconstructions) holds the explainer's ``forward_lock``.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..core.cache import ByteLRU, tensor_bytes
from ..core.errors import FeatureTreeError, ImageInputError, ModelError, OptionError, check_choice, did_you_mean
from ..core.images import decode_image, load_image
from ..core.samples import SAMPLES, sample_path
from ..core.units import Unit
from ..evidence.evidence import EVIDENCE_KINDS, NodeEvidence
from ..exemplars import exemplar_grid_png
from ..exemplars.db import ExemplarDB
from ..exemplars.sheets import unit_grid
from ..explainer import Analysis, Explainer
from ..render.pictures import (
    box_image,
    contribution_image,
    crop_image,
    encode_picture,
    guided_image,
    heatmap_image,
    original_tree_gain,
    png_bytes,
)
from ..tree.verify import EdgeCheck, verify_children
from .prefetch import Prefetcher

UPLOAD_ID = re.compile(r"^[0-9a-f]{64}$")
AGGREGATE_PREFIX = "aggregate:"  # image ids of `serve --aggregate DIR`: "aggregate:" + a path the database holds
VIEWS: tuple[str, ...] = ("guided", "guided_original", "heatmap", "contribution", "rf_crop", "rf_box")
# The evidence each picture view needs (see Analysis.evidence_many).
VIEW_KINDS: dict[str, tuple[str, ...]] = {
    "guided": ("guided",),
    "guided_original": ("guided",),
    "heatmap": ("heat",),
    "contribution": ("contribution",),  # no backward pass to the pixels: free once the parent is expanded
    "rf_crop": ("box",),
    "rf_box": ("box",),
}


# How node pictures are encoded: "png" for /api/picture.png, "view" for the format the HTML export
# uses for that view (JPEG for the photo-like ones: a seventh of the bytes, 5x faster to encode).
PICTURE_ENCODINGS: tuple[str, ...] = ("png", "view")


GUIDED_VIEWS: tuple[str, ...] = ("guided", "guided_original")


def unavailable_views(analysis: Analysis) -> dict[str, str]:
    """The views this analysis cannot draw, with the reason (guided backprop undefined for the model)."""
    problem = analysis.guided_problem
    return {view: problem for view in GUIDED_VIEWS} if problem else {}


def check_view(analysis: Analysis, view: str, path: tuple[Unit, ...] | None = None) -> None:
    """Refuse a view the model cannot draw, or (with ``path``) one that has no picture of that node."""
    why = unavailable_views(analysis).get(view)
    if why:
        raise OptionError(
            f"the {view} view is not available for this model: {why}", "use the contribution, heatmap or a receptive-field view"
        )
    problem = node_view_problem(analysis, path, view) if path is not None else None
    if problem:
        raise OptionError(f"the {view} view has no picture of this node: {problem}", "pick a node of a spatial layer or another view")


def node_view_problem(analysis: Analysis, path: tuple[Unit, ...], view: str) -> str | None:
    """Why ``view`` has no picture of this node (the contribution map of a vector layer), or None."""
    if view != "contribution" or analysis.layer_info(path[-1].layer).layout.spatial:
        return None
    index = analysis.layers.index(path[-1].layer)  # a vector node is mapped at the layer below, if that has positions
    if index > 0 and analysis.layer_info(analysis.layers[index - 1]).layout.spatial:
        return None
    return f"{path[-1]} is in a vector layer ({path[-1].layer}) with no layer with positions right below it"


class TooLargeError(ImageInputError):
    """An upload over the configured byte limit (HTTP 413)."""


class NotFoundError(FeatureTreeError):
    """An id (model, image, file) the server does not know (HTTP 404)."""


def analysis_bytes(value: object) -> int:
    """Memory an Analysis may hold: its retained autograd graph, its recorded activations, and its
    gradient memo at full budget (the memo grows after the analysis is cached, so count its bound)."""
    if isinstance(value, Analysis):
        acts = sum(tensor_bytes(t) for t in value.record.activations.values())
        return value.record.graph_bytes + acts + tensor_bytes(value.record.input) + value.memo.max_bytes + 64 * 1024
    return tensor_bytes(value)


def evidence_bytes(value: object) -> int:
    if isinstance(value, NodeEvidence):
        arrays = (value.guided, value.heat, value.contribution, value.gradient)
        return sum(int(a.nbytes) for a in arrays if a is not None) + 256
    return 64


def bytes_len(value: object) -> int:
    return len(value) if isinstance(value, (bytes, bytearray)) else 64


def decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes into upright RGB, refusing non-images, corrupt files and decompression bombs."""
    return decode_image(data, max_pixels, name="the upload")


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 64_000_000
    upload_cache_bytes: int = 256 * 2**20
    analysis_cache_bytes: int = 1024 * 2**20
    evidence_cache_bytes: int = 256 * 2**20
    picture_cache_bytes: int = 128 * 2**20
    memo_bytes: int = 128 * 2**20  # per-analysis gradient memo
    verification_cache_bytes: int = 8 * 2**20


@dataclass(frozen=True)
class Verification:
    """Measured effect of zeroing each shown child of a node (alone), and of zeroing them all together."""

    children: tuple[EdgeCheck, ...]
    joint: EdgeCheck | None  # all channels zeroed at once (None for fewer than two)


@dataclass(frozen=True)
class ExemplarInfo:
    """What the server needs to know about its exemplar database, read once at start."""

    path: Path
    model: str
    layers: dict[str, int]  # layer name -> channels
    top_n: int
    grid_size: tuple[int, int]  # width, height of every unit's grid PNG


def read_exemplar_info(path: str | os.PathLike[str]) -> ExemplarInfo:
    """Open the database once (clear errors for a missing or foreign file) and read its model and layers."""

    with ExemplarDB(path) as db:
        meta = db.meta()
        layers = {rec.name: rec.channels for rec in db.layers()}
    if not meta.get("model") or not layers:
        raise OptionError(f"the exemplar database {path} has no finished index", "run `featuretree index IMAGES_DIR --out DB` first")
    top_n = int(meta.get("top_n", 16))
    grid = unit_grid([], [], [], "", top_n)  # every unit's grid has top_n slots, so one size for all
    return ExemplarInfo(Path(path).resolve(), str(meta["model"]), layers, top_n, grid.size)


def verification_bytes(value: object) -> int:
    return 256 * (len(value.children) + 2) if isinstance(value, Verification) else 64


class KeyLocks:
    """One lock per key being built, so concurrent requests for the same thing wait for one
    computation instead of repeating it."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, list] = {}  # key -> [lock, threads holding or waiting]
        self._guard = threading.Lock()

    @contextmanager
    def building(self, key: Hashable) -> Iterator[None]:
        """Hold ``key``'s lock (created on first use, dropped when no thread holds or waits for it)."""
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1  # holders and waiters
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0 and self._locks.get(key) is entry:
                    del self._locks[key]

    def once(self, cache: ByteLRU, key: Hashable, build: Callable[[], object]):
        """``cache[key]``, built by ``build()`` at most once at a time per key (two tabs share one computation)."""
        found = cache.get(key)
        if found is not None:
            return found
        with self.building(key):
            found = cache.get(key)
            if found is None:
                found = build()
                cache.put(key, found)
            return found


class Workspace:
    """All mutable server state; one per app."""

    def __init__(
        self,
        models: Sequence[str],
        device: str = "cpu",
        limits: Limits | None = None,
        loader: Callable[[str, str], Explainer] | None = None,
        exemplar_db: str | os.PathLike[str] | None = None,
        prefetch: bool = True,
    ) -> None:
        self.models = list(models)
        self.device = device
        self.limits = limits or Limits()
        self._loader = loader or (lambda name, dev: Explainer.from_zoo(name, device=dev))
        self._explainers: dict[str, Explainer] = {}
        self._explainer_lock = threading.Lock()
        self.uploads: ByteLRU[bytes] = ByteLRU(self.limits.upload_cache_bytes, bytes_len)
        self.analyses: ByteLRU[Analysis] = ByteLRU(self.limits.analysis_cache_bytes, analysis_bytes)
        self.evidence_cache: ByteLRU[NodeEvidence] = ByteLRU(self.limits.evidence_cache_bytes, evidence_bytes)
        self.pictures: ByteLRU[bytes] = ByteLRU(self.limits.picture_cache_bytes, bytes_len)
        self.verifications: ByteLRU[Verification] = ByteLRU(self.limits.verification_cache_bytes, verification_bytes)
        self.exemplars: ExemplarInfo | None = read_exemplar_info(exemplar_db) if exemplar_db is not None else None
        # One lock per key being built, so two tabs asking for the same analysis run one forward pass.
        self._locks = KeyLocks()
        self.forward_passes = 0
        self.evidence_batches = 0  # evidence_many calls made for pictures (tests read it)
        # Children of the nodes the explorer just showed, expanded in the background (see prefetch_children).
        self.prefetcher: Prefetcher | None = Prefetcher() if prefetch else None
        self.aggregate = None  # the AggregateSource of `serve --aggregate DIR` (server/aggregate_view.py)

    def close(self) -> None:
        """Stop background work (the app calls this when it shuts down)."""
        if self.prefetcher is not None:
            self.prefetcher.close()

    # ----- models ----------------------------------------------------------
    def explainer(self, model: str) -> Explainer:
        if model not in self.models:
            hint = did_you_mean(model, self.models)
            raise NotFoundError(f"unknown model {model!r}", hint or f"this server offers {', '.join(self.models)}")
        with self._explainer_lock:
            if model not in self._explainers:
                try:
                    explainer = self._loader(model, self.device)
                except KeyError:
                    raise ModelError(f"model {model!r} could not be loaded", "check the server's --model option") from None
                explainer.cache_bytes = self.limits.memo_bytes
                self._explainers[model] = explainer
            return self._explainers[model]

    # ----- images ----------------------------------------------------------
    def add_upload(self, data: bytes) -> tuple[str, Image.Image]:
        if len(data) > self.limits.max_upload_bytes:
            raise TooLargeError(
                f"the upload is {len(data) / 2**20:.1f} MB, over the limit of {self.limits.max_upload_bytes / 2**20:.0f} MB",
                "upload a smaller image, or start the server with a larger --max-upload-mb",
            )
        picture = decode_upload(data, self.limits.max_pixels)
        digest = hashlib.sha256(data).hexdigest()
        self.uploads.put(digest, data)
        return digest, picture

    def load_picture(self, image: str) -> tuple[Image.Image, str]:
        """The RGB photo for an image id (a sample name, an upload digest, or an aggregated image) and its display name."""
        if image.startswith(AGGREGATE_PREFIX) and self.aggregate is not None:
            return self.aggregate.load_picture(image[len(AGGREGATE_PREFIX) :], self.limits.max_pixels)
        if image in SAMPLES:
            path = sample_path(image)
            return load_image(path), path.name
        if UPLOAD_ID.match(image):
            data = self.uploads.get(image)
            if data is not None:
                return decode_upload(data, self.limits.max_pixels), f"upload-{image[:12]}"
            raise NotFoundError(f"uploaded image {image[:12]}... is no longer on the server", "upload the photo again")
        raise NotFoundError(f"unknown image {image[:80]!r}", f"use a sample ({', '.join(SAMPLES)}) or the id returned by an upload")

    # ----- analyses --------------------------------------------------------
    def analysis(self, model: str, image: str) -> Analysis:
        """The cached single-forward-pass Analysis of ``image`` under ``model`` (built once)."""
        explainer = self.explainer(model)
        key = (model, image, str(explainer.device))
        found = self.analyses.get(key)
        if found is not None:
            return found
        with self._locks.building(key):
            found = self.analyses.get(key)
            if found is not None:
                return found
            picture, name = self.load_picture(image)
            # Explainer.analyze serialises forward passes through one model (its hooks
            # are shared); backward passes on different analyses may overlap.
            analysis = explainer.analyze(picture)
            analysis.image.source = name
            self.forward_passes += 1
            self.analyses.put(key, analysis)
            return analysis

    def evidence(
        self, model: str, image: str, path: tuple[Unit, ...], rule: str, seed_mode: str, kinds: tuple[str, ...] = EVIDENCE_KINDS
    ) -> NodeEvidence:
        """Node evidence of the given kinds only: one picture view costs one backward pass."""
        analysis = self.analysis(model, image)
        key = (model, image, str(analysis.explainer.device), path, rule, seed_mode, kinds)
        found = self.evidence_cache.get(key)
        if found is None:
            found = analysis.evidence(path, rule, seed_mode, kinds)
            self.evidence_cache.put(key, found)
        return found

    def picture(self, model: str, image: str, path: tuple[Unit, ...], view: str, rule: str, seed_mode: str, encoding: str = "png") -> bytes:
        """One node's picture of ``view``, encoded as PNG (``encoding="png"``) or in the view's own format as
        in the HTML export (``"view"``: JPEG for the photo-like views, see ``render.PICTURE_FORMATS``)."""
        check_choice(encoding, PICTURE_ENCODINGS, "picture encoding")
        analysis = self.analysis(model, image)
        check_view(analysis, view, path)
        key = (encoding, model, image, str(analysis.explainer.device), path, view, rule, seed_mode)
        found = self.pictures.get(key)
        if found is not None:
            return found
        evidence = self.evidence(model, image, path, rule, seed_mode, VIEW_KINDS[view])
        # The original look's gain is fixed by the root's guided image.
        root = self.evidence(model, image, path[:1], rule, seed_mode, VIEW_KINDS[view]) if view == "guided_original" else None
        img = view_image(view, evidence, analysis, root)
        data = png_bytes(img) if encoding == "png" else encode_picture(view, img)[1]
        self.pictures.put(key, data)
        return data

    def cached_picture(
        self, model: str, image: str, path: tuple[Unit, ...], view: str, rule: str, seed_mode: str, encoding: str = "png"
    ) -> bytes | None:
        """``picture`` if it is already drawn, else None, without touching the image's analysis."""
        device = str(self.explainer(model).device)
        return self.pictures.get((encoding, model, image, device, path, view, rule, seed_mode))

    def pictures_many(
        self,
        model: str,
        image: str,
        paths: Sequence[tuple[Unit, ...]],
        view: str,
        rule: str,
        seed_mode: str,
        encoding: str = "png",
    ) -> list[bytes | None]:
        """``picture`` of many nodes (None where the view has none, see ``node_view_problem``); the evidence none
        of the caches holds yet is computed in one ``Analysis.evidence_many`` call (siblings share its passes)."""
        analysis = self.analysis(model, image)
        check_view(analysis, view)
        drawable = [path for path in paths if node_view_problem(analysis, path, view) is None]
        device = str(analysis.explainer.device)
        kinds = VIEW_KINDS[view]
        wanted = list(drawable)
        if view == "guided_original":
            wanted += [path[:1] for path in drawable]  # its gain comes from the root's guided evidence

        def evidence_key(path: tuple[Unit, ...]) -> tuple:
            return (model, image, device, path, rule, seed_mode, kinds)

        todo = []
        for path in wanted:
            drawn = self.pictures.get((encoding, model, image, device, path, view, rule, seed_mode)) is not None
            if not drawn and path not in todo and self.evidence_cache.get(evidence_key(path)) is None:
                todo.append(path)
        if todo:
            # One batch at a time per image and kind: a click whose pictures the prefetcher is computing
            # waits for that batch instead of computing it a second time.
            with self._locks.building(("evidence", model, image, device, rule, seed_mode, kinds)):
                todo = [path for path in todo if self.evidence_cache.get(evidence_key(path)) is None]
                if todo:
                    self.evidence_batches += 1
                    for path, found in zip(todo, analysis.evidence_many(todo, rule, seed_mode, kinds)):
                        self.evidence_cache.put(evidence_key(path), found)
        # Each picture now renders from cached evidence (an evicted entry is recomputed alone: same result).
        # Rendering them in threads was measured no faster on 2 busy cores (59 against 60 ms for five heatmaps).
        return [self.picture(model, image, path, view, rule, seed_mode, encoding) if path in drawable else None for path in paths]

    def prefetch_children(
        self, model: str, image: str, paths: Sequence[tuple[Unit, ...]], k: int, view: str, rule: str, seed_mode: str
    ) -> None:
        """In the background, expand each of ``paths`` and render its children's ``view``: the work one
        click on that node in the explorer asks for (``/api/expand``, pictures in the views' export formats),
        so the click finds it cached."""
        if self.prefetcher is None:
            return

        def job(path: tuple[Unit, ...]) -> Callable[[], None]:
            def run() -> None:
                # Only for an image still in the cache: never a forward pass for a page the user has left.
                analysis = self.analyses.get((model, image, str(self.explainer(model).device)))
                if analysis is None:
                    return
                expansion = analysis.expand(path, k, rule, seed_mode)
                kids = [(*path, child.unit) for child in expansion.children]
                if kids:
                    self.pictures_many(model, image, kids, view, rule, seed_mode, encoding="view")

            return run

        self.prefetcher.submit([((model, image, path, k, view, rule, seed_mode), job(path)) for path in paths])

    def verification(self, model: str, image: str, path: tuple[Unit, ...], channels: Sequence[int], seed_mode: str) -> Verification:
        """Ablate each of ``channels`` (of the layer below ``path[-1]``) alone, and all together, in one batched pass."""
        analysis = self.analysis(model, image)
        channels = tuple(int(c) for c in channels)
        key = ("verify", model, image, str(analysis.explainer.device), path, channels, seed_mode)

        def build() -> Verification:
            checks, joint = verify_children(analysis, path, channels, seed_mode=seed_mode)
            return Verification(tuple(checks), joint)

        return self._locks.once(self.verifications, key, build)

    def exemplar_png(self, model: str, layer: str, unit: int) -> bytes:
        """The exemplar grid [image patches | reconstructions] of one unit from the server's database."""
        info, explainer = exemplar_source(self, model)
        # The database may grow while the server runs (`featuretree index` into it): key on its files' state.
        stamp = tuple(_file_state(p) for p in _db_files(info.path))
        key = ("exemplars", str(info.path), stamp, layer, int(unit))

        def build() -> bytes:
            # Missing reconstructions are computed with the server's model (a forward pass with hooks).
            with explainer.forward_lock:
                return exemplar_grid_png(info.path, layer, int(unit), explainer)

        return self._locks.once(self.pictures, key, build)

    def photo_png(self, model: str, image: str) -> bytes:
        analysis = self.analysis(model, image)
        key = ("photo", model, image, str(analysis.explainer.device))
        found = self.pictures.get(key)
        if found is None:
            found = png_bytes(analysis.image.picture)
            self.pictures.put(key, found)
        return found

    def sample_thumb(self, name: str, size: int = 160) -> bytes:
        if name not in SAMPLES:
            raise NotFoundError(f"unknown sample {name[:80]!r}", f"use one of {', '.join(SAMPLES)}")
        key = ("thumb", name, size)
        found = self.pictures.get(key)
        if found is None:
            picture, _ = self.load_picture(name)
            picture.thumbnail((size, size))
            found = png_bytes(picture)
            self.pictures.put(key, found)
        return found


def view_image(view: str, evidence: NodeEvidence, analysis: Analysis, root: NodeEvidence | None = None) -> Image.Image:
    """One node's picture of ``view`` from its evidence (``root``: the root's, for guided_original)."""
    picture = analysis.image.picture
    if view == "guided":
        return guided_image(evidence, "robust")
    if view == "guided_original":
        gain = original_tree_gain(root) if root is not None else 0.0
        return guided_image(evidence, "original", analysis.explainer.preprocess.mean, gain)
    if view == "heatmap":
        return heatmap_image(evidence, picture)
    if view == "contribution":
        return contribution_image(evidence, picture)
    if view == "rf_crop":
        return crop_image(evidence, picture)
    return box_image(evidence, picture)


def exemplar_source(workspace: Workspace, model: str) -> tuple[ExemplarInfo, Explainer]:
    """The server's exemplar database and the explainer of ``model``, which must be the database's."""
    info = workspace.exemplars
    if info is None:
        raise NotFoundError(
            "this server has no exemplar database", "start it with `featuretree serve --db DB` (build DB with `featuretree index`)"
        )
    explainer = workspace.explainer(model)
    if model != info.model:
        raise OptionError(
            f"the exemplar database was built with model {info.model!r}, not {model!r}",
            f"switch the page to {info.model}, or index with --model {model} and restart with that --db",
        )
    return info, explainer


def exemplar_classes(workspace: Workspace, model: str, layer: str, unit: int) -> dict[str, object]:
    """The classes the model predicted for one unit's exemplar images: ``{"classes": [{index, name,
    count}], "of": how many exemplars have a recorded prediction}``, most frequent first."""
    info, explainer = exemplar_source(workspace, model)
    names = explainer.class_names or []
    with ExemplarDB(info.path) as db:
        db.check_unit(layer, int(unit))
        counts, total = db.exemplar_classes(layer, int(unit))
    return {
        "classes": [{"index": c, "name": names[c] if 0 <= c < len(names) else f"class {c}", "count": n} for c, n in counts],
        "of": total,
    }


def _db_files(path: Path) -> tuple[Path, Path]:
    return path, path.with_name(path.name + "-wal")


def _file_state(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


__all__ = [
    "AGGREGATE_PREFIX",
    "VIEWS",
    "ExemplarInfo",
    "Limits",
    "NotFoundError",
    "TooLargeError",
    "Verification",
    "Workspace",
    "decode_upload",
    "png_bytes",
    "read_exemplar_info",
]
