"""warp_image: NumPy and torch agree, the identity is exact, known shifts give known pixels."""

import numpy as np
import pytest
import torch

from lkstn.sampling import (
    canonical_grid,
    canonical_to_pixel,
    image_gradients,
    pixel_to_canonical,
    warp_image,
)
from lkstn.warps import Affine, Homography, Translation


def test_canonical_grid_corners_are_pixel_centres():
    grid = canonical_grid((3, 4)).reshape(3, 4, 2)
    np.testing.assert_allclose(grid[0, 0], [-1, -1])
    np.testing.assert_allclose(grid[-1, -1], [1, 1])
    np.testing.assert_allclose(canonical_to_pixel(grid, (3, 4))[1, 2], [2.0, 1.0])
    np.testing.assert_allclose(pixel_to_canonical(canonical_to_pixel(grid, (3, 4)), (3, 4)), grid)


def test_identity_returns_image_exactly():
    img = np.random.default_rng(0).random((13, 17))
    np.testing.assert_array_equal(warp_image(img, Affine(), np.zeros(6), (13, 17)), img)
    rgb = np.random.default_rng(1).random((13, 17, 3))
    out = warp_image(rgb, Homography(), np.zeros(8), (13, 17), channel_axis=-1)
    np.testing.assert_array_equal(out, rgb)


def test_known_translation_gives_known_pixels():
    # One pixel right in a 11-wide image is 2 / 10 = 0.2 canonical units.
    img = np.arange(7 * 11, dtype=float).reshape(7, 11)
    out = warp_image(img, Translation(), np.array([0.2, 0.0]), (7, 11))
    np.testing.assert_allclose(out[:, :-1], img[:, 1:])
    np.testing.assert_allclose(out[:, -1], 0.0)  # sampled a whole pixel outside: zeros
    half = warp_image(img, Translation(), np.array([0.1, 0.0]), (7, 11))
    np.testing.assert_allclose(half[:, :-1], (img[:, :-1] + img[:, 1:]) / 2)
    np.testing.assert_allclose(half[:, -1], img[:, -1] / 2)  # half-way to the zero outside
    border = warp_image(img, Translation(), np.array([0.2, 0.0]), (7, 11), mode="border")
    np.testing.assert_allclose(border[:, -1], img[:, -1])


@pytest.mark.parametrize("warp", [Affine(), Homography()], ids=repr)
@pytest.mark.parametrize("mode", ["zeros", "border"])
def test_numpy_and_torch_agree(warp, mode):
    rng = np.random.default_rng(2)
    img = rng.random((5, 31, 23, 2)).astype(np.float32)
    p = rng.normal(size=(5, warp.n_params)) * 0.2
    if warp.projective:
        p[:, 6:] *= 0.2
    ours = warp_image(img, warp, p, (19, 21), channel_axis=-1, mode=mode)
    theirs = warp_image(torch.from_numpy(img).permute(0, 3, 1, 2), warp, torch.tensor(p), (19, 21),
                        mode=mode)  # fmt: skip
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_one_image_many_starts_equals_loop():
    rng = np.random.default_rng(3)
    img = rng.random((20, 30))
    p = rng.normal(size=(4, 6)) * 0.1
    batched = warp_image(img, Affine(), p, (10, 12))
    assert batched.shape == (4, 10, 12)
    for i in range(4):  # a batch and a single start may take different BLAS paths: a few ulps
        np.testing.assert_allclose(
            batched[i], warp_image(img, Affine(), p[i], (10, 12)), rtol=1e-12, atol=1e-14
        )
    # a batch of images with one p each, and broadcasting (B, 1) x (1, M)
    imgs = rng.random((3, 20, 30))
    out = warp_image(imgs[:, None], Affine(), p[None, :3], (10, 12))
    assert out.shape == (3, 3, 10, 12)
    np.testing.assert_allclose(out[2, 1], warp_image(imgs[2], Affine(), p[1], (10, 12)))


def test_torch_gradients_reach_parameters():
    img = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    p = torch.zeros(2, 6, dtype=torch.float64, requires_grad=True)
    warp_image(img, Affine(), p, (8, 8)).sum().backward()
    assert p.grad.abs().sum() > 0


def test_image_gradients_in_canonical_units():
    # I(x, y) = 3 x + 5 y in canonical coordinates: gradients are (3, 5) everywhere
    grid = canonical_grid((9, 13)).reshape(9, 13, 2)
    img = 3 * grid[..., 0] + 5 * grid[..., 1]
    gx, gy = image_gradients(img)
    np.testing.assert_allclose(gx, 3.0, atol=1e-12)
    np.testing.assert_allclose(gy, 5.0, atol=1e-12)


class TestBadInput:
    def test_batch_mismatch(self):
        with pytest.raises(ValueError, match="do not broadcast"):
            warp_image(np.zeros((3, 8, 8)), Affine(), np.zeros((4, 6)), (4, 4))

    def test_wrong_p(self):
        with pytest.raises(ValueError, match=r"p must have shape"):
            warp_image(np.zeros((8, 8)), Affine(), np.zeros(5), (4, 4))

    def test_bad_mode(self):
        with pytest.raises(ValueError, match="mode"):
            warp_image(np.zeros((8, 8)), Affine(), np.zeros(6), (4, 4), mode="wrap")

    def test_torch_layout(self):
        with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
            warp_image(torch.zeros(8, 8), Affine(), torch.zeros(6), (4, 4))
