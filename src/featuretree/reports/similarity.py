"""How alike two explanation maps are, by the measures of the model-randomisation test (Adebayo et al., 2018).

Each map comes as a ``MapPair``: its signed values and its magnitude (for colour maps the magnitude is
the sum of each colour's absolute value, not the absolute value of their sum). Four measures, each 1 for
identical maps:

- ``spearman_abs``: Spearman rank correlation of the magnitudes (the paper's main measure);
- ``spearman``: the same of the signed maps;
- ``ssim``: structural similarity of the magnitudes, each scaled to [0, 1] by its own maximum;
- ``hog``: Pearson correlation of the HOG descriptors of those scaled magnitudes.

The computations are scipy's and scikit-image's; what is added here is the handling of maps they
leave undefined (a constant map: 0, or 1 when both maps are the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METRICS: tuple[str, ...] = ("spearman_abs", "spearman", "ssim", "hog")
METRIC_LABELS: dict[str, str] = {
    "spearman_abs": "Spearman rank correlation of |map|",
    "spearman": "Spearman rank correlation (signed)",
    "ssim": "SSIM of |map|",
    "hog": "HOG similarity of |map|",
}


@dataclass(frozen=True)
class MapPair:
    """One explanation map: signed values and magnitude, both 2-D and of the same shape."""

    signed: np.ndarray
    magnitude: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> MapPair:
        """From HxW values, or CxHxW values summed over C (the magnitude summing each channel's |value|)."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 3:
            return cls(values.sum(0), np.abs(values).sum(0))
        return cls(values, np.abs(values))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (scipy; ties get their average rank); 0 when one array is constant, 1 when
    both are the same array.

    Average ranks matter: with order-broken ties, the many exact zeros that two maps share (letterbox
    padding, dead channels) would get identical ranks and inflate the correlation.
    """
    from scipy.stats import spearmanr

    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.size == b.size and np.array_equal(a, b):
        return 1.0
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def unit_scaled(magnitude: np.ndarray) -> np.ndarray:
    """A magnitude map divided by its maximum (all zero stays zero)."""
    magnitude = np.asarray(magnitude, dtype=np.float64)
    top = float(magnitude.max(initial=0.0))
    return magnitude / top if top > 0 else np.zeros_like(magnitude)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image's structural similarity of two magnitude maps, each scaled to [0, 1] (data range 1);
    the window is 7 pixels, or the largest odd size that fits a smaller map."""
    from skimage.metrics import structural_similarity

    a, b = unit_scaled(a), unit_scaled(b)
    if np.array_equal(a, b):
        return 1.0
    window = min(7, *a.shape)
    window -= 1 - window % 2
    if window < 3:
        return math.nan  # too small a map for any window
    return float(structural_similarity(a, b, data_range=1.0, win_size=window))


def hog_features(magnitude: np.ndarray) -> np.ndarray:
    """scikit-image's HOG descriptor of a magnitude map scaled to [0, 1]: 9 orientations, about 14 cells
    on the shorter side (16-pixel cells at 224 px), blocks of 2 x 2 cells."""
    from skimage.feature import hog

    scaled = unit_scaled(magnitude)
    cell = max(2, min(scaled.shape) // 14)
    return hog(scaled, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2), feature_vector=True)


def hog_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the two maps' HOG descriptors (0 when one is constant, 1 when both are the same)."""
    fa, fb = hog_features(a), hog_features(b)
    if np.array_equal(fa, fb):
        return 1.0
    if np.ptp(fa) == 0 or np.ptp(fb) == 0:
        return 0.0
    return float(np.corrcoef(fa, fb)[0, 1])


def similarities(a: MapPair, b: MapPair) -> dict[str, float]:
    """Every measure of ``METRICS`` between two maps of the same shape."""
    if a.signed.shape != b.signed.shape:
        raise ValueError(f"maps of different shapes: {a.signed.shape} and {b.signed.shape}")
    scores = {
        "spearman_abs": spearman(a.magnitude, b.magnitude),
        "spearman": spearman(a.signed, b.signed),
        "ssim": ssim(a.magnitude, b.magnitude),
        "hog": hog_similarity(a.magnitude, b.magnitude),
    }
    # Rounding can put a correlation of nearly alike maps a few ulps past 1.
    return {name: float(np.clip(value, -1.0, 1.0)) for name, value in scores.items()}
