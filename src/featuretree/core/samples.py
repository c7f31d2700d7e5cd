"""Real sample photos that installed packages ship (scikit-image's data folder)."""

from __future__ import annotations

from pathlib import Path

from .errors import ImageInputError

# name -> file in skimage/data
SAMPLES = {
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "astronaut": "astronaut.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
}


def sample_dir() -> Path:
    try:
        import skimage
    except ImportError:  # pragma: no cover - declared dependency
        raise ImageInputError("scikit-image is not installed, so the sample photos are missing", "pip install scikit-image") from None
    return Path(skimage.__file__).parent / "data"


def sample_path(name: str = "chelsea") -> Path:
    if name not in SAMPLES:
        raise ImageInputError(f"unknown sample {name!r}", f"use one of {', '.join(SAMPLES)}")
    path = sample_dir() / SAMPLES[name]
    if not path.exists():
        raise ImageInputError(f"sample photo {path} is missing", "reinstall scikit-image")
    return path


def available_samples() -> dict[str, Path]:
    return {name: sample_dir() / file for name, file in SAMPLES.items() if (sample_dir() / file).exists()}
