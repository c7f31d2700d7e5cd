"""Saving a tree: tree.json + PNG files, and one self-contained HTML page (images inlined).

Output is written to a temporary folder next to the target and moved into place file by
file only once everything is rendered, so a failure never leaves half-written output.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from PIL import Image

from .errors import OutputError
from .render import node_images, original_tree_gain, png_bytes
from .tree import FeatureTree


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


def render_images(tree: FeatureTree) -> dict[str, bytes]:
    """PNG bytes for the photo and every node picture, keyed by relative file name; sets node.images."""
    files: dict[str, bytes] = {}
    if tree.picture is None or not tree.evidence:
        return files
    files["photo.png"] = png_bytes(tree.picture)
    root_evidence = tree.evidence.get(tree.root.id)
    gain = original_tree_gain(root_evidence) if root_evidence is not None else 0.0
    mean = tuple(tree.model["preprocess"]["mean"])
    for number, node in enumerate(tree.walk()):
        evidence = tree.evidence.get(node.id)
        if evidence is None:
            continue
        node.images = {}
        for kind, img in node_images(evidence, tree.picture, mean, gain).items():
            name = f"images/n{number:04d}_{kind}.png"
            files[name] = png_bytes(img)
            node.images[kind] = name
    return files


def write_report(out_dir: str | os.PathLike[str], stem: str, markdown: str, csv: str, picture: Image.Image) -> Path:
    """Write a report as ``stem``.md, .csv and .png into ``out_dir`` (created if needed)."""
    out = ensure_writable(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(markdown)
    (out / f"{stem}.csv").write_text(csv)
    picture.save(out / f"{stem}.png")
    return out


def _static(name: str) -> str:
    return resources.files("featuretree").joinpath("static", name).read_text(encoding="utf-8")


# Views the page draws itself from the photo and node.box, so they need no inlined image.
_CSS_VIEWS = ("rf_crop", "rf_box")


def _jpeg_data_uri(png: bytes) -> str:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(tree: FeatureTree, files: dict[str, bytes] | None = None, inline_frame: bool = False) -> str:
    """One HTML page with the tree, its pictures as data URIs, and the viewer script inlined.

    Node pictures are inlined as JPEG (a tenth of the PNG size); the receptive-field views
    are drawn from the photo and each node's box, so the page stays a few MB for 150 nodes.
    """
    if files is None:
        files = render_images(tree)
    images = {
        name: _jpeg_data_uri(data)
        for name, data in files.items()
        if name.endswith(".png") and not name.endswith(tuple(f"_{v}.png" for v in _CSS_VIEWS))
    }
    images["photo"] = images.get("photo.png", "")
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


def save_tree(tree: FeatureTree, out_dir: str | os.PathLike[str], html: bool = True) -> Path:
    """Write tree.json, images/*.png, photo.png and tree.html into ``out_dir`` atomically."""
    out = ensure_writable(out_dir)
    files = render_images(tree)
    files["tree.json"] = tree.to_json().encode("utf-8")
    if html:
        files["tree.html"] = render_html(tree, files).encode("utf-8")
    parent = out.parent if not out.exists() else out
    parent.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=".featuretree-", dir=parent))
    except OSError as err:
        raise OutputError(f"cannot write to {out} ({err.strerror})", "choose a writable --out folder") from None
    try:
        for name, data in files.items():
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
        # Node pictures of an earlier, larger tree in the same folder would be stale: remove ours only.
        for old in (out / "images").glob("n[0-9][0-9][0-9][0-9]_*.png"):
            if f"images/{old.name}" not in files:
                old.unlink()
        return out
    except OSError as err:
        raise OutputError(f"cannot write to {out} ({err.strerror})", "choose a writable --out folder with free space") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
