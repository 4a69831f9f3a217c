"""The ``lkstn`` command: recovers a known warp between two PNGs, refuses bad input with exit 2."""

import json

import numpy as np
import pytest
from skimage import data, io
from skimage.color import rgb2gray

from lkstn.cli import main
from lkstn.sampling import pixel_to_canonical, warp_image
from lkstn.warps import Affine


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """An image, and a 60x60 template cut from it by a known affine warp."""
    root = tmp_path_factory.mktemp("pngs")
    image = rgb2gray(data.chelsea())  # (300, 451)
    warp = Affine()
    box = pixel_to_canonical(np.array([[150.0, 60.0], [250.0, 60.0], [250, 160], [150, 160]]),
                             image.shape)  # fmt: skip
    p_box = warp.fit(warp.corners(), box)
    p_true = warp.compose(p_box, np.array([0.05, 0.03, 0.04, -0.02, -0.04, 0.03]))
    template = warp_image(image, warp, p_true, (60, 60))
    io.imsave(root / "image.png", (image * 255).round().astype(np.uint8))
    io.imsave(root / "template.png", (template * 255).round().astype(np.uint8))
    return root, p_true


def test_align_recovers_known_affine_warp(pngs, tmp_path, capsys):
    root, p_true = pngs
    code = main([
        "align", str(root / "template.png"), str(root / "image.png"), "--warp", "affine",
        "--box", "150", "60", "250", "160", "--out", str(tmp_path),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr()
    record = json.loads((tmp_path / "params.json").read_text())
    from lkstn.result import corner_error

    err = corner_error(Affine(), np.array(record["p"]), p_true, (60, 60))
    assert err < 0.1  # pixels; the PNGs are quantised to 8 bits
    assert record["converged"] is True
    assert (tmp_path / "overlay.png").stat().st_size > 1000


def test_align_with_smoothed_gradients(pngs, tmp_path, capsys):
    root, p_true = pngs
    code = main([
        "align", str(root / "template.png"), str(root / "image.png"), "--warp", "affine",
        "--box", "150", "60", "250", "160", "--gradient-sigma", "1", "--out", str(tmp_path),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr()
    record = json.loads((tmp_path / "params.json").read_text())
    from lkstn.result import corner_error

    assert corner_error(Affine(), np.array(record["p"]), p_true, (60, 60)) < 0.1


def test_align_a_relit_image_with_photometric_invariance(pngs, tmp_path, capsys):
    root, p_true = pngs
    image = io.imread(root / "image.png") / 255.0
    io.imsave(tmp_path / "relit.png", ((0.6 * image + 0.3) * 255).round().astype(np.uint8))
    from lkstn.result import corner_error

    errors = {}
    for extra in ([], ["--photometric", "gain-bias"]):
        out = tmp_path / str(len(extra))
        code = main([
            "align", str(root / "template.png"), str(tmp_path / "relit.png"), "--warp", "affine",
            "--method", "iclk", "--box", "150", "60", "250", "160", "--out", str(out), *extra,
        ])  # fmt: skip
        assert code == 0, capsys.readouterr()
        p = np.array(json.loads((out / "params.json").read_text())["p"])
        errors[bool(extra)] = corner_error(Affine(), p, p_true, (60, 60))
    assert errors[True] < 0.1 < errors[False]  # gain 0.6, offset 0.3: SSD alone is pulled off


@pytest.mark.parametrize(("extra", "message"), [
    (["--gradient-sigma", "-1"], "--gradient-sigma must be >= 0"),
    (["--gradient-sigma", "nan"], "--gradient-sigma must be >= 0"),
    (["--gradient-sigma", "1", "--method", "lk"], "--method iclk only"),
    (["--photometric", "gain-bias", "--method", "lk"], "--method iclk only"),
    (["--image-sigma", "nan"], "--image-sigma must be >= 0"),
])  # fmt: skip
def test_bad_gradient_sigma_exit_2(pngs, tmp_path, capsys, extra, message):
    root, _ = pngs
    args = ["align", str(root / "template.png"), str(root / "image.png"), "--out", str(tmp_path)]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_missing_file_exit_2(tmp_path, capsys):
    assert main(["align", str(tmp_path / "nope.png"), str(tmp_path / "nope2.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lkstn: error: TEMPLATE: no such file") and "\n" not in err


def test_unreadable_image_exit_2(pngs, tmp_path, capsys):
    root, _ = pngs
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["align", str(root / "template.png"), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "IMAGE: cannot read" in err and "\n" not in err


@pytest.mark.parametrize("box", [["10", "10", "5", "50"], ["1000", "1000", "1100", "1100"]])
def test_nonsense_box_exit_2(pngs, tmp_path, capsys, box):
    root, _ = pngs
    code = main(["align", str(root / "template.png"), str(root / "image.png"), "--box", *box,
                 "--out", str(tmp_path)])  # fmt: skip
    assert code == 2
    assert "--box" in capsys.readouterr().err


def test_bad_argument_exit_2(capsys):
    assert main(["align", "a.png", "b.png", "--warp", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "argument --warp" in err and len(err.strip().splitlines()) == 1


def test_not_converged_says_why(tmp_path, capsys):
    """Exit 1 with the reason: a template of stripes on a noisy image fixes the warp across the
    stripes only (the uncertainty); a template that is not in the image scores low."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:120, 0:160]
    stripes = 0.5 + 0.3 * np.sin(xx / 3.0) + 0.03 * np.sin(yy / 11.0)
    noisy = np.clip(stripes + rng.normal(0.0, 0.05, stripes.shape), 0, 1)
    io.imsave(tmp_path / "stripes.png", (noisy * 255).round().astype(np.uint8))
    io.imsave(tmp_path / "t.png", (stripes[40:72, 60:92] * 255).round().astype(np.uint8))
    other = rng.random((120, 160))
    io.imsave(tmp_path / "other.png", (other * 255).round().astype(np.uint8))
    reasons = {}
    for name in ("stripes", "other"):
        files = [str(tmp_path / "t.png"), str(tmp_path / f"{name}.png")]
        box = ["--box", "60", "43", "91", "74"]
        code = main(["align", *files, *box, "--out", str(tmp_path / name), "--no-overlay"])
        out = capsys.readouterr().out
        assert code == 1, out
        reasons[name] = out.splitlines()[-1]
        record = json.loads((tmp_path / name / "params.json").read_text())
        assert record["converged"] is False
    assert reasons["stripes"].startswith("not converged: uncertainty"), reasons
    assert "score" not in reasons["stripes"]  # every failed criterion is named, only those
    assert reasons["other"].startswith("not converged: score"), reasons
