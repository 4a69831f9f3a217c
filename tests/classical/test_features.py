"""SDM feature functions: shapes, the skimage oracle, and the invariances HOG is built for."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from skimage.feature import hog as sk_hog

from lkstn.classical.features import FEATURES, get_features, hog, pixels


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_pixels_ravel_keeps_batch(rng):
    x = rng.random((3, 4, 50, 50))
    phi = pixels(x)
    assert phi.shape == (3, 4, 2500) and phi.dtype == np.float64
    np.testing.assert_array_equal(phi[2, 1], x[2, 1].ravel())
    colour = rng.random((5, 10, 12, 3))
    np.testing.assert_array_equal(pixels(colour, channel_axis=-1)[4], colour[4].ravel())


@pytest.mark.parametrize("channel_axis, core", [(None, (50, 50)), (-1, (50, 50, 3))])
def test_hog_shape_and_skimage_oracle(rng, channel_axis, core):
    x = rng.random((2, 3, *core))
    phi = hog(x, channel_axis=channel_axis)
    # 50x50 with 8x8 cells and 2x2 blocks: 5 x 5 blocks of 2 x 2 cells x 9 orientations
    assert phi.shape == (2, 3, 900)
    direct = sk_hog(
        x[1, 2],
        orientations=9,
        pixels_per_cell=(8, 8),
        cells_per_block=(2, 2),
        block_norm="L2-Hys",
        channel_axis=channel_axis,
    )
    np.testing.assert_array_equal(phi[1, 2], direct)


def test_hog_invariant_to_brightness_and_contrast(rng):
    """Gradients ignore an offset; block normalisation ignores a positive gain."""
    x = rng.random((4, 32, 32))
    base = hog(x)
    np.testing.assert_allclose(hog(x + 5.0), base, atol=1e-10)
    # not exact: skimage's block norm adds eps = 1e-5 (observed difference ~3e-8)
    np.testing.assert_allclose(hog(3.0 * x), base, atol=1e-6)
    assert not np.allclose(hog(x[:, ::-1]), base)  # but it does see the geometry


def test_hog_nan_sample_is_nan_and_others_untouched(rng):
    x = rng.random((3, 24, 24))
    x_bad = x.copy()
    x_bad[1, 5, 5] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        phi = hog(x_bad)
    assert np.isnan(phi[1]).all()
    np.testing.assert_array_equal(phi[[0, 2]], hog(x[[0, 2]]))


def test_hog_empty_batch_and_too_small():
    assert hog(np.zeros((0, 50, 50))).shape == (0, 900)
    with pytest.raises(ValueError, match="at least"):
        hog(np.zeros((2, 12, 50)))
    with pytest.raises(ValueError, match="channel_axis"):
        hog(np.zeros((2, 50, 50)), channel_axis=0)


def test_registry():
    assert get_features("pixels") is pixels and get_features("HOG") is hog
    assert set(FEATURES) == {"pixels", "hog"}

    def mine(samples, *, channel_axis=None):
        return pixels(samples, channel_axis=channel_axis) ** 2

    assert get_features(mine) is mine
    with pytest.raises(ValueError, match="features must be one of"):
        get_features("sift")
