"""The display blur of the heatmap view against a plain numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from featuretree.render.pictures import smooth


def reference_blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian, radius int(3 sigma), edges reflected without repeating the edge pixel."""
    radius = max(1, int(3 * sigma))
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(values.astype(np.float64), radius, mode="reflect")
    rows = np.stack([np.convolve(r, kernel, mode="valid") for r in padded])
    return np.stack([np.convolve(c, kernel, mode="valid") for c in rows.T]).T


@pytest.mark.parametrize(("shape", "sigma"), [((224, 224), 3.5), ((32, 32), 1.0), ((300, 451), 7.0), ((5, 9), 1.0)])
def test_smooth_is_a_reflect_padded_gaussian(shape, sigma):
    values = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = smooth(values, sigma)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, reference_blur(values, sigma), atol=1e-6)


def test_smooth_keeps_a_constant_map_and_the_sum_of_a_centred_spike():
    assert np.allclose(smooth(np.full((20, 30), 2.5, np.float32), 2.0), 2.5)
    spike = np.zeros((41, 41), np.float32)
    spike[20, 20] = 1.0
    blurred = smooth(spike, 3.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5) and blurred[20, 20] == blurred.max()
