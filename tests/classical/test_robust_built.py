"""``ICLK.robust`` keeps what it built: the same template again is not built anew, and what it
returns behaves exactly as a fresh build."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lkstn import ICLK, Affine, warp_image
from lkstn.classical.iclk import clear_built


def problem():
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.standard_normal((120, 140)), 2.0)
    p_true = np.array([-0.5, 0.0, 0.1, 0.0, -0.5, 0.0])
    return image, p_true, warp_image(image, Affine(), p_true, (40, 40))


def test_the_same_template_again_shares_the_build_and_aligns_the_same():
    image, p_true, template = problem()
    clear_built()
    first = ICLK.robust(template, warp="affine")
    again = ICLK.robust(template.copy(), warp="affine")  # same pixels, another array
    assert again is not first and again._levels is first._levels  # shared, read-only
    again.n_iter = 3  # a copy: changing it leaves the kept one alone
    assert ICLK.robust(template, warp="affine").n_iter == first.n_iter
    p0 = p_true + np.array([0.0, 0.0, 0.04, 0.0, 0.0, -0.03])
    clear_built()
    fresh = ICLK.robust(template, warp="affine")
    assert fresh._levels is not first._levels  # cleared: built anew
    np.testing.assert_array_equal(first.align(image, p0).p, fresh.align(image, p0).p)


def test_another_template_warp_mask_or_setting_is_another_build():
    _, _, template = problem()
    base = ICLK.robust(template)
    other = template.copy()
    other[0, 0] += 1e-9  # one pixel differs
    mask = np.ones(template.shape)
    mask[:5] = 0.0
    for aligner in (
        ICLK.robust(other),
        ICLK.robust(template, warp="homography"),
        ICLK.robust(template, mask=mask),
        ICLK.robust(template, n_iter=7),
    ):
        assert aligner._levels is not base._levels
    assert ICLK.robust(template, n_iter=7).n_iter == 7


def test_aligning_leaves_the_callers_image_alone_with_and_without_a_crop():
    """The aligners convert only the region they use (the crop around the starts) to float64;
    whatever their stages do to their levels never reaches the image passed in, whether it is
    float64 already (no copy at the input) or another dtype."""
    rng = np.random.default_rng(1)
    image = ndimage.gaussian_filter(rng.standard_normal((240, 280)), 2.0)
    p_true = np.array([-0.75, 0.0, 0.1, 0.0, -0.75, 0.0])  # a quarter of the image's side
    template = warp_image(image, Affine(), p_true, (40, 40))
    p0 = p_true + np.array([0.0, 0.0, 0.02, 0.0, 0.0, -0.01])
    for picture in (image.copy(), (255 * (image - image.min()) / np.ptp(image)).astype(np.uint8)):
        before = picture.copy()
        t = template if picture.dtype == float else 255 * template
        cropping = ICLK(t, Affine(), pyramid=2, photometric="gain-bias", polish=True)
        for aligner in (cropping, ICLK(t, Affine())):  # a crop around the start, and none
            aligner.align(picture, p0)
            np.testing.assert_array_equal(picture, before)
            aligner.align(picture[None], p0[None])  # a batch: no crop
            np.testing.assert_array_equal(picture, before)
