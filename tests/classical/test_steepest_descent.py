"""The template's steepest-descent images ``grad T . dW/dp`` at the identity
(:func:`lkstn.classical.systems.steepest_descent`), formed block by block of pixels.

The physics: ``sd_k(x)`` is the first-order change of the template at ``x`` when the warp
moves by ``dp = e_k``: for a smooth template, ``(T(W(x; eps e_k)) - T(W(x; -eps e_k))) / 2 eps``
(central differences of the warped template, at pixel centres where bilinear resampling
differences the two neighbours as the template's gradients do) gives it; and a template larger
than one block gives the rows a single formula over the whole grid gives.
"""

from __future__ import annotations

import numpy as np
import pytest

from lkstn import Affine, Homography, Similarity, warp_image
from lkstn.classical import systems
from lkstn.sampling import canonical_grid, image_gradients


def smooth_image(shape):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / np.array(shape).reshape(2, 1, 1)
    return np.sin(3 * xx + 1) * np.cos(2 * yy) + 0.5 * np.sin(5 * xx * yy)


@pytest.mark.parametrize("warp", [Similarity(), Affine(), Homography()])
def test_blocks_give_the_rows_of_the_whole_grid_formula(warp, monkeypatch):
    T = smooth_image((150, 140))[..., None]  # 21000 pixels: two blocks of 16384
    grid = canonical_grid(T.shape[:2])
    gx, gy = image_gradients(T, channel_axis=-1)
    J = warp.jacobian(grid)  # the whole grid at once
    whole = gx.reshape(-1, 1, 1) * J[:, None, 0] + gy.reshape(-1, 1, 1) * J[:, None, 1]
    blocks = systems.steepest_descent(T, warp, grid)
    np.testing.assert_allclose(blocks, whole, rtol=1e-15, atol=0)
    monkeypatch.setattr(systems, "_ROWS", 1000)  # many blocks, and a short last one
    np.testing.assert_allclose(systems.steepest_descent(T, warp, grid), whole, rtol=1e-15, atol=0)


@pytest.mark.parametrize("warp", [Affine(), Homography()])
def test_steepest_descent_is_the_derivative_of_the_warped_template(warp):
    image = smooth_image((400, 400))
    side = 120
    T = warp_image(image, warp, warp.identity(), (side, side))[..., None]  # smooth, 120 px
    sd = systems.steepest_descent(T, warp, canonical_grid((side, side)))[:, 0]  # (m, P)
    eps = 1e-5
    inner = np.zeros((side, side), bool)
    inner[5:-5, 5:-5] = True  # central differences of T are the gradient's estimate inside
    for k in range(warp.n_params):
        dp = np.zeros(warp.n_params)
        dp[k] = eps
        plus = warp_image(T[..., 0], warp, dp, (side, side))
        minus = warp_image(T[..., 0], warp, -dp, (side, side))
        numeric = ((plus - minus) / (2 * eps)).ravel()[inner.ravel()]
        analytic = sd[inner.ravel(), k]
        scale = np.abs(analytic).max()
        # at pixel centres, a shift of +-eps under bilinear resampling differences the two
        # neighbours, as the central differences of the gradients do (up to O(eps) cross terms)
        assert np.abs(numeric - analytic).max() < 1e-3 * scale, k
