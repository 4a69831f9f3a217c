"""``image_sigma``: one more stage, at the finest resolution, on both images smoothed.

The physics: smoothing both images by one Gaussian is a level of the scale space between the
pyramid's first coarse level and the images; its cost is smoother, so its basin is wider. A blur
is a convolution and commutes with a translation (and with the bilinear resampling of a
constant sub-pixel shift), so a template cut from an image at a fractional offset is, once both
are smoothed, still exactly that image's window. The stages after it see the images as given,
so the alignment ends at the unsmoothed cost's minimum (the least-squares estimate under white
noise, which smoothing would only scatter more) and the paper's regressor is the template's own.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lkstn import ICLK, LK, Affine, CompositionalLK, Homography, corner_error, warp_image
from lkstn.classical.robust import PREFILTER, PREFILTER_MAX
from lkstn.filters import gaussian_filter
from lkstn.pixels import params_from_pixel_matrix


def textured(seed: int, shape=(100, 120)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    return 0.5 + 0.15 * image / image.std()


def cut(image, warp, x0, y0, side):
    box = np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1]])
    p = params_from_pixel_matrix(warp, box, (side, side), image.shape)
    return warp_image(image, warp, p, (side, side)), p


@pytest.mark.parametrize("make", [ICLK, LK, CompositionalLK], ids=["ICLK", "LK", "CLK"])
def test_the_first_stage_aligns_the_smoothed_inputs_and_the_last_the_images(make):
    image = textured(0)
    T, p_true = cut(image, Affine(), 40.3, 30.6, 32)
    p0 = p_true + np.array([[0.02, -0.01, 0.03, 0.01, 0.02, -0.02], [0.0, 0.01, -0.02, 0, 0, 0.03]])
    s, n = 1.1, 40
    a = make(T, "affine", n_iter=n, tol=1e-10, image_sigma=s).align(image, p0)
    assert a.history.shape == (2 * n + 1, 2, 6)  # the smoothed stage, then the finest level
    sT, sI = (gaussian_filter(x, s, mode="nearest") for x in (T, image))
    b = make(sT, "affine", n_iter=n, tol=1e-10).align(sI, p0)
    # The same pixels: the image is smoothed on a crop widened by the filter's radius, so
    # nothing the iterates read differs from smoothing the whole image.
    np.testing.assert_allclose(a.history[: n + 1], b.history, atol=1e-10)
    # and the last stage starts there and ends where the images' own cost is stationary:
    again = make(T, "affine", n_iter=n, tol=1e-10).align(image, a.p)
    np.testing.assert_allclose(again.p, a.p, atol=1e-9)
    assert a.converged.all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_batch_of_images_is_smoothed_image_by_image(dtype):
    """A batch ``(B, H, W)`` with one start each (no crop): the same first stage as aligning
    each smoothed image on its own; float32 samples through torch, to its rounding."""
    images = np.stack([textured(4), textured(5)])
    T, p_true = cut(images[0], Affine(), 30.2, 25.7, 32)
    p0 = p_true + np.array([[0.02, -0.01, 0.03, 0.01, 0.02, -0.02], [0.0, 0.01, -0.02, 0, 0, 0.03]])
    s, n = 1.1, 30
    # tol=1e-12: the smoothed stage hands on without its last step (below tol), which
    # aligning the smoothed images alone takes
    batch = ICLK(T, "affine", n_iter=n, tol=1e-12, image_sigma=s, dtype=dtype).align(images, p0)
    sT = gaussian_filter(T, s, mode="nearest")
    for b in range(2):
        sI = gaussian_filter(images[b], s, mode="nearest")
        one = ICLK(sT, "affine", n_iter=n, tol=1e-12, dtype=dtype).align(sI, p0[b])
        tol = 1e-10 if dtype == np.float64 else 1e-4
        np.testing.assert_allclose(batch.history[: n + 1, b], one.history, atol=tol)


@pytest.mark.parametrize("warp", [Affine(), Homography()], ids=["affine", "homography"])
def test_a_translated_template_is_recovered_exactly(warp):
    """The blur commutes with the fractional shift: the truth stays the cost's minimum."""
    image = textured(1)
    T, p_true = cut(image, warp, 35.4, 41.7, 32)
    p0 = warp.params(warp.matrix(p_true) @ warp.matrix(warp.params(np.array(
        [[1.02, 0.01, 0.04], [-0.015, 0.99, -0.03], [0, 0, 1]]))))  # fmt: skip
    result = ICLK.robust(T, warp=warp).align(image, p0)
    assert ICLK.robust(T, warp=warp).image_sigma == pytest.approx(
        min(PREFILTER * 31, PREFILTER_MAX)
    )
    assert result.converged
    assert corner_error(warp, result.p, p_true, (32, 32)) < 1e-3  # px: rounding, not a bias


def test_the_smoothed_stage_widens_the_basin():
    """100 starts with corners 3 px off (sigma) on a 24 px homography template, on each of four
    textures: more end within half a pixel with the smoothed stage (measured 284 against 261 of
    400, more on every texture; rounding moves a start or two at most)."""
    warp, side, n = Homography(), 24, 100
    hits = {0.0: 0, 1.1: 0}
    for seed in range(4):
        image = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(100, 120)), 0.7)
        T, p_true = cut(0.5 + 0.15 * image / image.std(), warp, 40, 30, side)
        corners = warp.corners()
        moved = corners + np.random.default_rng(10 + seed).normal(0, 3.0 * 2 / side, (n, 4, 2))
        to = warp.apply(np.broadcast_to(p_true, (n, 8)), moved)
        p0 = warp.fit(np.broadcast_to(corners, (n, 4, 2)), to)
        for s in hits:
            aligner = ICLK(T, warp, n_iter=50, gradient_sigma=0.92, refine=True, image_sigma=s)
            p = aligner.align(0.5 + 0.15 * image / image.std(), p0).p
            hits[s] += int((corner_error(warp, p, p_true, (side, side)) < 0.5).sum())
    assert hits[1.1] >= hits[0.0] + 10, hits


def test_template_property_is_the_template_as_given():
    T = textured(3, (20, 20))
    aligner = ICLK(T, "affine", image_sigma=1.5)
    np.testing.assert_array_equal(aligner.template, T)
    for ours, plain in zip(aligner.regressor(), ICLK(T, "affine").regressor(), strict=True):
        np.testing.assert_array_equal(ours, plain)  # [LL17] eq. (6): the template's own map


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), True, "1"])
def test_bad_image_sigma_names_the_argument(bad):
    with pytest.raises(ValueError, match="image_sigma"):
        ICLK(np.zeros((16, 16)) + np.arange(16), "affine", image_sigma=bad)
