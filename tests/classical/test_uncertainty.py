"""``AlignmentResult.uncertainty``: the predicted RMS spread of the template's corners.

The physics: for residuals of variance ``sigma^2`` the least-squares estimate has covariance
``sigma^2 H^-1``; over many draws of the image noise the corners of the estimates scatter by
what the uncertainty predicts. A template with texture in one direction only leaves the warp
undetermined along it: the uncertainty is large there, where the score is not low.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lkstn import ICLK, LK, Affine, Homography, corner_error, warp_image
from lkstn.classical.uncertainty import corner_gain, corner_sigma, unit_covariance
from lkstn.pixels import params_from_pixel_matrix


def textured(seed: int, shape=(90, 110)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    return 0.5 + 0.15 * image / image.std()


def cut(image, warp, x0, y0, side):
    box = np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1]])
    p = params_from_pixel_matrix(warp, box, (side, side), image.shape)
    return warp_image(image, warp, p, (side, side)), p


@pytest.mark.parametrize(
    "make",
    [
        lambda T, w: ICLK(T, w, n_iter=50, tol=1e-6),
        lambda T, w: LK(T, w, n_iter=50, tol=1e-6),
        lambda T, w: ICLK(T, w, n_iter=50, tol=1e-6, gradient_sigma=2.0),  # R R^T, not H^-1
    ],
    ids=["ICLK", "LK", "ICLK-smoothed"],
)
def test_the_corners_scatter_over_noise_draws_as_predicted(make):
    """200 draws of Gaussian noise (sd 0.05) on one image: the RMS corner error of the
    estimates about the truth matches the median predicted uncertainty to 20 % (the sample
    RMS of 200 draws has about 3 % relative error; bilinear sampling and the linearisation
    account for the rest). CompositionalLK's estimates scatter more (about 1.7x here): its
    fixed point uses the gradients of the noisy warped image."""
    image = textured(0)
    warp = Affine()
    T, p_true = cut(image, warp, 40, 30, 24)
    rng = np.random.default_rng(1)
    noisy = image[None] + rng.normal(0.0, 0.05, (200, *image.shape))
    result = make(T, warp).align(noisy, np.repeat(p_true[None], 200, 0))
    done = result.converged
    assert done.mean() > 0.95
    observed = np.sqrt(np.mean(corner_error(warp, result.p[done], p_true, (24, 24)) ** 2))
    predicted = np.median(result.uncertainty[done])
    assert 0.05 < predicted < 1.0  # a noise-limited regime, not a trivial one
    assert abs(observed / predicted - 1.0) < 0.2


@pytest.mark.parametrize("warp", [Affine(), Homography()])
def test_robust_scatters_up_to_a_third_more_than_predicted(warp):
    """``ICLK.robust`` ends with forwards steps built from the noisy image's gradients, whose
    fixed point moves with the noise a little more than least squares: over 150 draws its
    corners scatter more than the uncertainty predicts (18 % affine, 34 % homography when
    written), never less, and asserted under 1.5x."""
    image = textured(0)
    T, p_true = cut(image, warp, 40, 30, 32)
    noisy = image[None] + np.random.default_rng(1).normal(0.0, 0.05, (150, *image.shape))
    aligner = ICLK.robust(T, warp=warp, max_uncertainty=np.inf)
    result = aligner.align(noisy, np.repeat(p_true[None], 150, 0))
    assert result.converged.all()
    observed = np.sqrt(np.mean(corner_error(warp, result.p, p_true, (32, 32)) ** 2))
    assert 1.0 < observed / np.median(result.uncertainty) < 1.5


def test_texture_in_one_direction_is_flagged_where_the_score_is_high():
    """Vertical stripes fix x but not y: aligned a few pixels off along the stripes, the score
    is high and the uncertainty large; on a textured template the same noise gives a small
    uncertainty. ``max_uncertainty`` turns the first into ``converged=False``."""
    yy, xx = np.mgrid[0:80, 0:100]
    stripes = 0.5 + 0.3 * np.sin(xx / 3.0) + 0.03 * np.sin(yy / 11.0)  # faint along y
    rng = np.random.default_rng(2)
    warp = Affine()
    T, p_true = cut(stripes, warp, 40, 25, 24)
    noisy = stripes + rng.normal(0.0, 0.05, stripes.shape)
    start = cut(stripes, warp, 40, 27, 24)[1]  # 2 px down, along the stripes
    loose = ICLK(T, warp, n_iter=50).align(noisy, start)
    strict = ICLK(T, warp, n_iter=50, max_uncertainty=0.5).align(noisy, start)
    assert loose.score > 0.95 and loose.converged  # a high score, stopped...
    assert corner_error(warp, loose.p, p_true, (24, 24)) > 1.0  # ...pixels off along y...
    assert loose.uncertainty > 1.0 and not strict.converged  # ...and flagged
    image = textured(3)
    T2, p2 = cut(image, warp, 40, 25, 24)
    good = ICLK(T2, warp, n_iter=50, max_uncertainty=0.5).align(
        image + rng.normal(0.0, 0.05, image.shape), p2
    )
    assert good.uncertainty < 0.2 and good.converged


def test_exact_data_has_no_uncertainty_and_a_nan_cost_has_nan():
    image = textured(4)
    warp = Affine()
    T, p_true = cut(image, warp, 30, 20, 30)
    result = ICLK(T, warp, n_iter=30, tol=1e-10).align(image, p_true + 0.01)
    assert result.uncertainty < 1e-6
    assert np.isnan(corner_sigma(np.array([np.nan]), 1.0, 100.0, 6)).all()
    assert np.isinf(corner_sigma(np.array([0.1]), np.inf, 100.0, 6)).all()
    assert corner_gain(warp, (30, 30), unit_covariance(np.zeros((6, 6)))) == np.inf


def test_chunks_and_masks_keep_the_uncertainty():
    image = textured(5)
    warp = Affine()
    T, p_true = cut(image, warp, 30, 20, 30)
    starts = p_true + np.random.default_rng(6).normal(0.0, 0.02, (5, 6))
    noisy = image + np.random.default_rng(7).normal(0.0, 0.05, image.shape)
    aligner = ICLK(T, warp, n_iter=30)
    whole, parts = aligner.align(noisy, starts), aligner.align(noisy, starts, chunk_size=2)
    np.testing.assert_allclose(parts.uncertainty, whole.uncertainty, rtol=1e-12)
    half = np.ones((30, 30))
    half[:, ::2] = 0.0  # every other column: half the pixels, about sqrt(2) more uncertain
    masked = ICLK(T, warp, n_iter=30, mask=half).align(noisy, starts)
    ratio = np.median(masked.uncertainty / whole.uncertainty)
    assert 1.2 < ratio < 1.7


@pytest.mark.parametrize("bad", [0, -1.0, "big", None])
def test_max_uncertainty_is_checked(bad):
    with pytest.raises(ValueError, match="max_uncertainty"):
        ICLK(textured(0)[:20, :20], "affine", max_uncertainty=bad)
