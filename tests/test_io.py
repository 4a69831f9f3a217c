"""lkstn.io.read_image: scikit-image's conventions, alpha as mask, size checked before decoding."""

import numpy as np
import pytest
from skimage import data, io

from lkstn.io import grey, read_image


@pytest.fixture(scope="module")
def photo():
    return data.camera()[100:164, 200:280]  # (64, 80) uint8


def test_8_and_16_bit_read_to_the_same_floats(photo, tmp_path):
    io.imsave(tmp_path / "a8.png", photo, check_contrast=False)
    io.imsave(tmp_path / "a16.png", photo.astype(np.uint16) * 257, check_contrast=False)
    a8, m8 = read_image(tmp_path / "a8.png")
    a16, m16 = read_image(tmp_path / "a16.png")
    # x / 255 == 257 x / 65535 exactly in real numbers; float64 rounding only
    np.testing.assert_allclose(a8, a16, atol=1e-12)
    np.testing.assert_allclose(a8, photo / 255.0, atol=1e-12)
    assert m8 is None and m16 is None


def test_rgba_alpha_becomes_the_mask(tmp_path):
    rgb = data.astronaut()[:40, :50]
    alpha = np.zeros((40, 50), np.uint8)
    alpha[5:30, 10:45] = 255
    io.imsave(tmp_path / "a.png", np.dstack([rgb, alpha]), check_contrast=False)
    grey, mask = read_image(tmp_path / "a.png")
    colour, _ = read_image(tmp_path / "a.png", as_grey=False)
    assert grey.shape == (40, 50) and colour.shape == (40, 50, 3)
    np.testing.assert_array_equal(mask, alpha / 255.0)
    np.testing.assert_allclose(colour, rgb / 255.0, atol=1e-12)


def test_huge_declared_size_is_refused_before_decoding(tmp_path):
    # A 12000x12000 8-bit PNG of zeros compresses to ~140 KB; decoding it as float64 RGB would
    # take 3.2 GB: the header alone must refuse it.
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("L", (12000, 12000)).save(path, optimize=True)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ValueError, match=r"IMAGE: .*big.png declares 12000x12000") as exc:
        read_image(path, name="IMAGE")
    assert "\n" not in str(exc.value)


def test_huge_tiff_is_refused_from_its_page_shape(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "big.tif"
    # a 8192x8192 16-bit page of zero tiles, compressed: 0.5 GB as float64 in a file of
    # ~130 KB, refused by its page shape against a 10 Mpx limit
    tile = np.zeros((2048, 2048), np.uint16)
    with tifffile.TiffWriter(path) as tif:
        tif.write((tile for _ in range(16)), shape=(8192, 8192), dtype=np.uint16,
                  compression="zlib", tile=(2048, 2048))  # fmt: skip
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ValueError, match=r"big.tif declares 8192x8192 pixels, over the limit"):
        read_image(path, max_pixels=10_000_000)


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n garbage"])
def test_unreadable_files_give_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"TEMPLATE: cannot read .*bad.png") as exc:
        read_image(path, name="TEMPLATE")
    assert "\n" not in str(exc.value)


def test_missing_and_tiny_files(tmp_path):
    with pytest.raises(ValueError, match="FRAME 2: no such file"):
        read_image(tmp_path / "nope.png", name="FRAME 2")
    io.imsave(tmp_path / "tiny.png", np.zeros((3, 8), np.uint8), check_contrast=False)
    with pytest.raises(ValueError, match="at least 4x4"):
        read_image(tmp_path / "tiny.png")


def test_grey_is_skimages_rgb2gray():
    """``lkstn.io.grey`` (no ``skimage.color`` import) weighs R, G, B as ``rgb2gray`` does."""
    from skimage.color import rgb2gray

    rgb = np.random.default_rng(0).random((5, 7, 3))
    np.testing.assert_allclose(grey(rgb), rgb2gray(rgb), rtol=0, atol=4 * np.finfo(float).eps)
    np.testing.assert_allclose(
        grey(data.astronaut() / 255.0), rgb2gray(data.astronaut()), atol=1e-15
    )
    flat = np.random.default_rng(1).random((4, 4))
    assert grey(flat) is flat  # grey stays as it is
