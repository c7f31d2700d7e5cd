"""The sanity check's measures against scipy and scikit-image on hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity

from featuretree.reports.similarity import METRICS, MapPair, hog_similarity, similarities, spearman, ssim


def blob(size: int = 64, centre=(20, 30), width: float = 6.0) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    return np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * width**2))


def test_identical_maps_score_one_on_every_measure():
    rng = np.random.default_rng(0)
    for values in (rng.normal(size=(3, 48, 48)), rng.normal(size=(48, 48)), blob(), np.zeros((48, 48))):
        m = MapPair.of(values)
        assert similarities(m, m) == {metric: 1.0 for metric in METRICS}


def test_measures_equal_scipys_and_scikit_images():
    rng = np.random.default_rng(1)
    a = blob() - 0.5 * blob(centre=(45, 40)) + 0.05 * rng.normal(size=(64, 64))
    b = blob(centre=(24, 28), width=8) + 0.05 * rng.normal(size=(64, 64))
    ma, mb = MapPair.of(a), MapPair.of(b)
    got = similarities(ma, mb)
    assert got["spearman_abs"] == pytest.approx(spearmanr(np.abs(a).ravel(), np.abs(b).ravel()).statistic, abs=1e-12)
    assert got["spearman"] == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)
    ua, ub = np.abs(a) / np.abs(a).max(), np.abs(b) / np.abs(b).max()
    assert got["ssim"] == pytest.approx(structural_similarity(ua, ub, data_range=1.0), abs=1e-12)
    features = [hog(u, orientations=9, pixels_per_cell=(4, 4), cells_per_block=(2, 2)) for u in (ua, ub)]
    assert got["hog"] == pytest.approx(pearsonr(*features).statistic, abs=1e-12)
    # The measures tell apart what they should: a shifted blob is less alike than a rescaled one.
    assert ssim(blob(), 3 * blob()) == pytest.approx(1.0) and ssim(blob(), blob(centre=(40, 40))) < 0.5
    assert hog_similarity(blob(), 3 * blob()) == pytest.approx(1.0) and hog_similarity(blob(), blob(centre=(40, 40))) < 0.5


def test_colour_maps_sum_magnitudes_per_colour_and_signs_across():
    values = np.zeros((3, 2, 2))
    values[0, 0, 0], values[1, 0, 0] = 1.0, -1.0  # cancel in the signed sum, add up in the magnitude
    m = MapPair.of(values)
    assert m.signed[0, 0] == 0.0 and m.magnitude[0, 0] == 2.0


def test_abs_and_signed_spearman_differ_where_signs_flip():
    a = blob() - blob(centre=(45, 45))
    assert spearman(np.abs(a), np.abs(-a)) == 1.0 and spearman(a, -a) == pytest.approx(-1.0)
    assert similarities(MapPair.of(a), MapPair.of(-a))["spearman_abs"] == 1.0


def test_small_maps_get_a_window_that_fits():
    rng = np.random.default_rng(2)
    a, b = rng.random((5, 5)), rng.random((5, 5))
    assert ssim(a, b) == pytest.approx(structural_similarity(a / a.max(), b / b.max(), data_range=1.0, win_size=5))
    assert np.isnan(ssim(rng.random((2, 2)), rng.random((2, 2))))
