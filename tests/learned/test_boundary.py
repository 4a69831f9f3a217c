"""The boundary effect of [LL17] Sec. 4.1, Fig. 2, measured on a real photo.

A box is cropped from ``skimage.data.chelsea()`` (grey, 300 x 451). A zoom-out by 1.5 about the
centre of the frame is applied in two steps of ``sqrt(1.5)`` by two fixed "predictors":

- the STN resamples its own crop, so everything outside the crop is gone: a black frame of about
  ``1 - 1 / 1.5^2 = 56 %`` of the output;
- the c-STN composes the two steps with the crop and samples the photo once: no black pixels,
  and the output is the photo sampled directly at the composed warp.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import color, data
from torch import nn

from lkstn import Affine, warp_image
from lkstn.learned.stn import CSTN, STN

SHAPE = (64, 64)
S = math.sqrt(1.5)
ZOOM_OUT = [S - 1.0, 0.0, 0.0, 0.0, S - 1.0, 0.0]  # scale sqrt(1.5) about the frame's centre


class Fixed(nn.Module):
    def __init__(self, dp) -> None:
        super().__init__()
        self.register_buffer("dp", torch.tensor(dp, dtype=torch.float64))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.dp.expand(image.shape[0], -1)


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return torch.as_tensor(color.rgb2gray(data.chelsea()))[None, None]  # (1, 1, 300, 451)


@pytest.fixture(scope="module")
def crop() -> torch.Tensor:
    # a 120 x 120 px box, a little off the photo's centre: in canonical units of the photo,
    # half-widths 119/450 and 119/299, centre (0.05, -0.03)
    return torch.tensor(
        [[119 / 450 - 1, 0.0, 0.05, 0.0, 119 / 299 - 1, -0.03]], dtype=torch.float64
    )


def zero_fraction(image: torch.Tensor) -> float:
    return (image == 0).double().mean().item()


def test_the_crop_itself_has_no_black_border(photo, crop) -> None:
    assert zero_fraction(warp_image(photo, Affine(), crop, SHAPE)) == 0.0


def test_stn_loses_what_left_the_crop(photo, crop) -> None:
    stn = STN([Fixed(ZOOM_OUT), Fixed(ZOOM_OUT)], warp=Affine(), template_shape=SHAPE).double()
    out = stn(photo, crop)
    frac = zero_fraction(out.image)
    assert 0.45 < frac < 1 - 1 / 1.5**2 + 0.01  # ~56 % black, minus the interpolated fringe
    # its implicit warp composes each step in the frame of the previous output
    warp, dp = Affine(), torch.tensor([ZOOM_OUT], dtype=torch.float64)
    expected = warp.compose(warp.compose(crop, dp), dp)
    torch.testing.assert_close(out.p, expected)
    # away from the black frame (1 px), the STN's output is the photo at that warp, up to the blur
    # of interpolating three times (measured 0.018; photo std 0.13), and clearly not at the warp
    # composed in the other order (0.071)
    inside = F.max_pool2d((out.image == 0).double(), 3, 1, 1) == 0
    direct = warp_image(photo, warp, out.p, SHAPE)
    other = warp_image(photo, warp, warp.compose(dp, warp.compose(dp, crop)), SHAPE)
    err = (out.image - direct)[inside].abs().mean()
    assert err < 0.03 and err < 0.5 * (out.image - other)[inside].abs().mean()
    assert zero_fraction(direct) == 0.0  # the photo had those pixels all along


def test_cstn_keeps_the_photo_outside_the_crop(photo, crop) -> None:
    cstn = CSTN([Fixed(ZOOM_OUT), Fixed(ZOOM_OUT)], warp=Affine(), template_shape=SHAPE).double()
    out = cstn(photo, crop)
    assert zero_fraction(out.image) == 0.0
    warp, dp = Affine(), torch.tensor([ZOOM_OUT], dtype=torch.float64)
    expected = warp.compose(dp, warp.compose(dp, crop))  # [LL17] eq. (10), twice
    torch.testing.assert_close(out.p, expected)
    torch.testing.assert_close(out.image, warp_image(photo, warp, expected, SHAPE))
    scipy = warp_image(photo[0, 0].numpy(), warp, expected.numpy(), SHAPE)  # NumPy/SciPy path
    np.testing.assert_allclose(out.image[0, 0].numpy(), scipy[0], rtol=0, atol=1e-12)
