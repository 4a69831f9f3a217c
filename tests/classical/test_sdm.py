"""SDM: synthetic ground truth in template pixels, the IC-LK limit, ridge against sklearn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from lkstn import SDM as LazySDM
from lkstn import Affine, Aligner, corner_error
from lkstn.classical.sdm import SDM, ridge_regression
from lkstn.perturb import perturb
from lkstn.sampling import pixel_to_canonical, warp_image

WARP = Affine()
SHAPE = (24, 24)


def smooth_image(shape, blur, seed=0):
    """Gaussian-filtered white noise, zero mean, unit variance."""
    img = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), blur)
    return (img - img.mean()) / img.std()


def box_warp(centre, side, angle_deg, image_shape):
    """Affine ``p`` sending the template corners to a rotated square box (image pixels)."""
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    corners = WARP.corners()
    box = np.asarray(centre) + side / 2 * corners @ np.array([[c, s], [-s, c]])
    return WARP.fit(corners, pixel_to_canonical(box, image_shape))


@pytest.fixture(scope="module")
def problem():
    image = smooth_image((96, 96), 3.0)
    return image, box_warp((48, 48), 36, 10, image.shape)  # 1.5 image px per template px


@pytest.fixture(scope="module")
def easy_sdm(problem):
    image, p_true = problem
    sdm = SDM(template_shape=SHAPE, warp=WARP, n_stages=3, alpha=1e-2)
    return sdm.fit_perturbed(image, p_true, 1.0, 300, np.random.default_rng(1))


def held_out(p_true, sigma, n=200, seed=2, shape=SHAPE):
    return perturb(WARP, p_true, sigma, shape, np.random.default_rng(seed), n=n)


def test_recovers_easy_perturbations(problem, easy_sdm):
    image, p_true = problem
    p_init = held_out(p_true, 1.0)  # a seed the training starts did not use
    result = easy_sdm.align(image, p_init)
    err = corner_error(WARP, result.p, p_true, SHAPE)
    assert np.median(corner_error(WARP, p_init, p_true, SHAPE)) > 1.0
    assert np.median(err) < 0.05 and (err < 1.0).all()
    assert result.converged.all()
    assert isinstance(easy_sdm, Aligner) and LazySDM is SDM
    assert result.history.shape == (4, 200, 6) and result.cost.shape == (4, 200)
    assert np.all(np.diff(np.median(result.cost, 1)) < 0)  # the residual falls stage by stage
    assert np.all(np.diff(easy_sdm.train_errors) < 0)


def test_more_stages_lower_error(problem):
    image, p_true = problem
    fits = {
        n: SDM(template_shape=SHAPE, n_stages=n, alpha=1.0).fit_perturbed(
            image, p_true, 3.0, 500, np.random.default_rng(1)
        )
        for n in (1, 4)
    }
    # sequential learning: the first stage does not depend on how many follow it
    for a, b in zip(fits[1].regressors[0], fits[4].regressors[0], strict=True):
        np.testing.assert_array_equal(a, b)
    p_init = held_out(p_true, 3.0)
    med = {
        n: np.median(corner_error(WARP, s.align(image, p_init).p, p_true, SHAPE))
        for n, s in fits.items()
    }
    assert med[4] < 0.1 * med[1] and med[4] < 0.05


def test_first_stage_approaches_iclk_as_sigma_shrinks():
    """[LL17] Sec. 2: with raw pixels, sigma -> 0 and alpha -> 0, SDM's first regressor is IC-LK's.

    Ridge must vanish more slowly than the O(sigma^4) variance of the second-order appearance
    terms and faster than the O(sigma^2) signal: alpha = 100 sigma^3 M (sigma canonical). Against
    the exact Gauss-Newton regressor of the bilinearly sampled appearance (finite differences of
    ``warp_image``) the difference falls like sigma; against IC-LK it stops at the few per cent by
    which IC-LK's finite-difference template gradients (central inside, one-sided on the border)
    differ from that exact derivative.
    """
    from lkstn.classical.iclk import ICLK

    image, h, M = smooth_image((72, 72), 6.0), 30, 1000
    src = np.array([[0.0, 0], [h - 1, 0], [h - 1, h - 1], [0, h - 1]])  # template pixels
    # unit scale, template pixels on image cell centres: tiny perturbations stay in their cells
    p_true = WARP.fit(pixel_to_canonical(src, (h, h)), pixel_to_canonical(src + 20.5, (72, 72)))
    T = warp_image(image, WARP, p_true, (h, h))
    R_lk, b_lk = ICLK(T, warp=WARP).regressor()
    eps = 1e-6
    G = np.stack(
        [
            (warp_image(image, WARP, WARP.compose(p_true, d), (h, h)) - T).ravel() / eps
            for d in np.eye(6) * eps
        ],
        1,
    )  # (D, P) dI(p_true o delta)/d delta, exact inside a bilinear cell
    R_gn = np.linalg.pinv(G)
    to_lk, to_gn = [], []
    for sigma in (0.4, 0.1, 0.025):
        alpha = 100 * (sigma / ((h - 1) / 2)) ** 3 * M
        sdm = SDM(template_shape=(h, h), n_stages=1, alpha=alpha)
        R, b = sdm.fit_perturbed(image, p_true, sigma, M, np.random.default_rng(3)).regressors[0]
        to_lk.append(np.linalg.norm(R - R_lk) / np.linalg.norm(R_lk))
        to_gn.append(np.linalg.norm(R - R_gn) / np.linalg.norm(R_gn))
    b_gap = np.linalg.norm(b - b_lk) / np.linalg.norm(b_lk)
    # measured (2026-11): to_lk ~ [0.32, 0.13, 0.07], to_gn ~ [0.31, 0.12, 0.04], b_gap ~ 0.05
    assert to_lk[0] > to_lk[1] > to_lk[2] and to_lk[2] < 0.1 and b_gap < 0.1
    assert to_gn[0] > 2 * to_gn[1] > 4 * to_gn[2] and to_gn[2] < 0.06


def test_same_seed_same_regressors(problem):
    image, p_true = problem

    def fit(seed):
        sdm = SDM(template_shape=SHAPE, n_stages=2, alpha=0.1)
        return sdm.fit_perturbed(image, p_true, 2.0, 100, np.random.default_rng(seed)).regressors

    first, again, other = fit(5), fit(5), fit(6)
    for (R1, b1), (R2, b2) in zip(first, again, strict=True):
        assert np.array_equal(R1, R2) and np.array_equal(b1, b2)
    assert not np.array_equal(first[0][0], other[0][0])


def test_ridge_matches_sklearn():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    for n, D in ((40, 15), (15, 40)):  # primal and dual branches
        X, Y = rng.standard_normal((n, D)) + 3.0, rng.standard_normal((n, 4)) - 1.0
        R, b = ridge_regression(X, Y, 0.7)
        ref = Ridge(alpha=0.7).fit(X, Y)
        np.testing.assert_allclose(R, ref.coef_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(b, ref.intercept_, rtol=1e-9, atol=1e-12)
    R, b = ridge_regression(X, Y, 0.0)  # n < D: minimum-norm interpolation
    np.testing.assert_allclose(X @ R.T + b, Y, atol=1e-9)
    np.testing.assert_allclose(R.T, np.linalg.pinv(X - X.mean(0)) @ (Y - Y.mean(0)), atol=1e-9)


def test_batch_of_images_equals_one_image(problem, easy_sdm):
    """N images with M starts each: the same regression as their starts pooled in one image."""
    image, p_true = problem
    p_init = perturb(WARP, p_true, 1.0, SHAPE, np.random.default_rng(1), n=300)
    pooled = SDM(template_shape=SHAPE, n_stages=3, alpha=1e-2).fit(image, p_true, p_init)
    batched = SDM(template_shape=SHAPE, n_stages=3, alpha=1e-2).fit(
        np.stack([image, image]), np.stack([p_true, p_true]), p_init.reshape(2, 150, 6)
    )
    for (R1, b1), (R2, b2), (R3, _) in zip(
        pooled.regressors, batched.regressors, easy_sdm.regressors, strict=True
    ):
        np.testing.assert_allclose(R2, R1, rtol=1e-6, atol=1e-8 * np.abs(R1).max())
        np.testing.assert_allclose(b2, b1, rtol=1e-6, atol=1e-8)
        np.testing.assert_array_equal(R1, R3)  # fit_perturbed is perturb + fit


def test_align_batch_and_extra_iterations(problem, easy_sdm):
    image, p_true = problem
    p_init = held_out(p_true, 1.0, n=3)
    one = easy_sdm.align(image, p_init, n_iter=5)
    batch = easy_sdm.align(np.stack([image] * 3), p_init, n_iter=5)  # a batch, one start each
    np.testing.assert_allclose(batch.history, one.history, atol=1e-12)
    # iterations beyond n_stages reuse the last stage: p <- p o dp^-1 with dp = R phi + b
    R, b = easy_sdm.regressors[-1]
    dp = warp_image(image, WARP, one.history[4], SHAPE).reshape(3, -1) @ R.T + b
    np.testing.assert_allclose(one.history[5], WARP.compose(one.history[4], WARP.inverse(dp)))
    assert easy_sdm.align(image, p_init, n_iter=0).history.shape == (1, 3, 6)
    # the template SDM learns from one image is that image at p_true: zero cost there
    assert easy_sdm.align(image, p_true, n_iter=0).cost[0] == pytest.approx(0.0, abs=1e-20)


def test_colour_images(problem):
    image, p_true = problem
    colour = np.stack([image, image[::-1], 0.5 * image], -1)  # (H, W, 3)
    sdm = SDM(template_shape=SHAPE, n_stages=2, alpha=1e-2, channel_axis=-1)
    sdm.fit_perturbed(colour, p_true, 1.0, 200, np.random.default_rng(1))
    assert sdm.regressors[0][0].shape == (6, 24 * 24 * 3) and sdm.template.shape == (24, 24, 3)
    err = corner_error(WARP, sdm.align(colour, held_out(p_true, 1.0)).p, p_true, SHAPE)
    assert np.median(err) < 0.05
    with pytest.raises(ValueError, match="channels"):
        sdm.align(colour[..., :2], p_true)


def test_hog_sdm_reduces_error(problem):
    image, p_true = problem
    shape = (32, 32)  # HOG needs 16x16 pixels per block: 3x3 blocks here
    sdm = SDM(template_shape=shape, n_stages=3, alpha=1.0, features="hog")
    sdm.fit_perturbed(image, p_true, 1.0, 300, np.random.default_rng(1))
    assert sdm.regressors[0][0].shape == (6, 3 * 3 * 2 * 2 * 9)
    p_init = held_out(p_true, 1.0, shape=shape)
    before = np.median(corner_error(WARP, p_init, p_true, shape))
    after = np.median(corner_error(WARP, sdm.align(image, p_init).p, p_true, shape))
    assert after < 0.25 * before  # measured: 1.68 px -> ~0.1 px


@pytest.mark.parametrize(
    "images, p_true, p_init, match",
    [
        (np.zeros(30), np.zeros(6), np.zeros((4, 6)), "images"),
        (np.zeros((2, 3, 30, 30)), np.zeros(6), np.zeros((4, 6)), "images"),
        (np.zeros((30, 30)), np.zeros((1, 6)), np.zeros((4, 6)), "p_true"),
        (np.zeros((30, 30)), np.zeros(4), np.zeros((4, 6)), "p_true"),
        (np.zeros((30, 30)), np.zeros(6), np.zeros((1, 4, 6)), "p_init"),
        (np.zeros((30, 30)), np.zeros(6), np.zeros((0, 6)), "p_init"),
        (np.zeros((2, 30, 30)), np.zeros((2, 6)), np.zeros((3, 4, 6)), "p_init"),
        (np.zeros((2, 30, 30)), np.zeros((2, 6)), np.zeros((2, 4, 5)), "p_init"),
        (np.full((30, 30), np.nan), np.zeros(6), np.zeros((4, 6)), "non-finite"),
        (np.zeros((30, 30)), np.full(6, np.nan), np.zeros((4, 6)), "p_true"),
    ],
)
def test_fit_rejects_bad_input(images, p_true, p_init, match):
    with pytest.raises(ValueError, match=match):
        SDM(template_shape=(8, 8)).fit(images, p_true, p_init)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_stages": 0}, "n_stages"),
        ({"alpha": -1.0}, "alpha"),
        ({"tol": 0.0}, "tol"),
        ({"features": "sift"}, "features"),
        ({"template_shape": (1, 8)}, "template_shape"),
        ({"channel_axis": 0}, "channel_axis"),
        ({"warp": "projective"}, "warp"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SDM(**{"template_shape": (8, 8), **kwargs})


def test_align_failures(problem, easy_sdm):
    image, p_true = problem
    with pytest.raises(RuntimeError, match="not fitted"):
        SDM(template_shape=SHAPE).align(image, p_true)
    with pytest.raises(ValueError, match="p_init"):
        easy_sdm.align(image, np.zeros(4))
    with pytest.raises(ValueError, match="broadcast"):
        easy_sdm.align(np.stack([image] * 3), np.zeros((2, 6)))
    with pytest.raises(ValueError, match="n_iter"):
        easy_sdm.align(image, p_true, n_iter=-1)
    bad = image.copy()
    bad[30:70, 30:70] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # failure is data: no warning flood
        alone = easy_sdm.align(bad, held_out(p_true, 1.0, n=4))
        mixed = easy_sdm.align(np.stack([image, bad, image]), p_true)
    assert not alone.converged.any() and np.isnan(alone.p).all()
    # a NaN image fails alone: its neighbours in the batch are untouched
    np.testing.assert_array_equal(mixed.converged, [True, False, True])
    assert corner_error(WARP, mixed.p[[0, 2]], p_true, SHAPE).max() < 0.05
