"""The planar experiment's setups: the packaged Caffe image, the box, sigma in image pixels."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lkstn.data.images import CAFFE_CAT_SHA256, caffe_cat, caffe_cat_path
from lkstn.experiments.planar_setup import (
    PAPER_BOX,
    QUICK,
    SETUPS,
    SHAPE,
    PlanarSetup,
    Recipe,
    setup_of,
)
from lkstn.perturb import perturb
from lkstn.result import corner_error
from lkstn.sampling import canonical_to_pixel

PAPER = SETUPS["paper"]


def test_the_packaged_caffe_image_loads_unchanged():
    assert hashlib.sha256(Path(caffe_cat_path()).read_bytes()).hexdigest() == CAFFE_CAT_SHA256
    grey, rgb = caffe_cat(), caffe_cat(color=True)
    assert grey.shape == (360, 480) and rgb.shape == (360, 480, 3)
    assert 0 <= grey.min() < grey.max() <= 1 and rgb.dtype == np.float64
    rgb[:] = 0  # a copy: the cached image is untouched
    assert caffe_cat(color=True).max() > 0
    notice = Path(caffe_cat_path()).with_name("caffe_cat.LICENSE.txt").read_text()
    assert "Regents of the University of California" in notice and "Redistribution" in notice


def test_the_paper_box_maps_the_template_onto_the_kittens_face():
    prob = PAPER.problem()
    corners = canonical_to_pixel(prob.warp.apply(prob.p_true, prob.warp.corners()), (360, 480))
    x0, y0, x1, y1 = PAPER_BOX
    np.testing.assert_allclose(corners, [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], atol=1e-9)
    assert prob.template.shape == SHAPE
    # the box holds pixel centres: the template's corner pixels are the image's at those
    # integer points, where bilinear sampling is exact up to rounding of the coordinates
    for (r, c), (y, x) in {(0, 0): (100, 177), (0, 49): (100, 297), (49, 49): (220, 297)}.items():
        assert abs(prob.template[r, c] - prob.image[y, x]) < 1e-9


def test_sigma_in_image_px_moves_the_box_corners_by_sigma_image_px():
    """Least squares of an affine warp on the square's 4 corners keeps, per axis, the projection
    of the corner noise onto span{1, x, y} (3/4 of its variance) plus the shared translation
    (all of it): E|d|^2 = 2 (3/4 + 1) sigma^2 = 3.5 sigma^2 per corner, in image pixels."""
    prob, sigma, n = PAPER.problem(), 6.0, 20000
    rng = np.random.default_rng(3)
    starts = perturb(prob.warp, prob.p_true, PAPER.template_sigma(sigma), SHAPE, rng, n=n)
    true = canonical_to_pixel(prob.warp.apply(prob.p_true, prob.warp.corners()), (360, 480))
    moved = canonical_to_pixel(prob.warp.apply(starts, prob.warp.corners()), (360, 480))
    sq = ((moved - true) ** 2).sum(-1).mean(-1)  # (n,) mean squared corner shift, image px^2
    standard_error = sq.std() / np.sqrt(n)
    assert abs(sq.mean() - 3.5 * sigma**2) < 5 * standard_error  # 5 SE: a false alarm ~1e-6
    # in template pixels the same starts move the corners by sigma / s
    s = PAPER.image_px_per_template_px
    np.testing.assert_allclose(s, 120 / 49)
    assert abs(PAPER.template_sigma(sigma) - sigma / s) < 1e-12
    assert SETUPS["chelsea"].template_sigma(sigma) == sigma  # chelsea: already template px


def test_corner_error_in_image_px_is_the_image_distance_of_the_boxes():
    """corner_error is measured in the template frame; the similarity p_true scales it by s."""
    prob = PAPER.problem()
    est = perturb(prob.warp, prob.p_true, 3.0, SHAPE, np.random.default_rng(0), n=50)
    tpl = corner_error(prob.warp, est, prob.p_true, SHAPE)
    boxes = canonical_to_pixel(prob.warp.apply(est, prob.warp.corners()), (360, 480))
    true = canonical_to_pixel(prob.warp.apply(prob.p_true, prob.warp.corners()), (360, 480))
    direct = np.sqrt(((boxes - true) ** 2).sum(-1).mean(-1))  # RMS over corners, image px
    np.testing.assert_allclose([PAPER.image_px(e) for e in tpl], direct, rtol=1e-9)  # float64


def test_training_and_test_noise_use_template_px():
    pytest.importorskip("torch")
    from lkstn.experiments.planar_sweep import phase_config

    paper, chelsea = replace(QUICK, setup="paper"), QUICK
    assert phase_config(paper, 10.0, 2, 0).sigma == pytest.approx(10.0 * 49 / 120, rel=1e-12)
    assert phase_config(chelsea, 10.0, 2, 0).sigma == 10.0


def test_cli_setup_paper_runs_end_to_end(tmp_path, one_torch_thread):
    pytest.importorskip("torch")
    from lkstn.cli import main

    assert main(["reproduce", "planar", "--quick", "--setup", "paper", "--steps", "4",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    record = json.loads((tmp_path / "planar.json").read_text())
    assert record["setup"]["name"] == "paper" and record["setup"]["sigma_unit"] == "image px"
    assert record["setup"]["box"] == list(PAPER_BOX) and record["recipe"]["setup"] == "paper"
    row = record["table1"]["IC-STN-2"]["5"]
    assert row["corner_image_px"] == pytest.approx(row["corner_px"] * 120 / 49, rel=1e-12)
    start = record["curves"]["5"]["mean_corner_px"]["ICLK"][0] * 120 / 49  # image px
    # mean |d| of the starts in image px: below the RMS sqrt(3.5) sigma, above half of it
    assert 0.5 * np.sqrt(3.5) * 5 < start < np.sqrt(3.5) * 5
    assert "image px" in (tmp_path / "table1.md").read_text()


def test_bad_setup_values_are_one_line_errors(tmp_path, capsys):
    from lkstn.cli import main

    assert main(["reproduce", "planar", "--setup", "caffe", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--setup" in err and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(ValueError, match="setup must be one of"):
        setup_of(Recipe(setup="caffe"))
    with pytest.raises(ValueError, match="sigma must be"):
        PAPER.template_sigma(-1.0)
    with pytest.raises(ValueError, match="box must be a square"):
        PlanarSetup("x", "x", (0.0, 0.0, 10.0, 20.0), "image px", caffe_cat)
    with pytest.raises(ValueError, match="sigma_unit"):
        PlanarSetup("x", "x", (0.0, 0.0, 10.0, 10.0), "metres", caffe_cat)


def test_the_wheel_ships_the_image_and_its_notice(tmp_path):
    """``pip wheel .`` (package data in pyproject.toml): the image travels with the package
    (a few seconds without build isolation)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(root)], check=True, capture_output=True,
                   timeout=300)  # fmt: skip
    (wheel,) = tmp_path.glob("lkstn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lkstn/data/caffe_cat.jpg" in names and "lkstn/data/caffe_cat.LICENSE.txt" in names
