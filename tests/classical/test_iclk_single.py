"""ICLK(dtype="float32"): PyTorch's grid_sample as the sampler, the same alignments as float64."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lkstn import ICLK, Affine, Homography, corner_error, warp_image
from lkstn.perturb import perturb
from lkstn.problems import planar_problem
from lkstn.sampling import canonical_grid


def starts(prob, sigma, n, seed=0):
    return perturb(prob.warp, prob.p_true, sigma, prob.template_shape,
                   np.random.default_rng(seed), n=n)  # fmt: skip


@pytest.mark.parametrize("photometric", [None, "gain-bias"])
@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("warp", ["affine", "homography"])
def test_single_precision_reaches_the_double_precision_alignment(warp, color, photometric):
    prob = planar_problem((50, 50), warp=warp, color=color)
    p_init = starts(prob, 3.0, 40)
    kw = dict(n_iter=60, channel_axis=prob.channel_axis, photometric=photometric)
    double = ICLK(prob.template, warp, **kw).align(prob.image, p_init)
    single = ICLK(prob.template, warp, dtype="float32", **kw).align(prob.image, p_init)
    assert single.history.dtype == np.float64 and single.cost.dtype == np.float64
    both = double.converged & single.converged
    assert both.sum() >= 30 and (double.converged == single.converged).mean() >= 0.95
    apart = corner_error(prob.warp, single.p[both], double.p[both], (50, 50))
    assert apart.max() < 0.01  # template pixels; both stop at tol=1e-4 (0.0025 px)
    truth = corner_error(prob.warp, single.p[both], prob.p_true, (50, 50))
    assert truth.max() < 0.05
    first = slice(0, 3)  # far from the optimum the costs agree to float32 rounding
    np.testing.assert_allclose(single.cost[first], double.cost[first], rtol=1e-4)


@pytest.mark.parametrize("channels", [None, 3])
@pytest.mark.parametrize("warp", [Affine(), Homography()], ids=str)
def test_single_sampler_is_warp_image_borders_included(warp, channels):
    """Inside, across the border (zero padding), far outside, across a homography's line at
    infinity, with NaN warps, for one image and for a batch read in any order."""
    from lkstn.classical.torch_sampler import SingleSampler

    rng = np.random.default_rng(7)
    shape = (23, 31) if channels is None else (23, 31, channels)
    images = rng.random((2, *shape))
    p = 0.6 * rng.standard_normal((40, warp.n_params))
    p[:20, 2] += np.linspace(-2.5, 2.5, 20)  # from far left to far right of the image
    p[5] = np.nan
    p[6, -1] = 1e30  # coordinates that overflow float32
    axis = None if channels is None else -1
    sampler = SingleSampler(images.reshape(2, 23, 31, -1), warp, (9, 12))
    for index in (None, np.arange(40) % 2, np.arange(40) // 20):  # gathered; consecutive views
        src = images[0] if index is None else images[index]
        with np.errstate(all="ignore"):
            ref = warp_image(src, warp, np.nan_to_num(p), (9, 12), channel_axis=axis)
        ref[5] = 0.0  # a NaN warp samples zeros, as the float64 sampler's
        ours = sampler(p, index)
        assert ours.dtype == np.float32 and ours.shape == (40, 9 * 12, channels or 1)
        assert np.isfinite(ours).all()
        np.testing.assert_allclose(ours.reshape(ref.shape), ref, atol=1e-5)
    assert (ref == 0).any() and (ref != 0).any()  # the cases cover outside and inside
    assert np.allclose(canonical_grid((9, 12))[[0, -1]], [[-1, -1], [1, 1]])  # frame as assumed


def test_single_precision_batch_of_images_with_alignments_that_stop_early():
    prob = planar_problem((50, 50))
    rng = np.random.default_rng(3)
    images = np.stack([prob.image, prob.image[::-1].copy(), prob.image * 0.5 + 0.2, prob.image])
    p_init = starts(prob, 2.0, 4, seed=5)
    p_init[3] = prob.p_true  # converges at once: the live alignments are then 0, 1, 2
    kw = dict(n_iter=40, tol=1e-4, photometric="gain-bias")
    double = ICLK(prob.template, Affine(), **kw).align(images, p_init)
    single = ICLK(prob.template, Affine(), dtype=np.float32, **kw).align(images, p_init)
    np.testing.assert_array_equal(single.converged, double.converged)
    assert single.converged[[0, 2, 3]].all() and not single.converged[1]  # the flipped cat
    ok = double.converged
    assert corner_error(Affine(), single.p[ok], double.p[ok], (50, 50)).max() < 0.01
    assert rng is not None


def test_single_precision_pyramid_and_nan_image():
    prob = planar_problem((100, 100))
    p_init = starts(prob, 6.0, 20)
    kw = dict(n_iter=30, pyramid=3)
    double = ICLK(prob.template, Affine(), **kw).align(prob.image, p_init)
    single = ICLK(prob.template, Affine(), dtype="float32", **kw).align(prob.image, p_init)
    assert (double.converged == single.converged).mean() >= 0.9
    image = prob.image.copy()
    image[:, :] = np.nan
    res = ICLK(prob.template, Affine(), dtype="float32").align(image, p_init[:3])
    assert not res.converged.any()  # NaN in, never converged


@pytest.mark.parametrize("bad", ["float16", np.int32, "complex128", "nope", None, 32])
def test_bad_dtype_is_refused(bad):
    prob = planar_problem((50, 50))
    with pytest.raises(ValueError, match="dtype"):
        ICLK(prob.template, Affine(), dtype=bad)


def test_double_precision_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from lkstn import ICLK\n"
        "from lkstn.problems import planar_problem\n"
        "prob = planar_problem((50, 50))\n"
        "ICLK(prob.template, 'affine').align(prob.image, prob.p_true)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_single_sampler_blocks_cover_every_alignment_once():
    """A 100x100 frame: 26 alignments per grid_sample call, handed on 6 at a time, so a call's
    last block is short (2); 40 alignments span two calls. Every alignment is sampled once, at
    its own warp (float32 coordinates resolve ~1e-5 px here, and this random image changes by
    up to ~1 a pixel: 1e-4)."""
    from lkstn.classical.torch_sampler import SingleSampler

    rng = np.random.default_rng(3)
    image = rng.random((120, 130))
    p = np.array([-0.2, 0, 0.05, 0, -0.2, 0]) + 0.02 * rng.standard_normal((40, 6))
    sampler = SingleSampler(image[None, ..., None], Affine(), (100, 100))
    seen = np.zeros(40, int)
    for s, _, values in sampler.blocks(p, None):
        assert len(values) == len(range(40)[s])
        seen[s] += 1
    assert (seen == 1).all()
    ref = warp_image(image, Affine(), p, (100, 100))
    np.testing.assert_allclose(sampler(p, None).reshape(ref.shape), ref, atol=1e-4)
