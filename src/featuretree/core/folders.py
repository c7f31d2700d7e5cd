"""Finding the image files of a folder (``index``, ``aggregate``)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ImageInputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


def scan_folder(root: Path) -> tuple[list[str], list[str]]:
    """Image files under ``root`` (relative POSIX paths, sorted) and files skipped for their extension."""
    if not root.is_dir():
        raise ImageInputError(f"image folder {root} not found or not a folder", "pass a folder of images")
    images: list[str] = []
    ignored: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            rel = Path(dirpath, name).relative_to(root).as_posix()
            (images if Path(name).suffix.lower() in IMAGE_EXTENSIONS else ignored).append(rel)
    return sorted(images), sorted(ignored)
