"""lkstn.filters against SciPy: the Gaussian filter and bilinear interpolation the aligners use
without importing SciPy. Both repeat SciPy's operations in SciPy's order, so they agree to the
last bits in practice; the tolerance asserted is a few ulps of the values (<= 1), whatever the
summation order."""

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from lkstn.filters import bilinear, gaussian_filter, gaussian_kernel

ULPS = 8 * np.finfo(float).eps  # values in [0, 1]: a few roundings of a sum of products


@pytest.mark.parametrize("mode", ["nearest", "reflect"])
@pytest.mark.parametrize("seed", range(6))
def test_gaussian_filter_is_scipys(mode, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(3, 30, size=rng.integers(2, 4)))  # sides below the radius too
    image = rng.random(shape)
    sigma = tuple(rng.choice([0.0, 2.0 / 3.0, 1.0, 2.5, 7.5], size=len(shape)))
    out = gaussian_filter(image, sigma, mode=mode)
    np.testing.assert_allclose(out, ndimage.gaussian_filter(image, sigma, mode=mode), atol=ULPS)
    assert out is not image and out.shape == image.shape


def test_gaussian_kernel_sums_to_one_with_scipys_radius():
    for sigma in (0.5, 2.0 / 3.0, 3.0):
        w = gaussian_kernel(sigma)
        assert len(w) == 2 * int(4 * sigma + 0.5) + 1
        assert np.isclose(w.sum(), 1.0) and np.allclose(w, w[::-1])


def test_gaussian_filter_refuses_other_modes():
    with pytest.raises(ValueError, match="mode"):
        gaussian_filter(np.zeros((4, 4)), 1.0, mode="wrap")


MODES = [("zeros", "grid-constant"), ("nearest", "nearest")]


@pytest.mark.parametrize(("mode", "scipy_mode"), MODES)
def test_bilinear_is_map_coordinates_inside_outside_and_on_the_grid(mode, scipy_mode):
    rng = np.random.default_rng(3)
    image = rng.random((13, 17))
    row = rng.uniform(-3.0, 15.0, (4, 200))
    col = rng.uniform(-3.0, 19.0, (4, 200))
    row[:, :40], col[:, :40] = rng.integers(-1, 14, (4, 40)), rng.integers(-1, 18, (4, 40))
    row[0, 50], col[1, 51] = 1e6, -np.inf  # far away and infinite coordinates
    out = bilinear(image, row, col, mode=mode)
    ref = ndimage.map_coordinates(image, (row, col), order=1, mode=scipy_mode, cval=0.0)
    np.testing.assert_allclose(out, ref, atol=ULPS)
    assert np.isnan(bilinear(image, np.array([[np.nan]]), np.array([[1.0]]))).all()


def test_bilinear_reads_each_row_from_its_source_image():
    rng = np.random.default_rng(4)
    stack = rng.random((3, 9, 11))
    row, col = rng.uniform(-1, 9, (5, 30)), rng.uniform(-1, 11, (5, 30))
    source = np.array([2, 0, 1, 2, 0])
    out = bilinear(stack, row, col, source=source)
    for n, s in enumerate(source):
        np.testing.assert_allclose(out[n], bilinear(stack[s], row[n : n + 1], col[n : n + 1])[0])


def test_align_imports_neither_scipy_nor_matplotlib(tmp_path):
    """``lkstn align`` with its defaults (ICLK.robust and the overlay) stays off SciPy and
    matplotlib: their imports alone cost more than the alignment."""
    code = (
        "import sys, numpy as np\n"
        "from skimage import io\n"
        "from lkstn.cli import main\n"
        "g = np.random.default_rng(0).random((24, 24))\n"
        "image = np.kron(g, np.ones((4, 4)))\n"
        f"io.imsave(r'{tmp_path}/i.png', (image * 255).astype(np.uint8), check_contrast=False)\n"
        f"io.imsave(r'{tmp_path}/t.png', (image[20:60, 24:64] * 255).astype(np.uint8),"
        " check_contrast=False)\n"
        "for m in [m for m in sys.modules if m.split('.')[0] in ('scipy', 'matplotlib')]:\n"
        "    del sys.modules[m]\n"
        f"code = main(['align', r'{tmp_path}/t.png', r'{tmp_path}/i.png', '--box', '23', '19',"
        f" '62', '58', '--out', r'{tmp_path}/o'])\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'matplotlib'})\n"
        "assert code == 0 and not bad, (code, bad)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "o" / "overlay.png").stat().st_size > 1000
