"""Finding the image files of a folder, and which of them a resumable run must read (``index``, ``aggregate``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class KnownFile:
    """A file a database already holds, as it was when it was read."""

    size: int
    mtime_ns: int
    status: str  # "ok" or "skipped"
    sha256: str | None


@dataclass
class FolderScan:
    todo: list[tuple[str, int, int]] = field(default_factory=list)  # (relative path, size, mtime_ns) to read
    already: int = 0  # unchanged since a database recorded them
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def files_to_read(root: Path, files: list[str], known: Mapping[str, KnownFile]) -> FolderScan:
    """Which of ``files`` a resumable run must read: new ones, and known ones whose size or modification
    time changed. Files that cannot be stat'ed, and unchanged ones skipped before, are listed as skipped."""
    scan = FolderScan()
    for rel in files:
        try:
            st = (root / rel).stat()
        except OSError as err:
            scan.skipped.append((rel, f"unreadable ({err.strerror})"))
            continue
        prev = known.get(rel)
        if prev is not None and prev.size == st.st_size and prev.mtime_ns == st.st_mtime_ns:
            scan.already += 1
            if prev.status == "skipped":
                scan.skipped.append((rel, "skipped before (unchanged)"))
            continue
        scan.todo.append((rel, st.st_size, st.st_mtime_ns))
    return scan
