"""The Baker & Matthews evaluation, the planar problem and the pixel-frame (OpenCV) conversions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lkstn import ICLK, LK, Affine, Homography, Translation, corner_error, warp_image
from lkstn.experiments.convergence import evaluate, fixed_starts, safe_corner_error
from lkstn.experiments.problems import (
    box_warp,
    params_from_pixel_matrix,
    pixel_matrix,
    planar_problem,
)
from lkstn.result import AlignmentResult


def test_planar_problem_template_is_the_box_of_the_image():
    prob = planar_problem((100, 100), box=(150, 90, 249, 189))
    # a 100x100 template of a 100x100-pixel box is a plain crop: pixel (i, j) is image pixel
    np.testing.assert_allclose(prob.template, prob.image[90:190, 150:250], atol=1e-12)
    rgb = planar_problem((50, 50), color=True)
    assert rgb.template.shape == (50, 50, 3) and rgb.channel_axis == -1


def test_box_warp_maps_corners_onto_the_box_and_translation_cannot():
    p = box_warp(Homography(), (10, 20, 49, 39), (60, 80))
    px = (Homography().apply(p, Homography().corners()) + 1) * np.array([79 / 2, 59 / 2])
    np.testing.assert_allclose(px, [[10, 20], [49, 20], [49, 39], [10, 39]], atol=1e-9)
    with pytest.raises(ValueError, match="box"):
        box_warp(Translation(), (10, 20, 49, 39), (60, 80))


def test_fixed_starts_depend_on_seed_and_sigma_only():
    prob = planar_problem()
    a = fixed_starts(Affine(), prob.p_true, 3.0, (50, 50), 5, seed=1)
    b = fixed_starts(Affine(), prob.p_true, 3.0, (50, 50), 5, seed=1)
    c = fixed_starts(Affine(), prob.p_true, 4.0, (50, 50), 5, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_evaluate_counts_and_curves_match_a_direct_computation():
    prob = planar_problem((50, 50))
    iclk = ICLK(prob.template, Affine(), n_iter=15)
    lk = LK(prob.template, Affine(), n_iter=15)
    calls = []

    def stay(image, p_init):  # a plain callable: returns the start (never moves)
        calls.append(p_init.shape)
        return p_init

    def oracle(image, p_init):  # an AlignmentResult with a two-row history, always right
        p = np.broadcast_to(prob.p_true, p_init.shape)
        return AlignmentResult(np.stack([p_init, p]), None, np.ones(len(p_init), bool))

    sigmas = [0.2, 6.0]
    methods = {"ICLK": iclk, "LK": lk, "stay": stay, "oracle": oracle}
    rep = evaluate(methods, prob.image, prob.p_true, (50, 50), sigmas, 12, seed=3)
    assert calls == [(12, 6), (12, 6)]  # all starts of a sigma in one call
    for r, sigma in zip(rep.results, sigmas, strict=True):
        p_init = fixed_starts(Affine(), prob.p_true, sigma, (50, 50), 12, seed=3)
        err0 = corner_error(Affine(), p_init, prob.p_true, (50, 50))
        assert r.percent_converged["stay"] == pytest.approx(100 * np.mean(err0 < 1))
        assert r.percent_converged["oracle"] == 100.0
        hist = iclk.align(prob.image, p_init).history
        err = corner_error(Affine(), hist, prob.p_true, (50, 50))
        assert r.percent_converged["ICLK"] == pytest.approx(100 * np.mean(err[-1] < 1))
        everyone = (err[-1] < 1) & (err0 < 1)  # 'stay' converges only where it starts close
        assert r.n_all_converged <= everyone.sum()
        if r.n_all_converged:
            assert len(r.mean_error_per_iteration["ICLK"]) == 16
            assert len(r.mean_error_per_iteration["oracle"]) == 2
            assert r.mean_error_per_iteration["oracle"][-1] == pytest.approx(0, abs=1e-9)
    assert rep.results[0].percent_converged["stay"] == 100.0  # sigma 0.2: starts within 1 px
    assert rep.results[1].percent_converged["ICLK"] > rep.results[1].percent_converged["stay"]
    text = rep.to_json()
    back = json.loads(text)
    assert back["methods"] == list(methods) and len(back["results"]) == 2
    assert "sigma" in rep.table()


def test_evaluation_on_the_rgb_cat():
    # the same evaluation on colour images: every channel aligned at once (channel_axis=-1)
    rgb, grey = planar_problem((50, 50), color=True), planar_problem((50, 50))
    methods = {
        "ICLK": ICLK(rgb.template, Affine(), n_iter=30, channel_axis=-1),
        "ICLK-g3-gb": ICLK(
            rgb.template, Affine(), n_iter=30, channel_axis=-1, gradient_sigma=3.0,
            photometric="gain-bias",
        ),
    }  # fmt: skip
    rep = evaluate(methods, rgb.image, rgb.p_true, (50, 50), [1.0, 6.0], 20, seed=0)
    assert rep.results[0].percent_converged == {"ICLK": 100.0, "ICLK-g3-gb": 100.0}
    wide = rep.results[1].percent_converged
    assert wide["ICLK-g3-gb"] >= wide["ICLK"] + 10  # the smoothed step's wider basin, in RGB
    p_init = fixed_starts(Affine(), rgb.p_true, 6.0, (50, 50), 20, seed=0)
    np.testing.assert_array_equal(p_init, fixed_starts(Affine(), grey.p_true, 6.0, (50, 50), 20, 0))


def test_non_finite_estimates_count_as_failures():
    prob = planar_problem()
    p = np.stack([prob.p_true, np.full(6, np.nan), np.array([-1.0, 0, 0, 0, -1.0, 0])])
    err = safe_corner_error(Affine(), p, prob.p_true, (50, 50))
    assert err[0] == 0 and np.isinf(err[1]) and np.isfinite(err[2])


@pytest.mark.parametrize("warp", [Affine(), Homography()], ids=str)
def test_pixel_matrix_round_trip(warp):
    rng = np.random.default_rng(0)
    p = 0.1 * rng.standard_normal((5, warp.n_params))
    M = pixel_matrix(warp, p, (50, 60), (300, 451))
    np.testing.assert_allclose(
        params_from_pixel_matrix(warp, M, (50, 60), (300, 451)), p, atol=1e-12
    )
    if not warp.projective:
        back = params_from_pixel_matrix(warp, M[:, :2], (50, 60), (300, 451))
        np.testing.assert_allclose(back, p, atol=1e-12)
    # the template's pixel (0, 0) lands where W sends the canonical corner (-1, -1)
    corner = warp.apply(p, np.array([[-1.0, -1.0]]))[:, 0]  # (5, 2) image canonical
    h = M @ np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(h[:, :2] / h[:, 2:], (corner + 1) * [450 / 2, 299 / 2], atol=1e-9)


@pytest.mark.parametrize("warp", [Affine(), Homography()], ids=str)
def test_opencv_inverse_map_warp_equals_warp_image(warp):
    cv2 = pytest.importorskip("cv2")
    prob = planar_problem((50, 50), warp=warp)
    p = fixed_starts(warp, prob.p_true, 3.0, (50, 50), 1, seed=0)[0]
    M = pixel_matrix(warp, p, (50, 50), prob.image.shape)
    src = prob.image.astype(np.float32)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    if warp.projective:
        ours_cv = cv2.warpPerspective(src, M.astype(np.float64), (50, 50), flags=flags)
    else:
        ours_cv = cv2.warpAffine(src, M[:2].astype(np.float64), (50, 50), flags=flags)
    ours = warp_image(prob.image, warp, p, (50, 50))
    # float32 arithmetic in OpenCV: agreement to ~1e-5 (half a pixel off would give ~0.1)
    assert np.abs(ours_cv - ours).max() < 1e-4
