"""LK and CompositionalLK: ground truth, Gauss-Newton steps against finite differences, agreement
with ICLK, and vectorisation that does not change answers."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from lkstn import ICLK, LK, Affine, CompositionalLK, Homography, corner_error, warp_image
from lkstn.perturb import perturb
from lkstn.problems import planar_problem

WARPS = [Affine(), Homography()]
FORWARD = [LK, CompositionalLK]


@lru_cache
def problem(shape=(50, 50), warp="affine", color=False):
    return planar_problem(shape, warp=warp, color=color)


def starts(prob, sigma, n, seed=0):
    rng = np.random.default_rng(seed)
    return perturb(prob.warp, prob.p_true, sigma, prob.template_shape, rng, n=n)


def smooth_image(shape=(90, 120)):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    return np.sin(xx / 6.0 + 0.3) * np.cos(yy / 9.0) + 0.5 * np.exp(
        -((xx - 60) ** 2 + (yy - 40) ** 2) / 400
    )


@pytest.mark.parametrize("cls", FORWARD)
@pytest.mark.parametrize("warp", WARPS, ids=str)
def test_no_motion_stays_at_truth(cls, warp):
    prob = problem(warp=warp)
    res = cls(prob.template, warp, n_iter=4, tol=0.0).align(
        prob.image, np.tile(prob.p_true, (2, 1))
    )
    np.testing.assert_allclose(
        res.history, np.broadcast_to(prob.p_true, res.history.shape), atol=1e-12
    )


@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("warp", WARPS, ids=str)
@pytest.mark.parametrize("cls", FORWARD)
def test_recovers_known_warp(cls, warp, color):
    prob = problem(warp=warp, color=color)
    p_init = starts(prob, sigma=1.0, n=8)
    res = cls(prob.template, warp, n_iter=60, tol=1e-5, channel_axis=prob.channel_axis).align(
        prob.image, p_init
    )
    assert corner_error(warp, res.p, prob.p_true, prob.template_shape).max() < 0.05
    assert res.converged.all()


@pytest.mark.parametrize("warp", WARPS, ids=str)
@pytest.mark.parametrize("cls", FORWARD)
def test_cost_never_increases_on_small_perturbations(cls, warp):
    prob = problem(warp=warp)
    res = cls(prob.template, warp, n_iter=10, tol=0.0).align(prob.image, starts(prob, 0.5, 8))
    assert (np.diff(res.cost, axis=0) <= 1e-12 * res.cost[0]).all()
    assert (res.cost[-1] < 1e-3 * res.cost[0]).all()


@pytest.mark.parametrize("warp", WARPS, ids=str)
def test_lk_compositional_and_inverse_compositional_reach_the_same_p(warp):
    prob = problem((100, 100), warp=warp)
    p_init = starts(prob, 1.0, 6, seed=4)
    kw = dict(n_iter=40, tol=1e-9)
    p = {
        cls: cls(prob.template, warp, **kw).align(prob.image, p_init).p
        for cls in (LK, CompositionalLK, ICLK)
    }
    np.testing.assert_allclose(p[LK], p[ICLK], atol=1e-4)
    np.testing.assert_allclose(p[CompositionalLK], p[ICLK], atol=1e-4)
    assert np.abs(p_init - p[ICLK]).max() > 1e-2  # they all moved, to the same place


@pytest.mark.parametrize("warp", WARPS, ids=str)
@pytest.mark.parametrize("cls", FORWARD)
def test_first_step_is_gauss_newton_with_finite_difference_jacobian(cls, warp):
    """One iteration against ``lstsq(dI(p)/dp, T - I(p))`` with ``dI/dp`` by finite differences
    of ``warp_image``: checks the frames and units of the analytic steepest-descent images."""
    image = smooth_image()
    p_true = np.array([-0.45, 0.03, 0.05, -0.02, -0.4, -0.1, 0.02, -0.03][: warp.n_params])
    shape = (40, 50)
    template = warp_image(image, warp, p_true, shape)
    p0 = warp.compose(
        p_true, np.array([0.02, -0.01, 0.03, 0.01, -0.02, 0.02, 0.01, 0.0])[: warp.n_params]
    )
    moved = (lambda d: p0 + d) if cls is LK else (lambda d: warp.compose(p0, d))
    eps = 1e-6
    J = np.stack(
        [
            (
                warp_image(image, warp, moved(eps * e), shape)
                - warp_image(image, warp, moved(-eps * e), shape)
            ).ravel()
            for e in np.eye(warp.n_params)
        ],
        -1,
    ) / (2 * eps)
    dp_fd = np.linalg.lstsq(J, (template - warp_image(image, warp, p0, shape)).ravel(), rcond=None)[
        0
    ]
    p1 = cls(template, warp, n_iter=1, tol=0.0).align(image, p0).p
    dp = p1 - p0 if cls is LK else warp.compose(warp.inverse(p0), p1)
    assert np.linalg.norm(dp - dp_fd) < 0.05 * np.linalg.norm(dp_fd)


@pytest.mark.parametrize("cls", FORWARD)
def test_batched_call_equals_one_at_a_time(cls):
    prob = problem(warp=Homography())
    aligner = cls(prob.template, Homography(), n_iter=15, tol=1e-3)
    p_init = starts(prob, 3.0, 4)
    res = aligner.align(prob.image, p_init)
    images = np.stack([prob.image, 0.5 * prob.image, np.roll(prob.image, 3, axis=1)])
    res_b = aligner.align(images, p_init[:3])
    for i in range(4):
        one = aligner.align(prob.image, p_init[i])
        np.testing.assert_allclose(res.history[:, i], one.history, atol=1e-12)
        np.testing.assert_allclose(res.cost[:, i], one.cost, atol=1e-15)
        assert res.converged[i] == one.converged
    for i in range(3):
        one = aligner.align(images[i], p_init[i])
        np.testing.assert_allclose(res_b.history[:, i], one.history, atol=1e-12)
        assert res_b.converged[i] == one.converged


@pytest.mark.parametrize("cls", FORWARD)
def test_pyramid_keeps_the_canonical_frame(cls):
    """p transfers between levels unchanged: a coarse-to-fine run from the truth ends there."""
    prob = problem((100, 100))
    res = cls(prob.template, Affine(), n_iter=10, tol=1e-8, pyramid=3).align(
        prob.image, prob.p_true
    )
    assert res.history.shape == (31, 6)
    coarse_drift = corner_error(Affine(), res.history[10], prob.p_true, (100, 100))
    assert coarse_drift < 1.0  # the blurred coarse levels agree with the truth to a pixel
    assert corner_error(Affine(), res.p, prob.p_true, (100, 100)) < 1e-4
