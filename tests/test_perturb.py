"""The paper's noise model: corner noise in template pixels, fitted warps, explicit rng."""

import numpy as np
import pytest
import torch

from lkstn.perturb import perturb, perturbation
from lkstn.result import corner_error
from lkstn.warps import Affine, Homography, Translation


def test_homography_moves_corners_by_sigma_pixels():
    # Each corner moves by (corner noise + shared shift): per axis variance 2 sigma^2,
    # so the mean squared corner displacement is 4 sigma^2 and the RMS corner error 2 sigma.
    sigma, shape = 3.0, (50, 50)
    d = perturbation(Homography(), 4000, sigma, shape, np.random.default_rng(0))
    err = corner_error(Homography(), d, np.zeros(8), shape)
    assert np.sqrt(np.mean(err**2)) == pytest.approx(2 * sigma, rel=0.03)


def test_translation_only_noise_is_shared_shift_plus_mean_corner_noise():
    d = perturbation(Translation(), 20000, 2.0, (21, 21), np.random.default_rng(1))
    # fitted shift = shared shift + mean of 4 corner noises: variance sigma^2 (1 + 1/4)
    np.testing.assert_allclose(d.std(0) * 10, 2.0 * np.sqrt(1.25), rtol=0.03)


def test_explicit_rng_is_reproducible_and_torch_matches_shapes():
    a = perturbation(Affine(), 5, 2.0, (50, 50), np.random.default_rng(7))
    b = perturbation(Affine(), 5, 2.0, (50, 50), np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    g = torch.Generator().manual_seed(7)
    t = perturbation(Affine(), (2, 3), 2.0, (50, 50), g, dtype=torch.float64)
    assert t.shape == (2, 3, 6) and t.dtype == torch.float64


def test_perturb_composes_in_template_frame():
    warp, shape = Affine(), (50, 50)
    p_true = np.array([0.2, 0.05, 0.3, -0.1, 0.1, -0.2])
    starts = perturb(warp, p_true, 5.0, shape, np.random.default_rng(3), n=10)
    delta = perturbation(warp, (10,), 5.0, shape, np.random.default_rng(3))
    np.testing.assert_allclose(starts, warp.compose(p_true, delta), atol=1e-12)
    # the corner error of a start is the corner error of its delta (template-frame noise)
    np.testing.assert_allclose(
        corner_error(warp, starts, p_true, shape), corner_error(warp, delta, np.zeros(6), shape)
    )


def test_bad_input():
    with pytest.raises(ValueError, match="sigma"):
        perturbation(Affine(), 3, -1.0, (50, 50), np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        perturbation(Affine(), 3, 1.0, (50, 50), 42)
