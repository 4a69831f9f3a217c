"""Template masks (weighted least squares), the final score, and ``converged`` that means a good
alignment, for LK, CompositionalLK and ICLK; ``ICLK.robust``.

Ground truth is synthetic: a smooth random texture, a template sampled from it at a known warp.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lkstn import ICLK, LK, Affine, CompositionalLK, Homography, corner_error, warp_image
from lkstn.perturb import perturb
from lkstn.pixels import params_from_pixel_matrix
from lkstn.score import zncc

P_TRUE = np.array([-0.45, 0.03, 0.08, -0.02, -0.5, -0.05])  # about the central half
SHAPE = (40, 44)


def texture(seed=0, shape=(120, 140), sigma=2.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (image - image.min()) / np.ptp(image)


def problem(seed=0):
    image = texture(seed)
    template = warp_image(image, Affine(), P_TRUE, SHAPE)
    p_init = P_TRUE + np.array([0.02, -0.01, 0.04, 0.01, -0.02, -0.03])  # ~1-2 px away
    return image, template, p_init


ALIGNERS = {
    "LK": lambda T, **kw: LK(T, Affine(), n_iter=60, tol=1e-7, **kw),
    "CLK": lambda T, **kw: CompositionalLK(T, Affine(), n_iter=60, tol=1e-7, **kw),
    "ICLK": lambda T, **kw: ICLK(T, Affine(), n_iter=60, tol=1e-7, **kw),
    "ICLK-gb-pyr": lambda T, **kw: ICLK(
        T, Affine(), n_iter=60, tol=1e-7, photometric="gain-bias", pyramid=2, **kw
    ),
    "ICLK-b-g": lambda T, **kw: ICLK(
        T, Affine(), n_iter=60, tol=1e-7, photometric="bias", gradient_sigma=1.5, **kw
    ),
    "ICLK-f32": lambda T, **kw: ICLK(T, Affine(), n_iter=60, tol=1e-6, dtype="float32", **kw),
}


@pytest.mark.parametrize("name", list(ALIGNERS))
def test_mask_of_ones_is_no_mask(name):
    image, template, p_init = problem()
    plain = ALIGNERS[name](template).align(image, p_init)
    ones = ALIGNERS[name](template, mask=np.ones(SHAPE)).align(image, p_init)
    # the same arithmetic with each residual multiplied by 1.0: equal to rounding, not bitwise
    # (a different order of float operations); float32 sampling rounds at ~1e-7 relative
    atol = 1e-5 if name == "ICLK-f32" else 1e-9
    np.testing.assert_allclose(ones.p, plain.p, atol=atol)
    np.testing.assert_allclose(ones.cost, plain.cost, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ones.score, plain.score, atol=1e-9)
    assert bool(ones.converged) == bool(plain.converged)


@pytest.mark.parametrize("name", list(ALIGNERS))
def test_masked_occlusion_recovers_the_warp(name):
    image, template, p_init = problem(1)
    occluded = template.copy()
    rng = np.random.default_rng(5)
    occluded[5:25, 8:30] = rng.random((20, 22))  # garbage over a quarter of the template
    mask = np.ones(SHAPE)
    mask[5:25, 8:30] = 0.0
    masked = ALIGNERS[name](occluded, mask=mask).align(image, p_init)
    unmasked = ALIGNERS[name](occluded).align(image, p_init)
    err = float(corner_error(Affine(), masked.p, P_TRUE, SHAPE))
    err_unmasked = float(corner_error(Affine(), unmasked.p, P_TRUE, SHAPE))
    # exact data on the unmasked pixels: the masked fit converges onto the truth (float64:
    # rounding; float32 sampling: ~1e-4 px)
    assert err < 1e-3, err
    assert bool(masked.converged) and masked.score > 0.999  # the score ignores masked pixels
    assert err_unmasked > 10 * err + 1e-3  # the garbage pulls an unmasked fit off the truth


def test_masked_hessian_is_weighted_least_squares():
    _, template, _ = problem()
    w = np.random.default_rng(2).random(SHAPE)
    sd = ICLK(template, Affine()).sd_images.reshape(-1, 6)  # unweighted dT/dp
    H = ICLK(template, Affine(), mask=w).hessian
    # H = sd^T W sd (ICLK builds it from sqrt(w)-scaled rows: equal to rounding)
    np.testing.assert_allclose(H, sd.T @ (w.reshape(-1, 1) * sd), rtol=1e-10)


def test_masked_regressor_is_the_weighted_step():
    image, template, p_init = problem()
    w = np.random.default_rng(3).random(SHAPE)
    aligner = ICLK(template, Affine(), mask=w)
    R, b = aligner.regressor()
    Ip = warp_image(image, Affine(), p_init, SHAPE).ravel()
    sd = aligner.sd_images.reshape(-1, 6) / np.sqrt(w.reshape(-1, 1))  # unweighted rows
    e = Ip - template.ravel()
    expected = np.linalg.solve(sd.T @ (w.reshape(-1, 1) * sd), sd.T @ (w.ravel() * e))
    np.testing.assert_allclose(R @ Ip + b, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", ["LK", "CLK", "ICLK", "ICLK-gb-pyr"])
def test_score_is_zncc_at_the_final_warp(name):
    image, template, p_init = problem()
    mask = np.ones(SHAPE)
    mask[:10] = 0.0
    result = ALIGNERS[name](template, mask=mask, min_score=-1.0).align(image, p_init, n_iter=2)
    warped = warp_image(image, Affine(), result.p, SHAPE)
    # the aligner's sampler and warp_image agree to rounding (tests/classical/test_iclk.py)
    np.testing.assert_allclose(result.score, zncc(template, warped, mask), atol=1e-9)


@pytest.mark.parametrize("settings", [{}, {"pyramid": 2, "refine": True, "gradient_sigma": 1.5}])
def test_the_score_read_from_the_last_cost_is_zncc(settings):
    """With ``photometric="gain-bias"``, one channel and no mask, the last stage's cost is
    ``2 ||t||^2 (1 - rho) / N`` and ICLK reads the score from it instead of sampling again:
    the ZNCC at the final warp still, for starts that converge, that stop anywhere after two
    iterations, and one that leaves the image (measured: a flat, zero warped image)."""
    image, template, p_init = problem()
    relit = 1.7 * image + 0.2
    starts = p_init + np.random.default_rng(4).normal(0.0, 0.05, (12, 6))
    starts[-1, [2, 5]] = 30.0  # far outside: every sample is the zero border
    aligner = ICLK(template, Affine(), n_iter=2, photometric="gain-bias", min_score=-1, **settings)
    for n_iter in (2, 60):
        result = aligner.align(relit, starts, n_iter=n_iter)
        warped = warp_image(relit, Affine(), result.p, SHAPE)
        np.testing.assert_allclose(result.score, zncc(template, warped), rtol=0, atol=1e-9)
    assert result.score[-1] == 0.0 and result.converged[:-1].mean() > 0.5
    rho = zncc(template, warped[:3])
    ssd = 2 * np.sum((template - template.mean()) ** 2) * (1 - rho)
    photometric = aligner._levels[0].photometric
    np.testing.assert_allclose(photometric.correlation(ssd), rho, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["LK", "CLK", "ICLK", "ICLK-gb-pyr"])
def test_converged_is_false_on_a_wrong_alignment_that_stopped(name):
    image, template, _ = problem()
    wrong = P_TRUE + np.array([0.0, 0.0, 0.35, 0.0, 0.0, 0.3])  # ~8 px off: a foreign patch
    starts = np.stack([P_TRUE, wrong])
    # tol=inf: every alignment stops after one step, so "small last step" holds for both
    stopped = ALIGNERS[name](template, min_score=-1.0)
    stopped.tol = np.inf
    loose = stopped.align(image, starts)
    assert loose.converged.all()  # the step test alone calls both good
    gated = ALIGNERS[name](template)
    gated.tol = np.inf
    result = gated.align(image, starts)
    assert result.score[0] > 0.99 and result.score[1] < gated.min_score
    np.testing.assert_array_equal(result.converged, [True, False])


def test_converged_is_false_on_an_unrelated_image():
    _, template, _ = problem(0)
    other = texture(7)  # no place in it matches the template
    starts = P_TRUE + np.random.default_rng(0).normal(0, 0.05, (20, 6))
    result = ICLK(template, Affine(), n_iter=100).align(other, starts)
    assert not result.converged.any()
    assert np.nanmax(result.score) < 0.5


def test_bad_mask_is_a_one_line_value_error():
    _, template, _ = problem()
    with pytest.raises(ValueError, match="mask"):
        ICLK(template, mask=np.ones((3, 3)))
    with pytest.raises(ValueError, match="mask"):
        LK(template, mask=-np.ones(SHAPE))
    with pytest.raises(ValueError, match="mask"):
        ICLK(template, mask=np.zeros(SHAPE))
    with pytest.raises(ValueError, match="min_score"):
        ICLK(template, min_score=2.0)


@pytest.mark.parametrize("side", [16, 32, 64])
@pytest.mark.parametrize("warp", [Affine(), Homography()])
def test_robust_recovers_relit_warps_at_every_size(side, warp):
    image = texture(3, (200, 220), sigma=1.5)
    box = np.array([[1.0, 0.05, 70], [-0.03, 1.0, 60], [0, 0, 1]])  # native scale, tilted
    p = params_from_pixel_matrix(warp, box, (side, side), image.shape)
    template = warp_image(image, warp, p, (side, side))
    rng = np.random.default_rng(side)
    starts = perturb(warp, p, 0.05 * side, (side, side), rng, n=10)
    result = ICLK.robust(template, warp=warp).align(0.5 * image + 0.3, starts)
    err = corner_error(warp, result.p, p, (side, side))
    # exact data up to a gain and offset, starts 5 % of the side off: all land on the truth
    assert (err < 0.01).mean() >= 0.9, np.round(err, 3)
    assert (result.converged == (err < 0.01)).all()


def test_robust_settings_scale_with_the_template_and_take_overrides():
    T = texture(0, (130, 130))
    big, small = ICLK.robust(T), ICLK.robust(T[:16, :16])
    assert big.pyramid > small.pyramid == 1
    assert big.gradient_sigma > small.gradient_sigma
    assert big.photometric == "gain-bias"
    custom = ICLK.robust(T, pyramid=2, photometric=None, mask=np.ones(T.shape))
    assert custom.pyramid == 2 and custom.photometric is None and custom.mask is not None


def test_pyramid_on_a_crop_of_a_large_image_finds_the_same_warp(monkeypatch):
    import lkstn.classical._gauss_newton as gn

    image = texture(4, (400, 420), sigma=2.0)
    box = np.array([[1.0, 0.0, 200], [0.0, 1.0, 180], [0, 0, 1]])  # a 32 px crop, native scale
    p_true = params_from_pixel_matrix(Homography(), box, (32, 32), image.shape)
    template = warp_image(image, Homography(), p_true, (32, 32))
    starts = perturb(Homography(), p_true, 1.5, (32, 32), np.random.default_rng(1), n=6)
    aligner = ICLK(template, Homography(), n_iter=100, tol=1e-9, pyramid=2)
    assert gn.crop_around(image[None, ..., None], aligner.warp, starts, 2) is not None
    cropped = aligner.align(image, starts)
    monkeypatch.setattr(gn, "crop_around", lambda *args: None)
    whole = aligner.align(image, starts)
    np.testing.assert_array_equal(cropped.history[0], starts)
    # the finest level samples the same pixels; only the coarse level's resampling grid
    # differs, so both reach the same optimum (exact data: the truth) to the tolerance
    err = corner_error(Homography(), cropped.p, whole.p, (32, 32))
    assert (err < 1e-4).all() and cropped.converged.all() and whole.converged.all()


@pytest.mark.parametrize("warp", [Affine(), Homography()])
def test_change_frame_is_the_matrix_product(warp):
    from lkstn.classical.region import change_frame

    rng = np.random.default_rng(0)
    p = rng.normal(0, 0.05, (4, warp.n_params))
    A = np.array([[1.7, 0, 0.3], [0, 1.4, -0.2], [0, 0, 1]])
    np.testing.assert_allclose(warp.matrix(change_frame(A, p)), A @ warp.matrix(p), atol=1e-14)


def test_refine_adds_one_plain_stage_at_the_finest_level():
    image, template, p_init = problem()
    smoothed = ICLK(template, Affine(), n_iter=20, gradient_sigma=2.0, pyramid=2, refine=True)
    result = smoothed.align(image, p_init)
    assert result.history.shape[0] == 3 * 20 + 1  # two pyramid levels, then the plain stage
    # exact data: the plain Gauss-Newton stage ends on the truth, as plain IC-LK does
    assert float(corner_error(Affine(), result.p, P_TRUE, SHAPE)) < 1e-3
    plain = ICLK(template, Affine(), n_iter=20, refine=True)  # nothing smoothed: no stage
    assert not plain.refine and plain.align(image, p_init).history.shape[0] == 21


def test_float32_align_runs_torch_on_one_thread_and_restores_the_setting():
    torch = pytest.importorskip("torch")
    from lkstn.classical import torch_sampler

    image, template, p_init = problem()
    seen = []
    blocks = torch_sampler.SingleSampler.blocks

    def spy(self, p, index):
        seen.append(torch.get_num_threads())
        yield from blocks(self, p, index)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch_sampler.SingleSampler.blocks = spy
        result = ICLK(template, Affine(), dtype="float32").align(image, p_init)
        assert set(seen) == {1} and torch.get_num_threads() == 2 and bool(result.converged)
    finally:
        torch_sampler.SingleSampler.blocks = blocks
        torch.set_num_threads(before)
