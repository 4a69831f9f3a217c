"""Steps to improper warps fail (``region.proper``), and ``ICLK(polish=True)``'s forwards
additive last stage ends where the cost is stationary, not at IC-LK's other fixed points.

Ground truth is synthetic: a template cut at native scale (a pixel translation) from a
synthetic image, starts drawn by the paper's corner noise.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lkstn import ICLK, Affine, Homography, corner_error, warp_image
from lkstn.classical.region import proper
from lkstn.perturb import perturb
from lkstn.pixels import params_from_pixel_matrix


def cut(image: np.ndarray, warp, x0: int, y0: int, side: int):
    """``(template, p_true)``: the ``side`` px square at pixel ``(x0, y0)`` of ``image``."""
    box = np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1]])
    p = params_from_pixel_matrix(warp, box, (side, side), image.shape)
    return warp_image(image, warp, p, (side, side)), p


def half_flat(seed: int) -> np.ndarray:
    """Flat and bright left of column 88, dark smooth texture right of it (a 32 px template at
    x = 64 is flat on its left 24 columns: its perspective terms are barely seen)."""
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.normal(size=(120, 160)), 4.0)
    texture = 0.3 + 0.2 * texture / texture.std()
    return ndimage.gaussian_filter(np.where(np.arange(160) < 88, 0.92, texture), 1.0)


def disks(seed: int) -> np.ndarray:
    """Three overlapping disks of random contrast, lightly blurred: sharp, sparse edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:80, 0:90]
    image = np.zeros((80, 90))
    for _ in range(3):
        cx, cy, r = rng.uniform(30, 60), rng.uniform(25, 55), rng.uniform(3, 12)
        image += rng.uniform(-1, 1) * ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)
    image = ndimage.gaussian_filter(image, 0.7)
    return (image - image.min()) / np.ptp(image)


def test_proper_rejects_horizons_through_the_template_mirrors_and_nan():
    h = np.zeros((6, 8))
    h[1, 6:] = [0.3, -0.2]  # w = 1 + 0.3 x - 0.2 y > 0.5 on the square: proper
    h[2, 6] = 1.2  # w = 0 at x = -1/1.2, inside the square
    h[3, 7] = -1.0  # w = 0 on the bottom edge (y = 1): not proper either
    h[4, 4] = -2.0  # y -> -y: a mirror
    h[5, 0] = np.nan
    assert proper(Homography(), h).tolist() == [True, True, False, False, False, False]
    a = np.zeros((4, 6))
    a[1, 0] = -1.5  # x -> -x / 2: a mirror
    a[2, 0] = -1.0  # x -> 0: singular
    a[3, 5] = np.nan
    assert proper(Affine(), a).tolist() == [True, False, False, False]  # w = 1: det and NaN
    starts = perturb(Homography(), np.zeros(8), 5.0, (50, 50), np.random.default_rng(0), n=50)
    assert proper(Homography(), starts).all()  # the paper's noise at sigma 5: all proper


def test_smoothed_homography_steps_no_longer_walk_off_a_half_flat_template(monkeypatch):
    import lkstn.classical._gauss_newton as gn

    image = half_flat(4)
    template, p_true = cut(image, Homography(), 64, 44, 32)
    starts = perturb(Homography(), p_true, 0.64, (32, 32), np.random.default_rng(4), n=12)
    # the loop before the rule: smoothed steps walk from ~1 px to warps whose horizon cuts the
    # template (64 px off here), which no later stage undoes
    monkeypatch.setattr(gn, "proper", lambda warp, p: np.isfinite(p).all(-1))
    before = ICLK.robust(template, warp="homography", second_look=-1, polish=False, image_sigma=0)
    err = corner_error(Homography(), before.align(image, starts).p, p_true, (32, 32))
    assert err.max() > 20, np.round(err, 2)
    monkeypatch.undo()
    # a step to an improper warp fails, the next stage restarts from the start: all on the truth
    result = ICLK.robust(template, warp="homography").align(image, starts)
    err = corner_error(Homography(), result.p, p_true, (32, 32))
    assert err.max() < 0.05, np.round(err, 3)
    assert proper(Homography(), result.p).all() and result.converged.all()


def test_polish_ends_on_the_minimum_where_iclk_stops_pixels_off():
    image = disks(21)
    template, p_true = cut(image, Homography(), 37, 31, 16)
    starts = perturb(Homography(), p_true, 0.32, (16, 16), np.random.default_rng(121), n=8)
    ic = ICLK.robust(template, warp="homography", polish=False).align(image, starts)
    err = corner_error(Homography(), ic.p, p_true, (16, 16))
    assert (err > 2.0).sum() >= 3, np.round(err, 2)  # IC-LK's fixed points 2-4 px off
    polished = ICLK.robust(template, warp="homography").align(image, starts)
    err = corner_error(Homography(), polished.p, p_true, (16, 16))
    assert err.max() < 0.05, np.round(err, 3)
    rows = (ICLK.robust(template).pyramid + 2) * 50 + 1  # IC levels, refine, polish
    assert polished.history.shape == (rows, 8, 8)


@pytest.mark.parametrize("photometric", [None, "bias", "gain-bias"])
@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_polish_converges_on_exact_data_in_every_photometric_mode(photometric, colour, masked):
    rng = np.random.default_rng(7)
    full = ndimage.gaussian_filter(rng.standard_normal((90, 100, 3)), (2.0, 2.0, 0))
    template, p_true = cut(full[..., 0], Homography(), 30, 25, 36)
    image = full if colour else full[..., 0]
    if colour:  # the same box of every channel
        template = np.stack([cut(full[..., c], Homography(), 30, 25, 36)[0] for c in range(3)], -1)
    seen = {None: image, "bias": image + 0.2, "gain-bias": 0.6 * image + 0.25}[photometric]
    mask = (np.arange(36)[:, None] + np.arange(36) > 8).astype(float) if masked else None
    aligner = ICLK(
        template, Homography(), n_iter=30, tol=1e-8, photometric=photometric, mask=mask,
        channel_axis=-1 if colour else None, polish=True,
    )  # fmt: skip
    p_init = perturb(Homography(), p_true, 1.0, (36, 36), rng, n=4)
    result = aligner.align(seen, p_init)
    assert result.history.shape == (2 * 30 + 1, 4, 8)  # the IC-LK stage, then the polish
    err = corner_error(Homography(), result.p, p_true, (36, 36))
    assert err.max() < 1e-4 and result.converged.all(), np.round(err, 6)


def _direct_step(warp, photometric, mask, T, image, p):
    """The forwards additive step written out (the oracle): the steepest-descent images
    ``G_k = grad I(W(x; p)) . dW/dp_k`` (the image's gradients sampled at ``W(x; p)``, the warp's
    Jacobian at ``p`` by central differences of ``Warp.apply``), centred, projected off the
    unit image direction (gain-bias) and weighted, row by row, then the normal equations."""
    from lkstn.sampling import canonical_grid, image_gradients

    h, w, C = T.shape
    m = h * w
    gx, gy = image_gradients(image, channel_axis=-1)
    i, sx, sy = (
        warp_image(a, warp, p, (h, w), channel_axis=-1).reshape(m, C) for a in (image, gx, gy)
    )
    grid, eps = canonical_grid((h, w)), 1e-6
    dW = np.stack([(warp.apply(p + eps * d, grid) - warp.apply(p - eps * d, grid)) / (2 * eps)
                   for d in np.eye(len(p))], -1)  # (m, 2, P)  # fmt: skip
    G = sx[..., None] * dW[:, None, 0] + sy[..., None] * dW[:, None, 1]  # (m, C, P)
    r = np.ones((m, 1)) if mask is None else np.sqrt(mask).reshape(m, 1)
    t = T.reshape(m, C)
    if photometric in ("bias", "gain-bias"):
        wt = r * r / (r * r).sum()
        i, t, G = i - (wt * i).sum(0), t - (wt * t).sum(0), G - (wt[..., None] * G).sum(0)
    i, t, G = r * i, r * t, r[..., None] * G
    s = np.ones(C)
    if photometric == "gain-bias":
        u = i / np.linalg.norm(i, axis=0)
        G = G - u[..., None] * np.einsum("mc,mcp->cp", u, G)
        s = np.linalg.norm(t, axis=0) / np.linalg.norm(i, axis=0)
    e, sG = s * i - t, (s[:, None] * G).reshape(m * C, -1)
    cost = (e * e).sum() / ((r * r).sum() * C)  # the mean weighted squared residual
    return np.linalg.solve(sG.T @ sG, -sG.T @ e.reshape(-1)), cost


@pytest.mark.parametrize("warp", ["translation", "similarity", "affine", "homography"])
@pytest.mark.parametrize("photometric", [None, "bias", "gain-bias"])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_gram_form_of_the_forwards_step_is_the_direct_one(warp, photometric, channels):
    """``polish._step`` forms its normal equations from one Gram matrix of the image gradients
    times the homogeneous points, the residual, the image direction and ones, through the
    warp's basis, with rank-one corrections;
    the step equals the one from the centred, projected, weighted steepest-descent images
    themselves, to 1e-7 relative (the oracle's central differences of the warp: truncation
    O(eps^2) and rounding O(1e-16 / eps), about 1e-10, amplified by the system's condition)."""
    from lkstn.classical import polish
    from lkstn.classical._sampler import Sampler
    from lkstn.sampling import canonical_grid, homogeneous_grid, image_gradients
    from lkstn.warps import warp_from_name

    warp = warp_from_name(warp)
    rng = np.random.default_rng(channels)
    image = ndimage.gaussian_filter(rng.random((90, 100, channels)), (4, 4, 0))
    T = 1.3 * image[30:54, 35:65] + 0.1
    h, w = T.shape[:2]
    mask = rng.uniform(0.2, 1.0, (h, w)) if channels == 3 else None
    box = np.array([[1.0, 0, 35], [0, 1.0, 30], [0, 0, 1]])  # the template's pixels, inside
    p = rng.normal(0, 0.01, warp.n_params)  # translation, similarity: about the whole image
    if warp.name in ("affine", "homography"):
        p += params_from_pixel_matrix(warp, box, (h, w), image.shape)
    aligner = ICLK(T, warp, channel_axis=-1, photometric=photometric, mask=mask)
    grid = canonical_grid((h, w))
    gx, gy = image_gradients(image[None], channel_axis=-1)
    sampler = Sampler(np.concatenate([image[None], gx, gy], -1), warp, grid)
    cost, dp, ok = polish._step(aligner, T, sampler, homogeneous_grid((h, w)), p[None], None)
    direct, direct_cost = _direct_step(warp, photometric, mask, T, image, p)
    assert ok.all()
    np.testing.assert_allclose(dp[0], direct, rtol=1e-7, atol=1e-7 * np.abs(direct).max())
    np.testing.assert_allclose(cost[0], direct_cost, rtol=1e-12)  # sums of squares: rounding


@pytest.mark.parametrize("margin", [0, 6])
def test_the_stage_on_a_window_gives_the_whole_levels_rows(monkeypatch, margin):
    """The forwards stage samples the image and its gradients in a window around the
    alignments, and on the whole level once a footprint leaves the window: the same rows, costs
    and scores bit for bit as on the whole level, whether the steps stay inside (margin 6) or
    leave it (margin 0: steps of a few pixels cross the window's edge, which it notices)."""
    from lkstn.classical import polish

    rng = np.random.default_rng(2)
    image = ndimage.gaussian_filter(rng.normal(size=(90, 120)), 2.0)
    warp = Homography()
    T, p_true = cut(image, warp, 50, 30, 24)
    starts = cut(image, warp, 53, 28, 24)[1][None]  # 3 px right, 2 px up: steps that size
    aligner = ICLK(T, warp, photometric="gain-bias", polish=True)
    run = (starts[None], np.full((1, 1), np.inf), None, None)
    images = image[None, ..., None]
    widths, wholes = [], 0

    class Window(polish._Region):
        def __init__(self, warp, images, grid, **_):
            super().__init__(warp, images, grid, margin)

        def sampler(self, p):
            nonlocal wholes
            had_box = self.box is not None
            out = super().sampler(p)
            widths.append(None if self.box is None else self.box[2] - self.box[0])
            wholes += had_box and self.box is None
            return out

    class Whole(polish._Region):
        def _around(self, p, margin_):
            return None

    outs = []
    for region in (Window, Whole):
        monkeypatch.setattr(polish, "_Region", region)
        outs.append(polish.polish_stage(aligner, aligner._T, images, run, None, 12,
                                        score=aligner._score))  # fmt: skip
    assert widths[0] is not None and widths[0] < image.shape[1] / 2  # a window, at first
    assert (wholes == 1) == (margin == 0)  # a footprint left the narrow window
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)
    err = corner_error(warp, outs[0][0][-1], p_true, (24, 24))
    assert (err < 0.05).all()  # the stage converged: these rows are worth comparing


@pytest.mark.parametrize("photometric", ["gain-bias", "bias"])
def test_the_stage_ends_at_a_point_it_measured_and_scores_it(monkeypatch, photometric):
    """A step below ``tol`` is not taken: each alignment ends at the last point the stage
    measured, so the last cost row is the cost there (the direct step's cost, to rounding),
    and with ``"gain-bias"`` (one channel, no mask) the score is read from that cost, with no
    sampling pass, and equals the ZNCC of template and image warped at the final ``p``."""
    from lkstn.classical import _gauss_newton
    from lkstn.score import zncc

    rng = np.random.default_rng(5)
    image = 0.7 * ndimage.gaussian_filter(rng.normal(size=(90, 120)), 2.0) + 0.3
    warp = Homography()
    T, p_true = cut(image, warp, 40, 30, 28)
    starts = perturb(warp, p_true, 1.5, (28, 28), rng, n=6)
    measured = []
    score = _gauss_newton.GaussNewton._score

    def counted(self, sampler, p, index, cost=None):
        measured.append(len(p))
        return score(self, sampler, p, index, cost)

    monkeypatch.setattr(_gauss_newton.GaussNewton, "_score", counted)
    aligner = ICLK(T, warp, photometric=photometric, polish=True, n_iter=30, min_score=-1)
    result = aligner.align(image, starts)
    assert result.converged.all() and corner_error(warp, result.p, p_true, (28, 28)).max() < 0.01
    for p, cost in zip(result.p, result.cost[-1], strict=True):
        direct_cost = _direct_step(warp, photometric, None, T[..., None], image[..., None], p)[1]
        np.testing.assert_allclose(cost, direct_cost, rtol=1e-9)  # sums of squares: rounding
    warped = warp_image(image, warp, result.p, T.shape)
    np.testing.assert_allclose(result.score, zncc(T, warped), rtol=0, atol=1e-9)
    # the IC stages' score (which decides the second look) and the final one: read from the
    # cost with "gain-bias", sampled with "bias"
    assert measured == ([] if photometric == "gain-bias" else [6, 6])
