"""The registration benchmark (``benchmarks/registration.py``) in miniature: its JSON holds the
machine, the cells pooled over photos, the verdict against the target and the success signal's
false positive / negative counts, and its timing mode times every method on the same pairs."""

from __future__ import annotations

import json

import pytest


def test_registration_quick_run(tmp_path, load_benchmark):
    pytest.importorskip("cv2")
    bench = load_benchmark("registration")
    out = tmp_path / "reg.json"
    assert bench.main(["--quick", "--n-trials", "4", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["cpu"] and len(data["machine"]["load_average"]) == 3
    cells = data["cells"]
    assert [(c["size"], c["variant"]) for c in cells] == [(16, "relit"), (64, "relit")]
    for c in cells:
        assert c["n"] == 8 and set(c["percent_converged"]) == set(bench.METHODS)
        # a relit textured crop, starts 2.5 px (scaled) off: the configuration for photographs
        # lands on the truth; the paper's IC-LK has no gain invariance and may not
        assert c["percent_converged"]["ICLK.robust"] == 100.0
        assert 0.0 <= c["percent_starts_within"] <= 100.0
        # without noise the cost's minimum near the truth is the truth
        assert c["percent_minimum_within"] == 100.0
    assert data["verdict"]["cells"] == 2
    table = bench.markdown(data).splitlines()
    assert table[0].endswith("| start | minimum |")
    assert table[2].count("|") == table[0].count("|")
    cal = data["calibration"]["relit"]  # every right alignment of a noiseless image: exact
    assert cal["n"] == 16 and cal["rms_error"] < 0.01 and cal["rms_uncertainty"] < 0.01
    rates = data["signal"]["ICLK.robust"]["0.5"]
    assert rates["right"] + rates["wrong"] == 16


def test_registration_truth_is_the_crop(load_benchmark):
    bench = load_benchmark("registration")
    import numpy as np

    from lkstn import warp_image
    from lkstn.warps import warp_from_name

    image = bench.photo("camera")
    for name in ("affine", "homography"):
        warp = warp_from_name(name)
        p = bench.truth(warp, (30, 40), 16, image.shape)
        # sampling exactly on pixel centres: the crop to rounding
        np.testing.assert_allclose(
            warp_image(image, warp, p, (16, 16)), image[40:56, 30:46], atol=1e-12
        )


def test_registration_timing_quick(tmp_path, capsys, load_benchmark):
    pytest.importorskip("cv2")
    bench = load_benchmark("registration")
    out = tmp_path / "t.json"
    argv = ["--timing", "--quick", "--photos", "camera", "--per-photo", "--out", str(out)]
    assert bench.main(argv) == 0
    pairs = [
        line for line in capsys.readouterr().out.splitlines() if "ECC" in line and "off" in line
    ]
    rows = json.loads(out.read_text())["timing"]
    assert len(pairs) == len(rows) and all(line.split()[0] == "camera" for line in pairs)
    assert [r["size"] for r in rows] == [64, 128, 256]
    assert all(r["pairs"] == 1 and all(v > 0 for v in r["ms"].values()) for r in rows)
    for r in rows:  # the paired ratio, and its quartiles in order
        assert set(r["ratio"]) == {"align / ECC", "align / ECC-g1"}
        assert all(0 < a <= m <= b for a, m, b in r["ratio"].values())
    assert "align / ECC" in bench.markdown({"timing": rows})
