"""Unusual but valid images are explained correctly; the model sees the right pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from featuretree.core.errors import ImageInputError
from featuretree.core.images import Preprocess, load_image, prepare_image

from .conftest import square_picture


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_grayscale_palette_rgba_cmyk_16bit_all_match_rgb(tmp_path):
    rgb = square_picture(64, (16, 16, 47, 47))
    gray = rgb.convert("L")
    expected = np.asarray(gray.convert("RGB"), dtype=np.int16)
    cases = {
        "gray.png": gray,
        "palette.png": gray.convert("P"),
        "rgba.png": rgb.convert("RGBA"),
    }
    for name, img in cases.items():
        got = np.asarray(load_image(_save(img, tmp_path / name)), dtype=np.int16)
        assert np.abs(got - expected).max() <= 1, name
    # 16-bit grayscale: 65535 * v / 255 must come back as v.
    arr16 = (np.asarray(gray, dtype=np.uint32) * 257).astype(np.uint16)
    img16 = Image.fromarray(arr16)
    got = np.asarray(load_image(_save(img16, tmp_path / "g16.png")), dtype=np.int16)
    assert np.abs(got - expected).max() <= 1
    # CMYK (lossless TIFF): conversion must keep white white and black black.
    cmyk = rgb.convert("CMYK")
    got = np.asarray(load_image(_save(cmyk, tmp_path / "cmyk.tif")), dtype=np.int16)
    assert np.abs(got - np.asarray(rgb, dtype=np.int16)).max() <= 1


def test_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    got = np.asarray(load_image(_save(img, tmp_path / "t.png")))
    assert tuple(got[0, 0]) == (255, 0, 0)
    assert tuple(got[4, 4]) == (255, 255, 255)


def test_exif_rotation_is_applied(tmp_path):
    upright = Image.new("RGB", (40, 20), "black")
    upright.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # stored turned 90 degrees counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    stored.save(path, exif=exif, quality=95)
    got = load_image(path)
    assert got.size == (40, 20)
    arr = np.asarray(got.convert("L"), dtype=np.int16)
    assert arr[:, :8].mean() > 200 and arr[:, 12:].mean() < 50


@pytest.mark.parametrize("resize", ["pad", "crop", "squash"])
def test_non_square_images_keep_or_ignore_aspect_as_documented(resize):
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    prep = Preprocess(size=50, resize=resize)
    picture = prepare_image(wide, prep).picture
    assert picture.size == (50, 50)
    arr = np.asarray(picture)
    red = (arr[..., 0] > 200) & (arr[..., 1] < 50)
    if resize == "pad":
        # Whole photo kept, letterboxed: red band 25 px tall in the middle.
        assert red[:, 25].sum() == 25 and not red[0, 25] and red[25, 0]
    else:
        assert red.all()


def test_bad_files_raise_one_line_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    good = io.BytesIO()
    square_picture(64).save(good, format="PNG")
    (tmp_path / "trunc.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    cases = {
        tmp_path / "missing.png": "not found",
        tmp_path: "is a folder",
        tmp_path / "notes.txt": "not an image",
        tmp_path / "trunc.png": "corrupt or truncated",
    }
    for path, message in cases.items():
        with pytest.raises(ImageInputError, match=message) as info:
            load_image(path)
        assert "\n" not in str(info.value)


def test_decompression_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (6000, 6000)).save(path)  # tiny file, 36 M pixels
    with pytest.raises(ImageInputError, match="decompression bomb"):
        load_image(path, max_pixels=10_000_000)
