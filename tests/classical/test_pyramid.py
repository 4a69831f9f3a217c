"""The pyramid step against its definition: the 2-D Gaussian blur, then bilinear sampling of
the blurred image on the half frame's canonical grid (``warp_image`` at the identity)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lkstn import Translation, warp_image
from lkstn.classical.pyramid import _SIGMA, downsample, gaussian_pyramid, level_shape


@pytest.mark.parametrize("shape", [(1, 40, 40, 1), (1, 41, 57, 1), (3, 16, 23, 3), (2, 7, 6, 1)])
def test_the_separable_step_is_the_blur_then_the_canonical_sampling(shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.random(shape)
    blurred = ndimage.gaussian_filter(image, (0, _SIGMA, _SIGMA, 0), mode="nearest")
    small = level_shape(shape[1:3], 1)
    expected = warp_image(blurred, Translation(), np.zeros(2), small, channel_axis=-1)
    out = downsample(image, channel_axis=-1, batch_ndim=1)
    assert out.shape == (shape[0], *small, shape[3])
    # values in [0, 1], each a short sum of products: agreement to a few ulps
    np.testing.assert_allclose(out, expected, rtol=0, atol=8 * np.finfo(float).eps)


def test_odd_sides_decimate_the_blurred_image():
    image = np.random.default_rng(0).random((1, 33, 17, 1))
    blurred = ndimage.gaussian_filter(image, (0, _SIGMA, _SIGMA, 0), mode="nearest")
    out = gaussian_pyramid(image, 2, channel_axis=-1, batch_ndim=1)[1]
    np.testing.assert_allclose(out, blurred[:, ::2, ::2], rtol=0, atol=8 * np.finfo(float).eps)
