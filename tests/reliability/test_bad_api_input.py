"""Bad input to the library: a clear ``ValueError`` naming the argument, never a batch misread, a
failure deep inside a matmul or ``grid_sample``, or an answer that depends on import order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lkstn import CSTN, ICLK, ICSTN, LK, STN, Affine, CompositionalLK, Homography

REPO = Path(__file__).resolve().parents[2]
SHAPE = (12, 12)


def _template() -> np.ndarray:
    y, x = np.mgrid[0:12, 0:12] / 11.0
    return np.sin(3 * x) + np.cos(2 * y) + x * y  # smooth texture


@pytest.mark.parametrize("cls", [ICLK, LK, CompositionalLK])
def test_rgb_image_to_a_grey_aligner_is_refused(cls):
    aligner = cls(_template(), warp=Affine(), n_iter=3)
    rgb = np.random.default_rng(0).random((30, 40, 3))
    with pytest.raises(ValueError, match=r"image of shape \(30, 40, 3\).*grey.*\(H, W\)"):
        aligner.align(rgb, np.zeros(6))
    with pytest.raises(ValueError, match="image"):
        aligner.align(np.dstack([rgb, rgb[..., :1]]), np.zeros(6))  # RGBA


def test_a_batch_of_grey_images_is_still_a_batch():
    """The rule refuses only a last axis of 3 or 4: a batch of 5 grey images aligns, and each
    alignment equals the same image aligned alone."""
    rng = np.random.default_rng(1)
    images = np.stack([np.pad(_template(), 4) + 0.01 * rng.random((20, 20)) for _ in range(5)])
    box = np.array([0.6, 0, 0, 0, 0.6, 0])  # the template's 12x12 inside the 20x20 image
    aligner = ICLK(_template(), warp=Affine(), n_iter=5)
    batch = aligner.align(images, np.tile(box, (5, 1)))
    alone = aligner.align(images[2], box)
    # the same arithmetic on one row of the batch: equal to rounding
    np.testing.assert_allclose(batch.p[2], alone.p, rtol=0, atol=1e-10)


def _linear(channels: int, n_out: int) -> nn.Module:
    layer = nn.Linear(channels * SHAPE[0] * SHAPE[1], n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return nn.Sequential(nn.Flatten(), layer)


def _networks(channels: int = 1, n_out: int = 8) -> list[nn.Module]:
    kw = {"warp": Homography(), "template_shape": SHAPE}
    nets = [
        STN(_linear(channels, n_out), **kw),
        CSTN([_linear(channels, n_out), _linear(channels, n_out)], **kw),
        ICSTN(_linear(channels, n_out), n_warps=2, **kw),
    ]
    return [net.double() for net in nets]


@pytest.mark.parametrize("net", _networks(n_out=6), ids=["STN", "CSTN", "ICSTN"])
def test_predictor_with_the_wrong_number_of_parameters(net):
    image = torch.rand(2, 1, *SHAPE, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"predictor must output \(B, P\) = \(2, 8\).*\(2, 6\)"):
        net(image, torch.zeros(2, 8, dtype=torch.float64))


IMAGE_DTYPES = [torch.float32, torch.float16, torch.uint8, torch.int64, torch.bool]


@pytest.mark.parametrize("dtype", IMAGE_DTYPES, ids=str)
@pytest.mark.parametrize("index", range(3), ids=["STN", "CSTN", "ICSTN"])
def test_image_of_another_dtype_than_the_network(index, dtype):
    """15 cases: each of a float64 network's three kinds with five image dtypes."""
    net = _networks()[index]
    image = (torch.rand(2, 1, *SHAPE) * 255).to(dtype)
    with pytest.raises(ValueError, match=f"image is {dtype}.*float64") as info:
        net.align(image, torch.zeros(2, 8, dtype=torch.float64))
    assert "\n" not in str(info.value)
    assert ("uint8 / 255" in str(info.value)) == (not dtype.is_floating_point)


@pytest.mark.parametrize("index", range(3), ids=["STN", "CSTN", "ICSTN"])
def test_image_with_the_wrong_channel_count(index):
    net = _networks(channels=1)[index]
    image = torch.rand(2, 3, *SHAPE, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"predictor fails on the warped image \(2, 3, 12, 12\)"):
        net(image, torch.zeros(2, 8, dtype=torch.float64))


def test_image_with_the_wrong_channel_count_against_a_template():
    net = ICSTN(_linear(1, 8), warp=Homography(), n_warps=2, template_shape=SHAPE,
                template=_template()).double()  # fmt: skip
    with pytest.raises(ValueError, match=r"image has 3 channels, the template 1"):
        net.align(torch.rand(2, 3, *SHAPE, dtype=torch.float64), torch.zeros(2, 8))


def test_a_good_image_still_runs():
    """The checks refuse nothing valid: a zero predictor leaves every start where it was."""
    for net in _networks():
        p = 0.01 * torch.randn(2, 8, dtype=torch.float64)
        out = net(torch.rand(2, 1, *SHAPE, dtype=torch.float64), p)
        torch.testing.assert_close(out.p, p, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "order",
    [
        "from lkstn import perturb as a\nimport lkstn.perturb\nb = lkstn.perturb",
        "import lkstn.perturb\nb = lkstn.perturb\nfrom lkstn import perturb as a",
        "from lkstn.perturb import perturbation\nfrom lkstn import perturb as a\nb = a",
        "import lkstn\na = lkstn.perturb\nfrom lkstn.perturb import perturb as f\nb = a",
    ],
    ids=["package-first", "submodule-first", "function-first", "attribute-first"],
)
def test_perturb_is_the_same_object_in_every_import_order(order):
    """``lkstn.perturb`` is the module, callable as its function, whatever was imported first:
    each order runs in a fresh interpreter."""
    code = f"""{order}
import sys, numpy as np
from lkstn import Affine
assert a is b is sys.modules["lkstn.perturb"], (a, b)
args = (Affine(), np.zeros(6), 2.0, (20, 20))
x = a(*args, np.random.default_rng(0))
y = sys.modules["lkstn.perturb"].perturb(*args, np.random.default_rng(0))
assert np.array_equal(x, y) and x.shape == (6,)
print("ok")
"""
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
