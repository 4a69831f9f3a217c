"""Every bilinear sampler of lkstn against the reference, :func:`lkstn.sampling.warp_image`.

The samplers (``warp_image`` on torch tensors, the Gauss-Newton aligners' float64 ``Sampler`` and
float32 ``SingleSampler``, the learned aligners' ``WarpSampler``) share one grid builder,
:func:`lkstn.sampling.warped_grid`; here they sample the same images at the same warps and must
give warp_image's NumPy (SciPy ``map_coordinates``) values, to a tolerance set by their dtype.
What is particular to one sampler (blocks, non-finite warps, dtypes) stays in its own tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lkstn.classical._sampler import Sampler
from lkstn.classical.torch_sampler import SingleSampler
from lkstn.learned.torch_warp import WarpSampler
from lkstn.sampling import canonical_grid, homogeneous_grid, warp_image, warped_grid
from lkstn.warps import Affine, Homography, Translation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WARPS = [Translation(), Affine(), Homography()]
SHAPE = (9, 12)  # template frame (h, w)
IMAGE = (23, 31)  # image frame (H, W)
N = 12  # alignments
TOL = {np.float64: 1e-12, np.float32: 1e-5}  # relative to the image's range: rounding of each


def params(warp, where: str, seed: int) -> np.ndarray:
    """``(N, P)`` parameters: small warps inside the image, or warps that send part of the
    template (all of it, for some) outside, across the border, for a homography also across
    its line at infinity."""
    rng = np.random.default_rng(seed)
    p = 0.05 * rng.standard_normal((N, warp.n_params))
    if where == "outside":
        p *= 8.0  # shears, zooms and, for a homography, strong perspective
        x = 0 if isinstance(warp, Translation) else 2  # the x translation
        p[:, x] += np.linspace(-2.5, 2.5, N)  # from far left to far right of the image
    return p


def images(channels: int | None, seed: int) -> np.ndarray:
    """Two random images, ``(2, H, W)`` grey or ``(2, H, W, C)``."""
    shape = IMAGE if channels is None else (*IMAGE, channels)
    return np.random.default_rng(seed).random((2, *shape))


# each sampler as a function of (images (2, H, W, K) float64, warp, p (N, P), index (N,) or
# None, frame (h, w)) -> (N, h*w, K) NumPy, alignment i reading image index[i] (or 0)


def sample_sampler(imgs, warp, p, index, frame):
    return Sampler(imgs, warp, canonical_grid(frame))(p, index).copy()


def sample_single(imgs, warp, p, index, frame):
    return SingleSampler(imgs, warp, frame)(p, index)


def sample_warp_sampler(imgs, warp, p, index, frame):
    S = WarpSampler(warp, frame).double()
    src = torch.as_tensor(imgs[index if index is not None else np.zeros(len(p), int)])
    out = S.sample(src.permute(0, 3, 1, 2), S.matrix(torch.as_tensor(p)))  # (N, K, h, w)
    return out.flatten(2).mT.numpy()


def sample_warp_image_torch(imgs, warp, p, index, frame):
    src = torch.as_tensor(imgs[:1] if index is None else imgs[index]).permute(0, 3, 1, 2)
    out = warp_image(src, warp, torch.as_tensor(p), frame)  # (N, K, h, w)
    return out.flatten(2).mT.numpy()


SAMPLERS = {
    "Sampler": (sample_sampler, np.float64),
    "SingleSampler": (sample_single, np.float32),
    "WarpSampler": (sample_warp_sampler, np.float64),
    "warp_image-torch": (sample_warp_image_torch, np.float64),
}


@pytest.mark.parametrize("batch", [False, True], ids=["one-image", "batch"])
@pytest.mark.parametrize("channels", [None, 3], ids=["grey", "rgb"])
@pytest.mark.parametrize("where", ["inside", "outside"])
@pytest.mark.parametrize("warp", WARPS, ids=lambda w: w.name)
@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_is_warp_image(name, warp, where, channels, batch):
    sample, dtype = SAMPLERS[name]
    imgs = images(channels, seed=1)
    p = params(warp, where, seed=2)
    index = np.arange(N) % 2 if batch else None  # alignment i reads image i % 2
    axis = None if channels is None else -1
    ref = warp_image(imgs[index] if batch else imgs[0], warp, p, SHAPE, channel_axis=axis)
    ours = sample(imgs.reshape(2, *IMAGE, -1), warp, p, index, SHAPE)
    assert ours.dtype == dtype and ours.shape == (N, SHAPE[0] * SHAPE[1], channels or 1)
    np.testing.assert_allclose(ours.reshape(ref.shape), ref, rtol=0, atol=TOL[dtype])
    if where == "outside":  # the cases cover the zero padding and the image
        assert (ref == 0).any() and (ref != 0).any()


def test_autograd_sampler_gradient() -> None:
    """``WarpSampler.sample``'s gradient in the image and the warp, by finite differences."""
    S = WarpSampler(Homography(), (5, 6)).double()
    rng = np.random.default_rng(3)
    M = S.matrix(torch.as_tensor(0.1 * rng.standard_normal((2, 8)))).requires_grad_(True)
    image = torch.as_tensor(rng.random((2, 2, 11, 13))).requires_grad_(True)
    assert torch.autograd.gradcheck(S.sample, (image, M))


# -- the grid builder itself -------------------------------------------------------------------


@pytest.mark.parametrize("warp", WARPS, ids=lambda w: w.name)
def test_separable_form_is_the_product_form_with_its_gradient(warp) -> None:
    """The CPU form of WarpSampler (separable) and the GPU one (product): the same values and
    the same gradient, NumPy and torch alike."""
    rng = np.random.default_rng(4)
    M = torch.as_tensor(warp.matrix(params(warp, "outside", seed=5)))  # (N, 3, 3)
    M.requires_grad_(True)
    G = torch.as_tensor(homogeneous_grid(SHAPE))
    kw = dict(projective=warp.projective)
    product = warped_grid(M, G, **kw)  # (2, N, h*w)
    separable = warped_grid(M, G, shape=SHAPE, **kw)
    torch.testing.assert_close(separable, product, rtol=1e-14, atol=1e-14)
    weights = torch.as_tensor(rng.random(product.shape))
    (g_product,) = torch.autograd.grad((product * weights).sum(), M)
    (g_separable,) = torch.autograd.grad((separable * weights).sum(), M)
    torch.testing.assert_close(g_separable, g_product, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda m: warped_grid(m, G, shape=SHAPE, **kw), (M[:2],))
    # NumPy's matrix product (OpenBLAS, its kernel chosen by CPU) against torch's: a few ulps
    np.testing.assert_allclose(
        warped_grid(M.detach().numpy(), G.numpy(), **kw), product.detach().numpy(),
        rtol=1e-14, atol=1e-14,
    )  # fmt: skip


@pytest.mark.parametrize("warp", WARPS, ids=lambda w: w.name)
def test_builder_is_warp_apply_with_any_batch_and_out(warp) -> None:
    p = params(warp, "outside", seed=6).reshape(3, 4, -1)  # a (3, 4) batch
    M = warp.matrix(p)  # (3, 4, 3, 3)
    ref = np.moveaxis(warp.apply(p, canonical_grid(SHAPE)), -1, 0)  # (2, 3, 4, h*w)
    for shape in (None, SHAPE):
        xy = warped_grid(M, homogeneous_grid(SHAPE), projective=warp.projective, shape=shape)
        np.testing.assert_allclose(xy, ref, rtol=1e-13, atol=1e-13)
        out = np.moveaxis(np.full((3, 4, SHAPE[0] * SHAPE[1], 2), np.nan), -1, 0)  # strided
        kw = dict(projective=warp.projective, shape=shape, out=out)
        assert warped_grid(M, homogeneous_grid(SHAPE), **kw) is out
        np.testing.assert_array_equal(out, xy)
    single = np.empty((2, 3, 4, SHAPE[0] * SHAPE[1]), np.float32)
    kw = dict(projective=warp.projective, shape=SHAPE, out=single)
    warped_grid(M, homogeneous_grid(SHAPE), **kw)  # float64 terms, float32 sums
    np.testing.assert_allclose(single, ref, rtol=1e-5, atol=1e-6)  # cancellation near w = 0


def test_a_tuple_of_images_samples_as_their_concatenation_and_first_keeps_channels() -> None:
    """``Sampler((a, b, c), ...)`` samples the channels of ``a``, ``b``, ``c`` in order, the
    same numbers as the concatenated array (each channel is its own plane: no arithmetic
    differs); ``first(k)`` samples the first ``k`` of them, also the same numbers."""
    rng = np.random.default_rng(4)
    parts = tuple(rng.random((2, 30, 40, k)) for k in (2, 1, 3))
    warp, grid = Homography(), canonical_grid((9, 11))
    p = rng.normal(0.0, 0.4, (5, 8))  # some samples outside the image: the zero border
    index = np.array([0, 1, 1, 0, 1])
    whole = Sampler(np.concatenate(parts, -1), warp, grid)(p, index).copy()
    split = Sampler(parts, warp, grid)
    np.testing.assert_array_equal(split(p, index), whole)
    np.testing.assert_array_equal(split.first(3)(p, index), whole[..., :3])
    np.testing.assert_array_equal(split.first(1)(p, index), whole[..., :1])
    assert (whole == 0).any() and (whole != 0).any()


def test_a_window_samples_as_the_whole_frame_inside_it_and_zero_outside() -> None:
    """``Sampler(window, ..., frame=, offset=)``: ``p`` in the whole frame's canonical
    coordinates; samples whose neighbours lie in the window are the whole frame's bit for bit
    (the same coordinates, the offset taken from their integer parts), and the rest of the
    frame reads as zero."""
    rng = np.random.default_rng(5)
    images = rng.random((2, 40, 50, 2))
    warp, grid = Affine(), canonical_grid((7, 9))
    x0, y0, x1, y1 = 12, 9, 37, 30  # the window's pixels [x0, x1) x [y0, y1)
    window = images[:, y0:y1, x0:x1]
    p = np.zeros((3, 6))
    p[:, [0, 4]] = -0.7  # a template frame of a fifth of the image's size...
    p[:, 2], p[:, 5] = [-0.01, 0.02, 0.0], [-0.03, 0.0, 0.01]  # ...around its centre
    index = np.array([0, 1, 1])
    whole = Sampler(images, warp, grid)(p, index).copy()
    part = Sampler(window, warp, grid, frame=(40, 50), offset=(x0, y0))
    np.testing.assert_array_equal(part(p, index), whole)  # inside: the blocks' fast path
    zeroed = np.zeros_like(images)
    zeroed[:, y0:y1, x0:x1] = window
    p_far = p + np.array([0.0, 0.0, 0.5, 0.0, 0.0, 0.3])  # across the window's edge: clamped
    np.testing.assert_array_equal(part(p_far, index), Sampler(zeroed, warp, grid)(p_far, index))
    assert (part(p_far, index) == 0).any()


@pytest.mark.parametrize("warp", [Affine(), Homography()], ids=repr)
def test_the_homogeneous_grid_a_caller_keeps_samples_as_the_grid_itself(warp) -> None:
    """``Sampler(..., homogeneous=homogeneous_grid(shape))`` reads the caller's ``(3, h*w)``
    points (views of it, block by block: 130 x 130 points are two blocks) and samples what
    the ``(h*w, 2)`` grid alone gives, bit for bit, samples outside the image included."""
    rng = np.random.default_rng(6)
    imgs = rng.random((2, 200, 220, 1))
    shape = (130, 130)
    p = params(warp, "outside", 7)[:4] * 0.3
    index = np.array([0, 1, 0, 1])
    kept = homogeneous_grid(shape)
    kept.flags.writeable = False  # read, never written or copied into
    alone = Sampler(imgs, warp, canonical_grid(shape))(p, index).copy()
    given = Sampler(imgs, warp, canonical_grid(shape), homogeneous=kept)(p, index)
    np.testing.assert_array_equal(given, alone)
    assert (alone == 0).any() and (alone != 0).any()
