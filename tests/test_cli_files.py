"""``lkstn align`` and ``lkstn track`` on image files made from skimage photos with known warps.

The template is cut from a photo by OpenCV at a known pixel matrix ``H_TRUE`` (template pixels
to image pixels, lkstn.pixels), saved in several bit depths and channel layouts; the command
must give that matrix back. Tolerance 0.1 px: 8-bit quantisation and OpenCV's 1/32 px
coordinate rounding move the optimum by a few hundredths of a pixel.
"""

import json

import numpy as np
import pytest
from skimage import data, io
from skimage.color import rgb2gray

from lkstn.cli import main

cv2 = pytest.importorskip("cv2")

H_TRUE = np.array([[1.03, 0.05, 180.4], [-0.04, 0.98, 90.7], [6e-5, -8e-5, 1.0]])
SIDE = 64
BOX = ["183.4", "87.7", "246.4", "150.7"]  # the template's box moved by (3, -3) px


def corner_rms(H, G, side=SIDE):
    c = np.array([[0, 0, 1], [side - 1, 0, 1], [side - 1, side - 1, 1], [0, side - 1, 1.0]])
    a, b = c @ np.asarray(H).T, c @ np.asarray(G).T
    return float(np.sqrt(((a[:, :2] / a[:, 2:] - b[:, :2] / b[:, 2:]) ** 2).sum(1).mean()))


def cut(image, H, side=SIDE):
    return cv2.warpPerspective(
        image, H, (side, side), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP
    )


def as_uint(x, dtype):
    return np.round(np.clip(x, 0, 1) * np.iinfo(dtype).max).astype(dtype)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Chelsea (300x451, not square) and its template, as 8-bit, 16-bit, grey, RGB, RGBA."""
    root = tmp_path_factory.mktemp("files")
    rgb = data.chelsea() / 255.0
    grey = rgb2gray(rgb)
    t_rgb, t_grey = cut(rgb, H_TRUE), cut(grey, H_TRUE)

    def save(name, x):
        io.imsave(root / name, x, check_contrast=False)

    save("image8.png", as_uint(grey, np.uint8))
    save("image16.png", as_uint(grey, np.uint16))
    save("image_rgb.png", as_uint(rgb, np.uint8))
    save("t8.png", as_uint(t_grey, np.uint8))
    save("t16.png", as_uint(t_grey, np.uint16))
    save("t_rgb.png", as_uint(t_rgb, np.uint8))
    alpha = np.ones((SIDE, SIDE))
    alpha[:20, :20] = 0  # a corner the user cut away: its pixels are garbage
    t_masked = t_rgb.copy()
    t_masked[:20, :20] = np.random.default_rng(0).random((20, 20, 3))
    save("t_rgba.png", as_uint(np.dstack([t_masked, alpha]), np.uint8))
    return root


def align(root, template, image, tmp_path, *extra):
    out = tmp_path / "out"
    code = main(["align", str(root / template), str(root / image), "--warp", "homography",
                 "--out", str(out), *extra])  # fmt: skip
    return code, json.loads((out / "params.json").read_text())


@pytest.mark.parametrize(("template", "image"), [
    ("t8.png", "image8.png"),
    ("t16.png", "image16.png"),
    ("t8.png", "image16.png"),  # 8-bit template, 16-bit image: img_as_float puts both in [0, 1]
    ("t16.png", "image8.png"),
    ("t_rgb.png", "image8.png"),  # RGB template, grey image
    ("t8.png", "image_rgb.png"),
    ("t_rgb.png", "image_rgb.png"),
])  # fmt: skip
def test_known_warp_recovered_through_the_command(files, tmp_path, template, image):
    code, rec = align(files, template, image, tmp_path, "--box", *BOX, "--no-overlay")
    assert code == 0
    assert corner_rms(rec["pixel_matrix"], H_TRUE) < 0.1
    assert rec["score"] > 0.99
    assert 0.0 <= rec["uncertainty"] < 0.1  # quantised pixels: a small residual, well fixed


def test_options_of_the_photo_configuration(files, tmp_path):
    code, rec = align(files, "t8.png", "image16.png", tmp_path, "--box", *BOX, "--pyramid", "2",
                      "--gradient-sigma", "3", "--photometric", "gain-bias")  # fmt: skip
    assert code == 0 and corner_rms(rec["pixel_matrix"], H_TRUE) < 0.1
    assert (tmp_path / "out" / "overlay.png").stat().st_size > 10_000


@pytest.mark.parametrize("sigma", ["0", "1.5"])
def test_image_sigma_option(files, tmp_path, sigma):
    """The smoothed stage is a stage before the finest: the warp ends on the images as given."""
    code, rec = align(files, "t8.png", "image16.png", tmp_path, "--box", *BOX, "--image-sigma",
                      sigma, "--no-overlay")  # fmt: skip
    assert code == 0 and corner_rms(rec["pixel_matrix"], H_TRUE) < 0.1


def test_no_polish_option(files, tmp_path, monkeypatch):
    """``--no-polish``: ``ICLK.robust`` without its forwards stage, still on the known warp."""
    import lkstn

    built = []
    robust = lkstn.ICLK.robust.__func__

    def spy(cls, *args, **kwargs):
        built.append(robust(cls, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(lkstn.ICLK, "robust", classmethod(spy))
    code, rec = align(files, "t8.png", "image16.png", tmp_path, "--box", *BOX, "--no-polish",
                      "--no-overlay")  # fmt: skip
    assert code == 0 and corner_rms(rec["pixel_matrix"], H_TRUE) < 0.1
    assert [a.polish for a in built] == [False]


def test_rgba_alpha_masks_out_garbage(files, tmp_path):
    code, rec = align(files, "t_rgba.png", "image8.png", tmp_path, "--box", *BOX, "--no-overlay")
    assert code == 0 and corner_rms(rec["pixel_matrix"], H_TRUE) < 0.1


def test_init_chains_from_a_previous_params_json(files, tmp_path):
    code, first = align(files, "t8.png", "image8.png", tmp_path, "--box", *BOX, "--n-iter", "2",
                        "--no-overlay")  # fmt: skip
    err_first = corner_rms(first["pixel_matrix"], H_TRUE)
    out2 = tmp_path / "again"
    code = main(["align", str(files / "t8.png"), str(files / "image8.png"), "--warp",
                 "homography", "--init", str(tmp_path / "out" / "params.json"), "--out",
                 str(out2), "--no-overlay"])  # fmt: skip
    second = json.loads((out2 / "params.json").read_text())
    np.testing.assert_allclose(second["pixel_matrix_init"], first["pixel_matrix"], atol=1e-9)
    # ICLK.robust's last (polishing) stage may already put the 2-iteration run on the optimum
    # of these 8-bit pixels: the chained run ends there too, no farther from the truth
    assert code == 0 and corner_rms(second["pixel_matrix"], H_TRUE) < min(0.1, err_first + 1e-4)


def test_init_from_a_2x3_text_file(files, tmp_path):
    start = H_TRUE[:2].copy()
    start[:, 2] += [2.0, -2.0]
    (tmp_path / "m.txt").write_text("\n".join(" ".join(map(str, r)) for r in start))
    code, rec = align(files, "t8.png", "image8.png", tmp_path, "--init", str(tmp_path / "m.txt"),
                      "--no-overlay")  # fmt: skip
    assert code == 0 and corner_rms(rec["pixel_matrix"], H_TRUE) < 0.1


@pytest.mark.parametrize(("warp", "H", "tol"), [
    # translation: the last window reads zeros past the template's fringe (lkstn.register)
    ("translation", np.array([[1, 0, 200.3], [0, 1, 100.7], [0, 0, 1.0]]), 0.25),
    ("similarity", np.array([[1.05, -0.08, 180.3], [0.08, 1.05, 90.7], [0, 0, 1.0]]), 0.1),
])  # fmt: skip
def test_translation_and_similarity_boxes_on_a_non_square_image(files, tmp_path, warp, H, tol):
    grey = io.imread(files / "image8.png") / 255.0  # (300, 451)
    io.imsave(tmp_path / "t.png", as_uint(cut(grey, H), np.uint8), check_contrast=False)
    x0, y0 = H[0, 2] + 3, H[1, 2] - 2
    box = [str(v) for v in (x0, y0, x0 + SIDE - 1, y0 + SIDE - 1)]
    out = tmp_path / "out"
    code = main(["align", str(tmp_path / "t.png"), str(files / "image8.png"), "--warp", warp,
                 "--box", *box, "--out", str(out), "--no-overlay"])  # fmt: skip
    rec = json.loads((out / "params.json").read_text())
    start = np.array(rec["pixel_matrix_init"])
    np.testing.assert_allclose(start[:2, :2], np.eye(2), atol=1e-9)  # the box, not the image
    np.testing.assert_allclose(start[:2, 2], [x0, y0], atol=1e-9)
    assert code == 0 and corner_rms(rec["pixel_matrix"], H) < tol


def test_method_robust(files, tmp_path):
    code, rec = align(files, "t16.png", "image8.png", tmp_path, "--method", "robust", "--box",
                      *BOX, "--no-overlay")  # fmt: skip
    assert code == 0 and corner_rms(rec["pixel_matrix"], H_TRUE) < 0.1
