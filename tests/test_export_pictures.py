"""Saved pictures: one format per view, each picture encoded once and never decoded again, the HTML
inlining the very bytes of the files, and output sizes that stay small."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

import featuretree as ft
from featuretree.cli import main
from featuretree.core.samples import sample_path
from featuretree.render import export
from featuretree.render import pictures as render

FORMATS = {"guided": "JPEG", "guided_original": "PNG", "heatmap": "JPEG", "contribution": "JPEG", "rf_crop": "JPEG", "rf_box": "JPEG"}
INLINED = ("guided", "guided_original", "heatmap", "contribution")  # the page draws rf_crop and rf_box from the photo and the box


def views_of(node) -> set[str]:
    """The views a node of the toy net has: all (the logits' contribution map is the corners layer's, summed)."""
    return set(FORMATS)


def page_images(html: str) -> dict[str, str]:
    """The ``images`` payload of a saved tree.html."""
    payload = re.search(r"const FT_DATA = (\{.*?\});\n", html, re.S)
    assert payload is not None
    return json.loads(payload.group(1))["images"]


def uri_bytes(uri: str) -> tuple[str, bytes]:
    head, _, data = uri.partition(",")
    assert head.startswith("data:") and head.endswith(";base64"), head
    return head[len("data:") : -len(";base64")], base64.b64decode(data)


@pytest.fixture
def saved(toy_explainer, square_image, tmp_path):
    tree = toy_explainer.analyze(square_image).tree(depth=2, k=3)
    return tree, export.save_tree(tree, tmp_path / "out")


def test_every_named_file_exists_decodes_and_has_its_views_format(saved):
    tree, out = saved
    loaded = ft.FeatureTree.load(out / "tree.json")
    assert len(loaded) == len(tree) and all(node.images for node in loaded.walk())
    for node in loaded.walk():
        assert set(node.images) == views_of(node)
        for kind, name in node.images.items():
            with Image.open(out / name) as img:
                img.load()
                assert img.format == FORMATS[kind], (kind, name)
                assert name.endswith({"JPEG": ".jpg", "PNG": ".png"}[img.format])
                if kind == "guided":  # pixel-scale colour: no chroma subsampling
                    assert JpegImagePlugin.get_sampling(img) == 0
                if kind == "guided_original":
                    assert img.mode == "P"
    with Image.open(out / "photo.png") as photo:
        assert photo.format == "PNG" and photo.tobytes() == tree.picture.convert("RGB").tobytes()  # the exact model input
    written = {p.relative_to(out).as_posix() for p in (out / "images").iterdir()}
    assert written == {name for node in loaded.walk() for name in node.images.values()}


def test_html_inlines_each_file_once_with_its_own_bytes(saved):
    tree, out = saved
    html = (out / "tree.html").read_text()
    images = page_images(html)
    loaded = ft.FeatureTree.load(out / "tree.json")
    expected = {node.images[kind] for node in loaded.walk() for kind in INLINED if kind in views_of(node)}
    assert set(images) == expected | {"photo"}  # no receptive-field pictures, no second copy of the photo
    for name, uri in images.items():
        mime, data = uri_bytes(uri)
        path = out / ("photo.png" if name == "photo" else name)
        assert data == path.read_bytes(), name  # not decoded and re-encoded
        assert mime == {"png": "image/png", "jpg": "image/jpeg"}[path.suffix[1:]]
    # Each file once: a string of base64 appears as often as there are files with those bytes.
    for name, uri in images.items():
        same = sum(other == uri for other in images.values())
        assert html.count(uri.partition(",")[2]) == same, name


def test_pictures_are_encoded_once_and_never_decoded(toy_explainer, square_image, tmp_path, monkeypatch):
    tree = toy_explainer.analyze(square_image).tree(depth=2, k=3)
    encoded = []
    original = export.encode_picture

    def counting(kind, img):
        encoded.append(kind)
        return original(kind, img)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a picture was decoded while saving")

    monkeypatch.setattr(export, "encode_picture", counting)
    monkeypatch.setattr(Image, "open", no_decoding)
    export.save_tree(tree, tmp_path / "out")
    assert len(encoded) == 1 + sum(len(views_of(node)) for node in tree.walk())  # the photo, then each view of each node once


def test_parallel_encoding_is_deterministic(toy_explainer, square_image):
    tree = toy_explainer.analyze(square_image).tree(depth=2, k=3)
    one = export.render_images(tree, workers=1)
    names_one = [dict(node.images) for node in tree.walk()]
    many = export.render_images(tree, workers=4)
    assert list(one) == list(many) and one == many
    assert names_one == [dict(node.images) for node in tree.walk()]


def test_saving_over_pictures_of_an_older_format_removes_them(toy_explainer, square_image, tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    for kind in FORMATS:  # what an earlier featuretree wrote: every view as PNG
        Image.new("RGB", (4, 4)).save(out / "images" / f"n0000_{kind}.png")
    (out / "images" / "mine.png").write_bytes(b"keep")
    toy_explainer.analyze(square_image).tree(depth=1, k=2).save(out)
    referenced = {name for node in ft.FeatureTree.load(out / "tree.json").walk() for name in node.images.values()}
    assert {f"images/{p.name}" for p in (out / "images").iterdir()} == referenced | {"images/mine.png"}


def test_explain_timings_name_every_phase(tmp_path, capsys):
    from PIL import ImageDraw

    photo = tmp_path / "square.png"
    img = Image.new("RGB", (32, 32), "black")
    ImageDraw.Draw(img).rectangle((8, 8, 23, 23), fill="white")
    img.save(photo)
    code = main(["explain", str(photo), "--model", "toy_squares", "--out", str(tmp_path / "out"), "--depth", "2", "--quiet", "--timings"])
    err = capsys.readouterr().err
    assert code == 0, err
    line = next(line for line in err.splitlines() if "timings (s):" in line)
    for phase in ("load", "tree", "pictures", "html", "write", "total"):
        assert re.search(rf"\b{phase} [0-9]+\.[0-9]+", line), (phase, line)


def test_jpeg_of_pure_noise_is_still_written():
    # Optimised JPEGs are buffered at one byte a pixel in memory; noise needs more than that.
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = render.jpeg_bytes(noise, 95, chroma_subsampling=False)
    assert len(data) > 64 * 64
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.format == "JPEG" and img.size == (64, 64)


def test_palette_png_keeps_saturated_colours_exact():
    rng = np.random.default_rng(0)
    pixels = rng.choice([0, 255], size=(64, 64, 3)).astype(np.uint8)  # the original look of a deep node
    pixels[:8] = rng.integers(60, 200, size=(8, 64, 3))  # and a band of in-between values
    with Image.open(io.BytesIO(render.palette_png_bytes(Image.fromarray(pixels)))) as img:
        back = np.asarray(img.convert("RGB"))
    assert np.array_equal(back[8:], pixels[8:])
    assert np.abs(back[:8].astype(int) - pixels[:8]).mean() < 12


def test_smooth_is_a_reflect_padded_gaussian():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    values = np.random.default_rng(1).normal(size=(40, 56)).astype(np.float32)
    sigma = 3.5
    radius = int(3 * sigma)
    want = scipy_ndimage.gaussian_filter(values.astype(np.float64), sigma, mode="mirror", truncate=radius / sigma)
    np.testing.assert_allclose(render.smooth(values, sigma), want, atol=1e-5)
    np.testing.assert_allclose(render.smooth(np.full((9, 9), 2.5, np.float32), 1.0), 2.5, rtol=1e-6)


@pytest.mark.slow
def test_efficientnet_pictures_stay_small(lite0, tmp_path):
    # Depth 2 on chelsea (31 nodes): the average bytes a picture of each view, with headroom.
    tree = lite0.analyze(sample_path("chelsea")).tree(depth=2, k=5)
    out = export.save_tree(tree, tmp_path / "out")
    budget = {"guided": 30e3, "guided_original": 45e3, "heatmap": 12e3, "contribution": 12e3, "rf_crop": 15e3, "rf_box": 15e3}
    for kind, limit in budget.items():
        sizes = [(out / node.images[kind]).stat().st_size for node in tree.walk() if kind in node.images]
        assert sum(sizes) / len(sizes) < limit, (kind, sum(sizes) / len(sizes))
    inlined = sum((out / node.images[kind]).stat().st_size for node in tree.walk() for kind in INLINED if kind in node.images)
    assert (out / "tree.html").stat().st_size < 1.4 * inlined + 1e6  # base64 of the pictures plus the page


def test_a_failure_while_encoding_leaves_no_output(toy_explainer, square_image, tmp_path, monkeypatch):
    tree = toy_explainer.analyze(square_image).tree(depth=2, k=3)
    existing = tmp_path / "existing"
    tree.save(existing)
    before = {p.relative_to(existing): p.read_bytes() for p in existing.rglob("*") if p.is_file()}
    calls = []
    original = export.encode_picture

    def failing(kind, img):
        calls.append(kind)
        if len(calls) == 10:
            raise RuntimeError("encoder broke")
        return original(kind, img)

    monkeypatch.setattr(export, "encode_picture", failing)
    for out in (tmp_path / "fresh", existing):
        calls.clear()
        with pytest.raises(RuntimeError, match="encoder broke"):
            export.save_tree(tree, out)
    assert not (tmp_path / "fresh").exists()
    assert {p.relative_to(existing): p.read_bytes() for p in existing.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.rglob(".featuretree-*"))
