"""Saving a tree: tree.json + picture files, and one self-contained HTML page (pictures inlined).

Each picture is made and encoded once, in a thread pool (numpy, scipy and Pillow release the
GIL), in the format that fits its kind (``render.PICTURE_FORMATS``); the HTML page inlines those
very bytes. Output is written to a temporary folder next to the target and moved into place file
by file only once everything is rendered, so a failure never leaves half-written output.
"""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import OutputError
from .pictures import MIME_TYPES, encode_picture, node_images, original_tree_gain

if TYPE_CHECKING:
    from ..tree.model import FeatureTree, Node


def ensure_writable(out_dir: str | os.PathLike[str]) -> Path:
    """Fail early (before any computation) if ``out_dir`` cannot be created or written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} exists and is not a folder", "choose a folder path for --out")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise OutputError(f"cannot create {out}: {parent} is a file, not a folder", "choose another --out folder")
    try:  # A real write, since permission bits say little for root or read-only mounts.
        fd, probe = tempfile.mkstemp(prefix=".featuretree-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"cannot write to {out} ({err.strerror} in {parent})", "choose a writable --out folder") from None
    return out


def picture_workers() -> int:
    """Threads that make and encode pictures: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def render_images(tree: FeatureTree, workers: int | None = None, write_to: Path | None = None) -> dict[str, bytes]:
    """Encoded bytes of the photo and every node picture, keyed by relative file name; sets node.images.

    Every picture is made and encoded exactly once, nodes in parallel on ``workers`` threads
    (default: one per core); the file name's extension gives the format (``render.PICTURE_FORMATS``).
    With ``write_to``, each worker also writes its files under that folder as soon as they are encoded.
    """
    files: dict[str, bytes] = {}
    if tree.picture is None or not tree.evidence:
        return files
    picture = tree.picture
    picture.load()  # read by every thread below: make sure no lazy loading is left
    root_evidence = tree.evidence.get(tree.root.id)
    gain = original_tree_gain(root_evidence) if root_evidence is not None else 0.0
    mean = tuple(tree.model["preprocess"]["mean"])
    jobs = [(number, node) for number, node in enumerate(tree.walk()) if node.id in tree.evidence]

    def encode_node(job: tuple[int, Node]) -> dict[str, tuple[str, bytes]]:
        number, node = job
        encoded = {}
        for kind, img in node_images(tree.evidence[node.id], picture, mean, gain).items():
            extension, data = encode_picture(kind, img)
            encoded[kind] = (f"images/n{number:04d}_{kind}.{extension}", data)
            if write_to is not None:
                (write_to / encoded[kind][0]).write_bytes(data)
        return encoded

    def encode_photo() -> tuple[str, bytes]:
        extension, data = encode_picture("photo", picture)
        if write_to is not None:
            (write_to / f"photo.{extension}").write_bytes(data)
        return extension, data

    if write_to is not None:
        (write_to / "images").mkdir(parents=True, exist_ok=True)
    workers = picture_workers() if workers is None else max(1, workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featuretree-pictures") as pool:
        photo = pool.submit(encode_photo)
        results = pool.map(encode_node, jobs)  # in order: file names and node.images are deterministic
        photo_extension, photo_data = photo.result()
        files[f"photo.{photo_extension}"] = photo_data
        for (_, node), encoded in zip(jobs, results):
            node.images = {}
            for kind, (name, data) in encoded.items():
                files[name] = data
                node.images[kind] = name
    return files


def write_report(out_dir: str | os.PathLike[str], stem: str, markdown: str, csv: str, png: bytes) -> Path:
    """Write a report as ``stem``.md, .csv and .png (``png``: encoded PNG bytes) into ``out_dir`` (created if needed)."""
    out = ensure_writable(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(markdown)
    (out / f"{stem}.csv").write_text(csv)
    (out / f"{stem}.png").write_bytes(png)
    return out


def _static(name: str) -> str:
    return resources.files("featuretree").joinpath("static", name).read_text(encoding="utf-8")


# Views the page draws itself from the photo and node.box, so they need no inlined image.
_CSS_VIEWS = ("rf_crop", "rf_box")


def _data_uri(name: str, data: bytes) -> str | None:
    """The file's own bytes as a data URI (never decoded or re-encoded); None if ``name`` is not a picture."""
    mime = MIME_TYPES.get(name.rpartition(".")[2].lower())
    return None if mime is None else f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def html_images(tree: FeatureTree, files: dict[str, bytes]) -> dict[str, str]:
    """The pictures the page shows, by file name (the photo as "photo"), each inlined exactly once.

    The receptive-field views are left out: the page draws them from the photo and each node's box.
    """
    drawn = {node.images[view] for node in tree.walk() for view in _CSS_VIEWS if view in node.images}
    photo = next((name for name in files if name.rpartition(".")[0] == "photo"), None)
    images = {}
    for name, data in files.items():
        if name in drawn:
            continue
        uri = _data_uri(name, data)
        if uri is not None:
            images["photo" if name == photo else name] = uri
    images.setdefault("photo", "")
    return images


def render_html(tree: FeatureTree, files: dict[str, bytes] | None = None, inline_frame: bool = False) -> str:
    """One HTML page with the tree, its pictures as data URIs, and the viewer script inlined.

    Node pictures are inlined with the bytes of their files (see ``html_images``); the receptive-field
    views are drawn from the photo and each node's box.
    """
    if files is None:
        files = render_images(tree)
    images = html_images(tree, files)
    payload = json.dumps({"tree": tree.to_dict(), "images": images}).replace("</", "<\\/")
    title = html.escape(f"featuretree: {tree.root.label or tree.root.id} ({tree.image.get('source', '')})")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{_static("tree_view.css")}
{_static("export_page.css")}</style></head>
<body><div id="featuretree"></div>
<script>{_static("tree_view.js")}</script>
<script>{_static("export_page.js")}</script>
<script>const FT_DATA = {payload};
FeatureTreeView.renderPage(document.getElementById("featuretree"), FT_DATA.tree, FT_DATA.images);</script>
</body></html>
"""
    if inline_frame:
        # Notebooks: isolate the page's CSS and script in an iframe.
        return f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:720px;border:1px solid #ddd"></iframe>'
    return page


def save_tree(tree: FeatureTree, out_dir: str | os.PathLike[str], html: bool = True, timings: dict[str, float] | None = None) -> Path:
    """Write tree.json, images/*, the photo and tree.html into ``out_dir`` atomically.

    ``timings``, when given, receives the seconds spent on each phase: pictures (made, encoded and written
    to the staging folder), html, write (the rest, and moving everything into place).
    """
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + now - clock
        clock = now

    out = ensure_writable(out_dir)
    parent = out.parent if not out.exists() else out
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".featuretree-", dir=parent))
    except OSError as err:
        raise OutputError(f"cannot write to {out} ({err.strerror})", "choose a writable --out folder") from None
    try:
        # The pictures go into the staging folder as they are encoded; the rest follows.
        files = render_images(tree, write_to=staging)
        written = set(files)
        files["tree.json"] = tree.to_json().encode("utf-8")
        phase("pictures")
        if html:
            files["tree.html"] = render_html(tree, files).encode("utf-8")
            phase("html")
        for name, data in files.items():
            if name not in written:
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        if not out.exists():
            # mkdtemp makes the folder private; give it the usual permissions (umask applies).
            umask = os.umask(0)
            os.umask(umask)
            staging.chmod(0o777 & ~umask)
            staging.rename(out)
            return out
        for name in files:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, out / name)
        # Node pictures of an earlier, larger tree in the same folder (or an earlier format) would be
        # stale: remove ours only.
        for old in (out / "images").glob("n[0-9][0-9][0-9][0-9]_*.*"):
            if old.suffix.lower() in (".png", ".jpg", ".webp") and f"images/{old.name}" not in files:
                old.unlink()
        return out
    except OSError as err:
        raise OutputError(f"cannot write to {out} ({err.strerror})", "choose a writable --out folder with free space") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        phase("write")
