"""ICLK: exact ground truth on the cat, finite differences, and the regressor of [LL17] eq. (6)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from scipy import ndimage

from lkstn import ICLK, Affine, Homography, Similarity, Translation, corner_error, warp_image
from lkstn.perturb import perturb
from lkstn.problems import planar_problem

WARPS = [Affine(), Homography()]


@lru_cache
def problem(shape=(50, 50), warp="affine", color=False):
    return planar_problem(shape, warp=warp, color=color)


def starts(prob, sigma, n, seed=0):
    rng = np.random.default_rng(seed)
    return perturb(prob.warp, prob.p_true, sigma, prob.template_shape, rng, n=n)


@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("warp", WARPS, ids=str)
def test_no_motion_stays_at_truth(warp, color):
    prob = problem(warp=warp, color=color)
    p_init = np.tile(prob.p_true, (3, 1))
    res = ICLK(prob.template, warp, n_iter=5, tol=0.0, channel_axis=prob.channel_axis).align(
        prob.image, p_init
    )
    assert res.history.shape == (6, 3, warp.n_params)
    np.testing.assert_allclose(
        res.history, np.broadcast_to(prob.p_true, res.history.shape), atol=1e-12
    )
    assert res.cost.max() < 1e-24  # the template is I(p_true): zero residual up to rounding


@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("warp", WARPS, ids=str)
def test_recovers_known_warp(warp, color):
    prob = problem(warp=warp, color=color)
    p_init = starts(prob, sigma=1.0, n=12)
    aligner = ICLK(prob.template, warp, n_iter=80, tol=1e-5, channel_axis=prob.channel_axis)
    res = aligner.align(prob.image, p_init)
    err = corner_error(warp, res.p, prob.p_true, prob.template_shape)
    assert corner_error(warp, p_init, prob.p_true, prob.template_shape).min() > 0.3
    assert err.max() < 0.05  # template pixels
    assert res.converged.all()


@pytest.mark.parametrize("warp", WARPS, ids=str)
def test_cost_never_increases_on_small_perturbations(warp):
    prob = problem((100, 100), warp=warp)
    res = ICLK(prob.template, warp, n_iter=15, tol=0.0).align(prob.image, starts(prob, 0.5, 10))
    rise = np.diff(res.cost, axis=0)
    assert (rise <= 1e-12 * res.cost[0]).all()
    assert (res.cost[-1] < 1e-3 * res.cost[0]).all()


@pytest.mark.parametrize("warp", [Translation(), Similarity()], ids=str)
def test_translation_and_similarity(warp):
    image = problem().image
    p_true = np.array([0.05, -0.04]) if warp == Translation() else np.array([-0.5, 0.05, 0.1, -0.1])
    shape = image.shape if warp == Translation() else (60, 90)
    template = warp_image(image, warp, p_true, shape)
    p_init = perturb(warp, p_true, 1.0, shape, np.random.default_rng(1), n=8)
    res = ICLK(template, warp, n_iter=60, tol=1e-6).align(image, p_init)
    assert corner_error(warp, res.p, p_true, shape).max() < 0.05
    assert res.converged.all()


def test_batched_call_equals_one_at_a_time():
    prob = problem()
    aligner = ICLK(prob.template, Affine(), n_iter=25, tol=1e-3)
    # one image, starts in a (2, 3) grid: same answers as six separate calls
    p_init = starts(prob, 3.0, 6).reshape(2, 3, 6)
    res = aligner.align(prob.image, p_init)
    assert res.history.shape == (26, 2, 3, 6) and res.converged.shape == (2, 3)
    for idx in np.ndindex(2, 3):
        one = aligner.align(prob.image, p_init[idx])
        np.testing.assert_allclose(res.history[(slice(None), *idx)], one.history, atol=1e-12)
        np.testing.assert_allclose(res.cost[(slice(None), *idx)], one.cost, atol=1e-15)
        assert res.converged[idx] == one.converged
    # a batch of different images, one start each
    images = np.stack([prob.image, 0.7 * prob.image + 0.1, prob.image[::-1]])
    p_b = starts(prob, 3.0, 3, seed=5)
    res_b = aligner.align(images, p_b)
    for i in range(3):
        one = aligner.align(images[i], p_b[i])
        np.testing.assert_allclose(res_b.history[:, i], one.history, atol=1e-12)
        assert res_b.converged[i] == one.converged
    assert not res_b.converged[2]  # the flipped cat does not contain the template


@pytest.mark.parametrize("photometric", [None, "bias"])
@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("warp", WARPS, ids=str)
def test_regressor_gives_the_iclk_step(warp, color, photometric):
    prob = problem(warp=warp, color=color)
    aligner = ICLK(prob.template, warp, channel_axis=prob.channel_axis, photometric=photometric)
    R, b = aligner.regressor()
    C = 3 if color else 1
    assert R.shape == (warp.n_params, 50 * 50 * C) and b.shape == (warp.n_params,)
    p0 = starts(prob, 2.0, 4)
    Ip = warp_image(prob.image, warp, p0, prob.template_shape, channel_axis=prob.channel_axis)
    dp_regressor = Ip.reshape(4, -1) @ R.T + b  # [LL17] eq. (6)
    p1 = (
        ICLK(
            prob.template,
            warp,
            n_iter=1,
            tol=0.0,
            channel_axis=prob.channel_axis,
            photometric=photometric,
        )
        .align(prob.image, p0)
        .p
    )
    # p1 = compose(p0, inverse(dp))  =>  dp = inverse(compose(inverse(p0), p1))
    dp_step = warp.inverse(warp.compose(warp.inverse(p0), p1))
    np.testing.assert_allclose(dp_regressor, dp_step, atol=1e-9)
    assert np.abs(dp_step).max() > 1e-3  # a real step, not a trivial zero


@pytest.mark.parametrize("channels", [None, 2])
@pytest.mark.parametrize("warp", [Translation(), Similarity(), Affine(), Homography()], ids=str)
def test_sd_images_match_finite_differences_of_warp_image(warp, channels):
    """``sd = dT(p)/dp`` at 0, with ``T(p) = warp_image(T, warp, p)``: units and frames agree.

    At pixel centres the symmetric difference of the bilinear interpolant is the central
    difference, so interior pixels match for any template, even a random one.
    """
    rng = np.random.default_rng(3)
    shape = (11, 14) if channels is None else (11, 14, channels)
    T = rng.random(shape)
    axis = None if channels is None else -1
    aligner = ICLK(T, warp, channel_axis=axis)
    eps = 1e-6
    fd = np.stack(
        [
            warp_image(T, warp, eps * e, (11, 14), channel_axis=axis)
            - warp_image(T, warp, -eps * e, (11, 14), channel_axis=axis)
            for e in np.eye(warp.n_params)
        ],
        -1,
    ) / (2 * eps)
    assert aligner.sd_images.shape == (*shape, warp.n_params)
    np.testing.assert_allclose(aligner.sd_images[1:-1, 1:-1], fd[1:-1, 1:-1], atol=1e-4)
    sd = aligner.sd_images.reshape(-1, warp.n_params)
    np.testing.assert_allclose(aligner.hessian, sd.T @ sd, rtol=1e-12)


def test_pyramid_widens_the_basin():
    prob = problem()
    p_init = starts(prob, 8.0, 40, seed=2)
    flat = ICLK(prob.template, Affine(), n_iter=30).align(prob.image, p_init)
    pyr = ICLK(prob.template, Affine(), n_iter=30, pyramid=3).align(prob.image, p_init)
    assert pyr.history.shape == (3 * 30 + 1, 40, 6)
    ok = lambda r: corner_error(Affine(), r.p, prob.p_true, (50, 50)) < 1.0  # noqa: E731
    assert ok(pyr).sum() >= ok(flat).sum() + 5
    assert np.isfinite(pyr.cost[-1][pyr.converged]).all()


@pytest.mark.parametrize("color", [False, True])
def test_smoothed_gradients_keep_the_exact_alignment_and_recover_a_known_warp(color):
    # the error image uses T itself, so I(p) = T is still a fixed point of the iteration
    prob = problem(warp="homography", color=color)
    kw = dict(n_iter=200, tol=1e-6, channel_axis=prob.channel_axis)
    smooth = ICLK(prob.template, Homography(), gradient_sigma=1.0, **kw)
    plain = ICLK(prob.template, Homography(), **kw)
    np.testing.assert_array_equal(smooth.sd_images, plain.sd_images)  # the template's own
    assert not np.allclose(smooth.regressor()[0], plain.regressor()[0])
    at_truth = smooth.align(prob.image, np.tile(prob.p_true, (2, 1)))
    np.testing.assert_allclose(at_truth.p, np.tile(prob.p_true, (2, 1)), atol=1e-12)
    res = smooth.align(prob.image, starts(prob, 1.0, 12))
    assert corner_error(Homography(), res.p, prob.p_true, (50, 50)).max() < 0.05
    assert res.converged.all()
    zero = ICLK(prob.template, Homography(), gradient_sigma=0, **kw)
    np.testing.assert_array_equal(zero.regressor()[0], plain.regressor()[0])  # the classical one


@pytest.mark.parametrize("sigma", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("warp", WARPS, ids=str)
def test_the_step_inverts_the_linearisation_of_the_image(warp, sigma):
    # Newton: a small displacement of the image along each parameter gives back that
    # parameter, to first order, whatever the images the error is projected on (sd_G);
    # a smooth image, so that central differences and bilinear sampling agree on its slopes
    smooth = ndimage.gaussian_filter(problem().image, 2.0)
    prob = planar_problem((100, 100), warp=warp, image=smooth)
    aligner = ICLK(prob.template, warp, gradient_sigma=sigma)
    R, b = aligner.regressor()
    sd = aligner.sd_images.reshape(-1, warp.n_params)
    np.testing.assert_allclose(R @ sd, np.eye(warp.n_params), atol=1e-10)
    # the same against finite differences of the sampled image, I(p_true o delta)
    eps = 1e-4
    fd = np.stack(
        [
            warp_image(prob.image, warp, warp.compose(prob.p_true, eps * e), (100, 100))
            - warp_image(prob.image, warp, warp.compose(prob.p_true, -eps * e), (100, 100))
            for e in np.eye(warp.n_params)
        ],
        -1,
    ).reshape(-1, warp.n_params) / (2 * eps)
    np.testing.assert_allclose(R @ fd, np.eye(warp.n_params), atol=0.01)


def test_smoothed_gradients_converge_fast_near_the_optimum():
    # sd_G^T sd is the derivative of the projected error: the last iterations are Newton's,
    # not slower than the classical IC-LK's (whose own finite-difference gradients of a
    # bilinearly sampled image already cost it speed)
    prob = problem(warp="affine")
    p_init = starts(prob, 1.0, 12)
    err = {
        s: corner_error(
            Affine(), ICLK(prob.template, Affine(), n_iter=20, tol=0.0, gradient_sigma=s)
            .align(prob.image, p_init).p, prob.p_true, (50, 50),
        ).max()
        for s in (0.0, 3.0)
    }  # fmt: skip
    assert err[3.0] < 1e-8
    assert err[3.0] <= err[0.0]


@pytest.mark.parametrize(
    ("warp", "size", "sigma", "gain"), [("homography", 100, 8.0, 8), ("affine", 50, 6.0, 6)]
)
def test_smoothed_gradients_widen_the_basin(warp, size, sigma, gain):
    # benchmarks/README.md: e.g. homography 100x100 at sigma 8, 50 iterations: 51 % -> 81 %
    prob = problem((size, size), warp=warp)
    p_init = starts(prob, sigma, 40, seed=3)
    ok = lambda r: corner_error(prob.warp, r.p, prob.p_true, (size, size)) < 1.0  # noqa: E731
    plain = ICLK(prob.template, prob.warp, n_iter=50).align(prob.image, p_init)
    smooth = ICLK(prob.template, prob.warp, n_iter=50, gradient_sigma=3.0).align(prob.image, p_init)
    assert ok(smooth).sum() >= ok(plain).sum() + gain
    assert (smooth.converged <= np.isfinite(smooth.cost[-1])).all()


def test_gradient_sigma_is_in_template_pixels_on_every_level():
    # a coarser level smooths by the same width in the template's frame: fewer of its pixels
    prob = problem((100, 100))
    pyr = ICLK(prob.template, Affine(), pyramid=2, gradient_sigma=3.0)
    coarse = pyr._levels[1].template[..., 0]  # 50x50
    alone = ICLK(coarse, Affine(), gradient_sigma=3.0 * 49 / 99)
    np.testing.assert_allclose(pyr._levels[1].R, alone._levels[0].R, rtol=1e-10, atol=1e-12)
    assert not np.allclose(
        pyr._levels[1].R, ICLK(coarse, Affine(), gradient_sigma=3.0)._levels[0].R
    )


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1"])
def test_bad_gradient_sigma_is_refused(bad):
    with pytest.raises(ValueError, match="gradient_sigma"):
        ICLK(problem().template, Affine(), gradient_sigma=bad)


# -- photometric invariance: project out offset and gain ([BM04] Sec. 4.2) ----------------------


def relit(prob, gain, bias):
    """The image under a per-channel gain and offset: the template is no longer I(p_true)."""
    return prob.image * gain + bias


@pytest.mark.parametrize("color", [False, True])
def test_gain_and_bias_are_discounted_and_the_warp_recovered(color):
    prob = problem(warp="homography", color=color)
    p_init = starts(prob, 1.0, 12)
    kw = dict(n_iter=100, tol=1e-6, channel_axis=prob.channel_axis)

    def error(photometric, gain, bias):
        res = ICLK(prob.template, Homography(), photometric=photometric, **kw).align(
            relit(prob, gain, bias), p_init
        )
        return corner_error(Homography(), res.p, prob.p_true, (50, 50)), res.converged

    gains = [np.array([1.4, 0.8, 1.2]), np.array([4.0, 2.5, 0.3])] if color else [1.4, 4.0, 0.3]
    bias = np.array([-0.2, 0.1, 0.0]) if color else -0.2
    for gain in gains:  # above 2, a fixed projection alone would overshoot and diverge
        err, converged = error("gain-bias", gain, bias)
        assert err.max() < 0.05 and converged.all()
    assert error(None, gains[0], bias)[0].min() > 0.15  # plain SSD is pulled off
    err, converged = error("bias", 1.0, bias)  # an offset alone
    assert err.max() < 0.05 and converged.all()
    assert error("bias", gains[0], bias)[0].max() > 0.05  # a gain it does not model


@pytest.mark.parametrize("photometric", ["bias", "gain-bias"])
def test_relit_truth_is_a_fixed_point_with_zero_cost(photometric):
    prob = problem(color=True)
    gain = 1.0 if photometric == "bias" else np.array([0.7, 1.3, 1.1])
    image = relit(prob, gain, np.array([0.1, -0.3, 0.2]))
    aligner = ICLK(prob.template, Affine(), n_iter=5, tol=0.0, channel_axis=-1,
                   photometric=photometric)  # fmt: skip
    res = aligner.align(image, np.tile(prob.p_true, (2, 1)))
    np.testing.assert_allclose(res.history, np.broadcast_to(prob.p_true, res.history.shape),
                               atol=1e-10)  # fmt: skip
    # sums of squares less projections: rounding of ~0.05 x 7,500 terms; plain SSD gives ~0.05
    assert res.cost.max() < 1e-12


@pytest.mark.parametrize("photometric", ["bias", "gain-bias"])
@pytest.mark.parametrize("color", [False, True])
def test_photometric_cost_is_the_residual_left_by_offset_and_gain(color, photometric):
    prob = problem(color=color)
    C = 3 if color else 1
    aligner = ICLK(prob.template, Affine(), n_iter=4, tol=0.0, channel_axis=prob.channel_axis,
                   photometric=photometric)  # fmt: skip
    image = relit(prob, 1.3, 0.05)
    res = aligner.align(image, starts(prob, 2.0, 3))
    T = prob.template.reshape(50 * 50, C)
    t = T - T.mean(0)
    for k in (0, 2, 4):
        Ip = warp_image(image, Affine(), res.history[k], (50, 50),
                        channel_axis=prob.channel_axis).reshape(3, 50 * 50, C)  # fmt: skip
        i = Ip - Ip.mean(1, keepdims=True)
        if photometric == "bias":  # the best offset per channel: both zero-mean
            residual = i - t
        else:  # and equal contrast: i scaled to the norm of t, per channel
            residual = i * np.linalg.norm(t, axis=0) / np.linalg.norm(i, axis=1, keepdims=True) - t
        expected = (residual**2).sum((1, 2)) / T.size
        np.testing.assert_allclose(res.cost[k], expected, rtol=1e-7)


def test_projected_sd_images_are_blind_to_offset_and_gain():
    prob = problem(color=True)
    aligner = ICLK(prob.template, Homography(), channel_axis=-1, photometric="gain-bias")
    sd = aligner.sd_images.reshape(-1, 3, 8)  # (pixels, channels, P)
    T = prob.template.reshape(-1, 3, 1)
    scale = np.abs(sd).sum(0)
    assert (np.abs(sd.sum(0)) < 1e-10 * scale).all()  # orthogonal to a constant channel
    assert (np.abs((sd * T).sum(0)) < 1e-10 * scale).all()  # and to the template's channel
    plain = ICLK(prob.template, Homography(), channel_axis=-1)
    assert np.abs(plain.sd_images.reshape(-1, 3, 8).sum(0)).max() > 1e-3 * scale.max()


def test_a_flat_image_region_fails_instead_of_converging_with_gain_bias():
    prob = problem()
    image = prob.image.copy()
    image[:] = 0.5  # nothing to correlate with: the contrast normalisation is undefined
    res = ICLK(prob.template, Affine(), photometric="gain-bias").align(image, starts(prob, 1, 3))
    assert not res.converged.any()


def test_gain_bias_has_no_linear_regressor():
    with pytest.raises(ValueError, match="not linear"):
        ICLK(problem().template, Affine(), photometric="gain-bias").regressor()


@pytest.mark.parametrize("bad", ["gain", "ECC", 1, True])
def test_bad_photometric_is_refused(bad):
    with pytest.raises(ValueError, match="photometric"):
        ICLK(problem().template, Affine(), photometric=bad)
