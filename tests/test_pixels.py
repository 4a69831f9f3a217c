"""lkstn.pixels: pixel matrices in OpenCV's warpMatrix convention, checked against OpenCV."""

import numpy as np
import pytest
from skimage import data
from skimage.color import rgb2gray

from lkstn import ICLK, Affine, Homography, Similarity, Translation
from lkstn.pixels import (
    box_matrix,
    params_from_pixel_matrix,
    pixel_matrix,
    project_pixel_matrix,
    read_pixel_matrix,
    warp_image_pixels,
)
from lkstn.register import align_pixels

cv2 = pytest.importorskip("cv2")

H_TRUE = np.array([[1.04, 0.06, 180.3], [-0.03, 0.97, 90.7], [8e-5, -1.2e-4, 1.0]])


def _corner_rms(H, G, shape):
    h, w = shape
    c = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1.0]])
    a, b = c @ H.T, c @ G.T
    return float(np.sqrt(((a[:, :2] / a[:, 2:] - b[:, :2] / b[:, 2:]) ** 2).sum(1).mean()))


@pytest.mark.parametrize("warp", [Translation(), Similarity(), Affine(), Homography()])
def test_round_trip_through_canonical(warp):
    rng = np.random.default_rng(1)
    p = 0.05 * rng.standard_normal((5, warp.n_params))
    H = pixel_matrix(warp, p, (50, 70), (300, 451))
    np.testing.assert_allclose(params_from_pixel_matrix(warp, H, (50, 70), (300, 451)), p,
                               atol=1e-12)  # fmt: skip


def test_pixel_matrix_reproduces_cv2_warp_perspective():
    image = rgb2gray(data.chelsea())  # (300, 451): non-square
    shape = (64, 80)
    p = params_from_pixel_matrix(Homography(), H_TRUE, shape, image.shape)
    ours = warp_image_pixels(image, pixel_matrix(Homography(), p, shape, image.shape), shape)
    theirs = cv2.warpPerspective(image, H_TRUE, (shape[1], shape[0]),
                                 flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP)  # fmt: skip
    # both bilinear at the same points; OpenCV rounds its coordinates to 1/32 px, which moves
    # a sample by at most 1/32 of the local intensity step (< 0.03 of the [0, 1] range here)
    assert np.max(np.abs(ours - theirs)) < 0.03
    assert np.mean(np.abs(ours - theirs)) < 2e-3


@pytest.mark.parametrize("warp", [Translation(), Similarity()])
def test_box_keeps_translation_and_similarity_in_pixels(warp):
    H = box_matrix(warp, (100, 40, 227, 167), (128, 128))  # a 128 px box on any image
    np.testing.assert_allclose(H[:2, :2], np.eye(2), atol=1e-12)
    np.testing.assert_allclose(H[:2, 2], [100, 40], atol=1e-9)


def test_project_is_identity_inside_the_family():
    np.testing.assert_allclose(project_pixel_matrix(Homography(), H_TRUE, (64, 64)), H_TRUE,
                               atol=1e-9)  # fmt: skip


def test_read_pixel_matrix_text_and_json(tmp_path):
    (tmp_path / "m.txt").write_text("1 0 5\n0 1 7\n")
    np.testing.assert_array_equal(read_pixel_matrix(tmp_path / "m.txt"),
                                  [[1, 0, 5], [0, 1, 7], [0, 0, 1]])  # fmt: skip
    (tmp_path / "m.json").write_text('{"pixel_matrix": [[2, 0, 1], [0, 2, 1], [0, 0, 1]]}')
    assert read_pixel_matrix(tmp_path / "m.json")[0, 0] == 2
    (tmp_path / "bad.txt").write_text("1 2\n3\n")
    with pytest.raises(ValueError, match="--init: .*bad.txt"):
        read_pixel_matrix(tmp_path / "bad.txt", name="--init")


@pytest.mark.parametrize(
    ("warp", "H_true", "tol"),
    [
        # the last window reads zeros past the template's outer row/column (lkstn.register)
        (Translation(), np.array([[1, 0, 200.3], [0, 1, 100.7], [0, 0, 1.0]]), 0.25),
        (Similarity(), np.array([[1.09, -0.11, 180.3], [0.11, 1.09, 90.7], [0, 0, 1.0]]), 0.05),
        (Homography(), H_TRUE, 0.05),
    ],
)
def test_align_pixels_on_a_non_square_image(warp, H_true, tol):
    image = rgb2gray(data.chelsea())  # (300, 451)
    template = cv2.warpPerspective(image, H_true, (64, 64),
                                   flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP)  # fmt: skip
    start = H_true.copy()
    start[:2, 2] += [3.0, -2.5]
    out = align_pixels(ICLK(template, warp=warp, n_iter=100, tol=1e-6), image, start)
    # OpenCV's 1/32 px coordinate rounding in the template bounds what any aligner can reach
    assert _corner_rms(out.H, H_true, (64, 64)) < tol
    assert out.converged and out.score > 0.99


def test_similarity_refuses_a_non_square_template():
    image = rgb2gray(data.chelsea())
    aligner = ICLK(image[50:100, 100:180], warp=Similarity())
    with pytest.raises(ValueError, match="non-square 80x50 template"):
        align_pixels(aligner, image, box_matrix(Similarity(), (100, 50, 179, 99), (50, 80)))
