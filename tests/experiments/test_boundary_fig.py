"""[LL17] Fig. 2 (``lkstn reproduce boundary``): the lost-pixel measure and the figure.

A zoom-out by ``s`` about the frame's centre reads the crop's frame scaled by ``s``: in the
continuous limit a fraction ``1 - 1/s^2`` of the output lies outside the crop. The STN has only the
crop, so those pixels are black; the c-STN samples the photo, which covers them, so none are.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage import data

from lkstn.cli import main
from lkstn.experiments.boundary import boundary_effect, crop_params, zoom_params
from lkstn.sampling import warp_image
from lkstn.warps import Affine


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    rgb = data.chelsea().astype(np.float64) / 255.0  # (300, 451, 3), no pixel black in all bands
    assert (rgb.max(-1) > 0).all()
    return torch.as_tensor(np.moveaxis(rgb, 2, 0))[None]


CROP = crop_params((300, 451), (170.0, 90.0, 260.0, 180.0))  # a 90 px box inside the photo


@pytest.mark.parametrize("zoom", [1.25, 1.5, 2.0])
def test_stn_loses_one_minus_inverse_square_of_the_zoom(photo, zoom):
    size = 64
    res = boundary_effect(photo, CROP, zoom, size)
    # on a 64-px grid the exact fraction differs from the continuous one by about a grid line
    assert abs(res["lost_fraction"] - (1 - 1 / zoom**2)) < 4 / size
    assert res["expected_lost_fraction"] == pytest.approx(1 - 1 / zoom**2)
    # the lost pixels are the STN's black ones, but for a one-pixel fringe where bilinear
    # interpolation still blends in the crop's edge (the photo has no black pixel)...
    assert 0 <= res["lost_fraction"] - res["black_fraction_stn"] < 4 / size
    # ...and the c-STN has none: it samples the photo directly at the composed warp
    assert res["black_fraction_cstn"] == 0.0
    p = Affine().compose(np.array(CROP), np.array(zoom_params(zoom)))  # the crop, then the zoom
    np.testing.assert_allclose(res["p_cstn"], p, atol=1e-12)
    direct = warp_image(photo, Affine(), torch.as_tensor(p)[None], (size, size))[0]
    torch.testing.assert_close(res["cstn"], direct)


def test_zoom_in_loses_nothing(photo):
    res = boundary_effect(photo, CROP, 1 / 1.5, 96)
    assert res["lost_fraction"] == 0.0 and res["expected_lost_fraction"] == 0.0
    assert res["black_fraction_stn"] == 0.0
    # both read inside the crop: they differ only by the blur of the STN's second interpolation,
    # far less than a shift by 2 px changes the image (measured 0.004 against 0.032)
    diff = (res["stn"] - res["cstn"]).abs().mean().item()
    shift = (res["cstn"][:, :, 2:] - res["cstn"][:, :, :-2]).abs().mean().item()
    assert diff < 0.25 * shift


def test_bad_zoom_and_size_are_refused(photo):
    with pytest.raises(ValueError, match="zoom"):
        boundary_effect(photo, CROP, -1.0)
    with pytest.raises(ValueError, match="size"):
        boundary_effect(photo, CROP, 1.5, size=1)


def test_command_writes_the_figure_and_the_measure(tmp_path, capsys):
    assert main(["reproduce", "boundary", "--zoom", "1.5", "--size", "64", "--out",
                 str(tmp_path)]) == 0  # fmt: skip
    record = json.loads((tmp_path / "boundary.json").read_text())
    assert abs(record["zoom_out_lost_fraction"] - 5 / 9) < 4 / 64
    assert record["zoom_out_black_fraction_cstn"] == 0.0 and record["zoom_in_lost_fraction"] == 0
    assert "lkstn reproduce boundary" in record["command"]
    import matplotlib.image

    png = tmp_path / "fig2_boundary.png"
    pixels = matplotlib.image.imread(png)
    assert png.stat().st_size > 10_000 and pixels[..., :3].std() > 0.05
    assert "lost" in capsys.readouterr().out
    assert main(["reproduce", "boundary", "--zoom", "0.5", "--out", str(tmp_path)]) == 2
