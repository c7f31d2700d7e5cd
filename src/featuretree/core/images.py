"""Reading photos robustly and turning them into model input.

Every accepted image becomes 8-bit RGB, EXIF-rotated upright. Resizing keeps the
aspect ratio by default (``pad``: the whole photo, letterboxed on the mean colour);
``crop`` (shorter side to size, centre crop) and ``squash`` (aspect ignored, as the
2015 original did) are available.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageInputError, OptionError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pixel budget for decoded images (about 8000 x 8000); larger files are treated as decompression bombs.
DEFAULT_MAX_PIXELS = 64_000_000

ResizeMode = Literal["pad", "crop", "squash"]
RESIZE_MODES: tuple[str, ...] = ("pad", "crop", "squash")


def load_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image file and return it as upright 8-bit RGB, or raise ImageInputError."""
    p = Path(path)
    if not p.exists():
        raise ImageInputError(f"image not found: {p}", "check the path")
    if p.is_dir():
        raise ImageInputError(f"{p} is a folder, not an image file", "pass the path of one image file")
    try:
        data = p.read_bytes()
    except OSError as err:
        raise ImageInputError(f"cannot read {p} ({err.strerror})", "check the file's permissions") from None
    return decode_image(data, max_pixels, name=str(p))


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "the image") -> Image.Image:
    """Decode image bytes into upright 8-bit RGB, or raise ImageInputError.

    The pixel count is checked from the header before any pixel is decoded (a small file that
    claims a huge canvas costs nothing), without touching Pillow's global limit, so this is
    safe to call from several threads.
    """
    if not data:
        raise ImageInputError(f"{name} is empty", "pass a JPEG, PNG, WebP, BMP or TIFF file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                raise ImageInputError(
                    f"{name} is {width}x{height} pixels, over the limit of {max_pixels:,} (possible decompression bomb)",
                    "downscale the image first",
                )
            img.load()
            return to_rgb(img)
    except ImageInputError:
        raise
    except Image.DecompressionBombError:
        raise ImageInputError(f"{name} is too large to decode safely (possible decompression bomb)", "downscale the image first") from None
    except UnidentifiedImageError:
        raise ImageInputError(f"{name} is not an image file that Pillow can read", "pass a JPEG, PNG, WebP, BMP or TIFF") from None
    except Exception as err:  # Pillow's decoders raise many types for damaged files
        raise ImageInputError(f"{name} is corrupt or truncated ({err})", "re-export or re-download the image") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode (palette, grayscale, 16-bit, RGBA, CMYK, ...) to upright 8-bit RGB."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit (and 32-bit int) grayscale: scale the file's range down to 8 bits.
        top = 65535.0 if (mode.startswith("I;16") or arr.max(initial=0) > 255) else 255.0
        if mode == "F":
            top = max(float(arr.max(initial=1.0)), 1e-12)
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        # Composite on white: transparent regions of logos and icons are meant as background.
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # palette, L, 1, CMYK, YCbCr, LAB, HSV ...


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes the model's input tensor."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "pad"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise OptionError(f"unknown resize mode {self.resize!r}", f"use one of {', '.join(RESIZE_MODES)}")
        if self.size < 8:
            raise OptionError(f"input size {self.size} is too small", "use at least 8 pixels")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)  # JSON-native, so trees round-trip
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        return cls(
            size=int(data["size"]),
            mean=tuple(data["mean"]),  # type: ignore[arg-type]
            std=tuple(data["std"]),  # type: ignore[arg-type]
            resize=data["resize"],
        )

    def fit(self, img: Image.Image) -> Image.Image:
        """Resize to size x size according to ``resize``; returns the RGB picture the model sees."""
        s = self.size
        w, h = img.size
        if self.resize == "squash":
            return img.resize((s, s), Image.BICUBIC)
        if self.resize == "crop":
            scale = s / min(w, h)
            img = img.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BICUBIC)
            left, top = (img.width - s) // 2, (img.height - s) // 2
            return img.crop((left, top, left + s, top + s))
        scale = s / max(w, h)
        inner = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        fill = tuple(int(round(m * 255)) for m in self.mean)
        canvas = Image.new("RGB", (s, s), fill)
        canvas.paste(inner, ((s - inner.width) // 2, (s - inner.height) // 2))
        return canvas

    def to_tensor(self, picture: Image.Image) -> torch.Tensor:
        """Normalise an already fitted RGB picture into a [1, 3, H, W] float tensor."""
        arr = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return ((x - mean) / std).unsqueeze(0).contiguous()

    def to_picture(self, x: torch.Tensor) -> Image.Image:
        """Inverse of ``to_tensor`` for display: a [1,3,H,W] or [3,H,W] tensor back to RGB."""
        t = x.detach().float().cpu().reshape(3, x.shape[-2], x.shape[-1])
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        arr = ((t * std + mean).clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()
        return Image.fromarray(arr, "RGB")


@dataclass
class PreparedImage:
    """A photo ready for the model: the input tensor and the picture it shows (same pixels)."""

    tensor: torch.Tensor
    picture: Image.Image
    source: str = "<memory>"
    original_size: tuple[int, int] = field(default=(0, 0))


def prepare_image(
    image: str | os.PathLike[str] | Image.Image | np.ndarray | torch.Tensor,
    preprocess: Preprocess,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PreparedImage:
    """Accept a path, PIL image, HxWxC uint8 array or an already normalised tensor."""
    if isinstance(image, torch.Tensor):
        x = image.detach()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ImageInputError(
                f"tensor input must have shape [1, 3, H, W] or [3, H, W], got {list(image.shape)}",
                "pass one normalised RGB image",
            )
        if not x.is_floating_point():
            x = x.float()
        return PreparedImage(x, preprocess.to_picture(x), "<tensor>", (x.shape[-1], x.shape[-2]))
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ImageInputError(f"array input must be HxW or HxWxC, got shape {image.shape}", "pass one image")
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        rgb = to_rgb(image)
        source = getattr(image, "filename", "") or "<memory>"
    else:
        rgb = load_image(image, max_pixels)
        source = str(image)
    picture = preprocess.fit(rgb)
    return PreparedImage(preprocess.to_tensor(picture), picture, source, rgb.size)
