"""Turning node evidence into pictures (PIL images), and encoding each picture kind in its format.

Guided-backprop display:
- ``robust`` (default): each node image is scaled by its own 99.5th percentile of |delta|,
  so deep nodes stay readable (the seed's footnote 2 on saturation).
- ``original``: the 2015 look, the mean colour plus the gradient at one fixed gain for the
  whole tree (set from the root) times the original's auto_1 path multipliers; deep nodes
  saturate exactly as the original's did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from ..evidence.evidence import NodeEvidence

DISPLAY_MODES: tuple[str, ...] = ("robust", "original")
_PERCENTILE = 99.5


def png_bytes(img: Image.Image, compress_level: int = 1) -> bytes:
    """PNG-encode a picture. Level 1 encodes 2-4x faster than Pillow's default 6 for ~10% more bytes."""
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, quality: int = 85, chroma_subsampling: bool = True) -> bytes:
    """JPEG-encode a picture (Huffman tables optimised: about 10% fewer bytes).

    ``chroma_subsampling=False`` keeps colour at full resolution (4:4:4): pictures whose colour
    changes from pixel to pixel (guided backprop) need it; 4:2:0 smears them.
    """
    import io

    options = {"quality": quality, "subsampling": 2 if chroma_subsampling else 0}
    buf = io.BytesIO()
    try:
        img.save(buf, format="JPEG", optimize=True, **options)
    except OSError:
        # Pillow sizes its in-memory buffer for optimised JPEGs at one byte a pixel; a picture
        # that needs more (pure noise) is written without the optimised tables instead.
        buf = io.BytesIO()
        img.save(buf, format="JPEG", **options)
    return buf.getvalue()


# Palette entries this close to 0 or 255 are snapped there, so saturated colours stay pure.
_SNAP = 8


def palette_png_bytes(img: Image.Image, colors: int = 256, compress_level: int = 1) -> bytes:
    """PNG with an adaptive palette of ``colors`` colours (no dithering), for saturated pictures.

    A saturated picture is mostly a few pure colours: the palette keeps them (snapped to exactly
    0 and 255) and approximates the few in-between pixels; half the bytes of a full-colour PNG.
    """
    import io

    quantized = img.convert("RGB").quantize(colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    palette = np.frombuffer(bytes(quantized.getpalette() or []), dtype=np.uint8).copy()
    palette[palette < _SNAP] = 0
    palette[palette > 255 - _SNAP] = 255
    quantized.putpalette(palette.tobytes())
    buf = io.BytesIO()
    quantized.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


# How each picture kind is stored: (file extension, encoder). Decided per view by what it shows
# (sizes and looks compared in benchmarks/bench_explain.py's docstring):
# - photo: PNG, the exact model input (once per tree; the page draws the receptive-field views from it).
# - guided: colour that changes from pixel to pixel. JPEG 4:4:4 (no chroma subsampling) at quality 80
#   keeps it; 4:2:0, JPEG's default and the only mode of lossy WebP, smears it. A fifth of the PNG.
# - guided_original: saturated colour noise in deep nodes, where JPEG 4:4:4 is larger than PNG and
#   4:2:0 or WebP destroy it: a 256-colour palette PNG, pure colours exact, half the full-colour PNG.
# - heatmap, contribution: a smooth colour overlay on a grey photo: JPEG 4:2:0, quality 85.
# - rf_crop, rf_box: the photo (a crop, or with a thick box): JPEG 4:2:0, quality 85.
PICTURE_FORMATS: dict[str, tuple[str, Callable[[Image.Image], bytes]]] = {
    "photo": ("png", png_bytes),
    "guided": ("jpg", lambda img: jpeg_bytes(img, 80, chroma_subsampling=False)),
    "guided_original": ("png", palette_png_bytes),
    "heatmap": ("jpg", lambda img: jpeg_bytes(img, 85)),
    "contribution": ("jpg", lambda img: jpeg_bytes(img, 85)),
    "rf_crop": ("jpg", lambda img: jpeg_bytes(img, 85)),
    "rf_box": ("jpg", lambda img: jpeg_bytes(img, 85)),
}
MIME_TYPES: dict[str, str] = {"png": "image/png", "jpg": "image/jpeg"}


def picture_mime(kind: str) -> str:
    """The MIME type of a picture of ``kind`` as ``encode_picture`` encodes it."""
    return MIME_TYPES[PICTURE_FORMATS.get(kind, ("png", png_bytes))[0]]


def encode_picture(kind: str, img: Image.Image) -> tuple[str, bytes]:
    """``(file extension, bytes)`` of a picture of ``kind`` in that kind's format (PNG for unknown kinds)."""
    extension, encode = PICTURE_FORMATS.get(kind, ("png", png_bytes))
    return extension, encode(img)


def _to_image(rgb01: np.ndarray, channels_first: bool = False) -> Image.Image:
    arr = (np.clip(rgb01, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if channels_first:  # 3xHxW: arithmetic on contiguous planes, one transposing copy of the bytes at the end
        arr = np.ascontiguousarray(arr.transpose(1, 2, 0))
    return Image.fromarray(arr, "RGB")


def robust_scale(values: np.ndarray) -> float:
    """A scale at which ``values`` fill the display range without a few pixels dominating."""
    mags = np.abs(values)
    scale = float(np.percentile(mags, _PERCENTILE)) if mags.size else 0.0
    if scale <= 0.0:
        scale = float(mags.max(initial=0.0))
    return scale


def guided_image(
    evidence: NodeEvidence, display: str = "robust", mean=(0.485, 0.456, 0.406), tree_gain: float | None = None
) -> Image.Image:
    """The path-conditioned guided backprop at the input, as an RGB picture."""
    delta = evidence.guided  # 3xHxW, d objective / d pixel
    if display == "original":
        gain = (tree_gain or 0.0) * evidence.path_gain
        return _to_image(np.asarray(mean, dtype=np.float32)[:, None, None] + gain * delta, channels_first=True)
    scale = robust_scale(delta)
    if scale == 0.0:
        return _to_image(np.full(delta.shape, 0.5, dtype=np.float32), channels_first=True)
    return _to_image(0.5 + 0.5 * np.clip(delta / scale, -1.0, 1.0), channels_first=True)


def original_tree_gain(root: NodeEvidence) -> float:
    """Gain that makes the root's guided image use half the display range (then fixed for the tree)."""
    if root.guided is None:
        return 0.0
    scale = robust_scale(root.guided)
    return 0.5 / scale if scale > 0 else 0.0


def smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2-D map (separable, reflect padding without repeating the edge), for display only.

    Plain numpy, one shifted multiply-add per tap: pictures are made in a thread pool, where a tiny
    torch convolution per picture costs more in thread hand-offs than in arithmetic (30 times slower
    on a busy 2-core machine), and importing scipy.ndimage would cost half a second.
    """
    radius = max(1, int(3 * sigma))
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (taps / np.float32(sigma)) ** 2)
    kernel /= kernel.sum()
    x = np.ascontiguousarray(values, dtype=np.float32)
    for axis in (1, 0):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="reflect")
        length = x.shape[axis]
        out = np.zeros_like(x)
        term = np.empty_like(x)
        for i, weight in enumerate(kernel):
            np.multiply(padded[:, i : i + length] if axis == 1 else padded[i : i + length], weight, out=term)
            out += term
        x = out
    return x


def heatmap_image(evidence: NodeEvidence, picture: Image.Image) -> Image.Image:
    """Gradient x input over a dimmed grayscale photo.

    Pixel-level gradient x input alternates sign from pixel to pixel, so a blurred signed map
    mostly cancels. Opacity shows the blurred magnitude |g * x| (sigma = 1/64 of the image side,
    where the evidence is); the hue shows the blurred sign: red where the pixels raise the
    node's objective, blue where they lower it.
    """
    sigma = max(1.0, picture.width / 64)
    magnitude = smooth(np.abs(evidence.heat), sigma)
    signed = smooth(evidence.heat, sigma)
    scale = robust_scale(magnitude)
    base = np.asarray(picture.convert("L"), dtype=np.float32)[..., None] / 255.0
    base = 0.3 + 0.45 * base  # HxWx1: broadcast against the colours below, not copied three times
    if scale == 0.0:
        return _to_image(np.repeat(base, 3, axis=2))
    alpha = np.clip(magnitude / scale, 0.0, 1.0)[..., None] ** 1.5 * 0.9
    blue_red = np.array([[0.1, 0.4, 1.0], [0.93, 0.16, 0.05]], dtype=np.float32)
    colour = blue_red[(signed >= 0).astype(np.intp)]  # red where the blurred sign is positive, else blue
    return _to_image(base * (1 - alpha) + colour * alpha)


def upsampled_contribution(evidence: NodeEvidence, size: tuple[int, int]) -> np.ndarray:
    """The node's contribution map (its layer's grid) at ``size`` (width, height) pixels, float32.

    Bilinear between position centres for maps; patch squares (nearest) for tokens. Each
    position's value is a contribution, not a density, so the picture shows where, not how much
    per pixel; its sum is not preserved and is not meant to be.
    """
    grid = np.ascontiguousarray(evidence.contribution, dtype=np.float32)
    resample = Image.NEAREST if evidence.contribution_patches else Image.BILINEAR
    return np.asarray(Image.fromarray(grid, mode="F").resize(size, resample), dtype=np.float32)


def contribution_image(evidence: NodeEvidence, picture: Image.Image) -> Image.Image:
    """The node's own a * delta at its layer over a dimmed grayscale photo, centred at zero: red where
    the unit carries evidence for the root through its path, blue against it, clear where nothing.
    One scale (the largest |value|) for both signs, so red and blue compare."""
    values = upsampled_contribution(evidence, picture.size)
    base = np.asarray(picture.convert("L"), dtype=np.float32)[..., None] / 255.0
    base = 0.3 + 0.45 * base
    scale = float(np.abs(evidence.contribution).max(initial=0.0))
    if scale == 0.0:
        return _to_image(np.repeat(base, 3, axis=2))
    signed = np.clip(values / scale, -1.0, 1.0)[..., None]
    alpha = np.abs(signed) ** 0.75 * 0.85
    blue_red = np.array([[0.1, 0.4, 1.0], [0.93, 0.16, 0.05]], dtype=np.float32)
    colour = blue_red[(signed[..., 0] >= 0).astype(np.intp)]
    return _to_image(base * (1 - alpha) + colour * alpha)


def box_image(evidence: NodeEvidence, picture: Image.Image) -> Image.Image:
    """The photo with the node's receptive-field box drawn on it."""
    out = picture.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    left, top, right, bottom = evidence.box
    width = max(1, round(picture.width / 112))
    draw.rectangle([left, top, right - 1, bottom - 1], outline=(255, 214, 0), width=width)
    return out


def crop_image(evidence: NodeEvidence, picture: Image.Image, size: int | None = None) -> Image.Image:
    """The receptive-field crop of the photo, scaled up to ``size`` on its longer side."""
    left, top, right, bottom = evidence.box
    crop = picture.crop((left, top, max(right, left + 1), max(bottom, top + 1)))
    size = size or picture.width
    scale = size / max(crop.size)
    return crop.resize(
        (max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.NEAREST if scale >= 4 else Image.BICUBIC
    )


def node_images(evidence: NodeEvidence, picture: Image.Image, mean, tree_gain: float) -> dict[str, Image.Image]:
    """Every picture of one node that its evidence allows, keyed by the names used in tree.json."""
    images: dict[str, Image.Image] = {}
    if evidence.guided is not None:
        images["guided"] = guided_image(evidence, "robust")
        images["guided_original"] = guided_image(evidence, "original", mean, tree_gain)
    if evidence.heat is not None:
        images["heatmap"] = heatmap_image(evidence, picture)
    if evidence.contribution is not None:
        images["contribution"] = contribution_image(evidence, picture)
    if evidence.box is not None:
        images["rf_crop"] = crop_image(evidence, picture)
        images["rf_box"] = box_image(evidence, picture)
    return images
