"""The default exemplar collection: crops of the real photos that installed packages ship.

Real use points ``featuretree index`` at the user's own folder (an ImageNet validation folder,
a product catalogue, ...). For the demo and tests, this module writes a small collection made
from the photographs in scikit-image's data folder (the featuretree samples plus a few more):
each photo as a whole and as several deterministic crops at two scales.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from ..core.errors import OutputError
from ..core.images import load_image
from ..core.samples import sample_dir

# Photographs (not drawings or synthetic patterns) in skimage/data.
PHOTOS = (
    "chelsea.png",
    "coffee.png",
    "astronaut.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "page.png",
    "text.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "clock_motion.png",
)

# (name, left, top, right, bottom) as fractions of the photo.
CROPS = (
    ("full", 0.0, 0.0, 1.0, 1.0),
    ("centre", 0.2, 0.2, 0.8, 0.8),
    ("top_left", 0.0, 0.0, 0.55, 0.55),
    ("top_right", 0.45, 0.0, 1.0, 0.55),
    ("bottom_left", 0.0, 0.45, 0.55, 1.0),
    ("bottom_right", 0.45, 0.45, 1.0, 1.0),
)

MAX_SIDE = 512


def available_photos() -> list[Path]:
    folder = sample_dir()
    return [folder / name for name in PHOTOS if (folder / name).is_file()]


def build_collection(out_dir: str | os.PathLike[str], crops_per_photo: int = len(CROPS)) -> list[Path]:
    """Write the collection (JPEG, quality 92, at most 512 px) into ``out_dir``; existing identical files are kept.

    Returns the written (or already present) file paths.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {out} ({err.strerror})", "choose another folder") from None
    written: list[Path] = []
    for photo in available_photos():
        image = load_image(photo)
        w, h = image.size
        for name, left, top, right, bottom in CROPS[:crops_per_photo]:
            target = out / f"{photo.stem}__{name}.jpg"
            written.append(target)
            if target.exists():
                continue  # deterministic content: keeping it keeps an index over it valid
            crop = image.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))
            scale = MAX_SIDE / max(crop.size)
            if scale < 1:
                crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.BICUBIC)
            tmp = target.with_suffix(".tmp")
            crop.save(tmp, format="JPEG", quality=92)
            os.replace(tmp, target)  # never a half-written image in the collection
    return written
