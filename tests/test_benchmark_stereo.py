"""The stereo-pair benchmark (``benchmarks/stereo_pair.py``) in miniature: its ground truth is
the right view's own pixels (a planar patch of the left view, moved by its disparity plane,
matches the right view), and its JSON holds the cells, the ``truth`` column and the verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_the_disparity_plane_moves_a_left_patch_onto_the_right_view(load_benchmark):
    pytest.importorskip("cv2")
    bench = load_benchmark("stereo_pair")
    from lkstn.pixels import warp_image_pixels
    from lkstn.score import zncc

    left, right, disparity = bench.views()
    side = 32
    found = bench.boxes(left, disparity, side, 4, 0.25 * bench.tolerance(side),
                        np.random.default_rng(0))  # fmt: skip
    assert len(found) == 4
    for x, y, (a, b, c) in found:
        template = left[y : y + side, x : x + side]
        scores = []  # ZNCC with the right view at the truth, then dx px along the baseline
        for dx in (0, -3, -2, -1, 1, 2, 3):
            M = np.array([[1.0 - b, -c, x - a + dx], [0.0, 1.0, y], [0.0, 0.0, 1.0]])
            scores.append(zncc(template, warp_image_pixels(right, M, (side, side))))
        # another camera: not equal, but closer at the truth than a pixel or more either side
        assert scores[0] > 0.95 and max(scores[1:]) < scores[0], np.round(scores, 4)


def test_stereo_quick_run(tmp_path, load_benchmark):
    pytest.importorskip("cv2")
    bench = load_benchmark("stereo_pair")
    out = tmp_path / "stereo.json"
    argv = ["--sizes", "32", "--warps", "affine", "--boxes", "2", "--n-trials", "3"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    cells = data["cells"]
    assert [c["sigma"] for c in cells] == [1.0, 2.5, 5.0]
    for c in cells:
        assert c["boxes"] == 2 and c["n"] == 6
        assert set(c["percent_converged"]) == {"ICLK.robust", "ICLK", "ECC", "ECC-g1"}
        assert c["percent_truth_within"] == 100.0  # planar patches, textured: the truth holds
    assert data["verdict"]["cells"] == 3 and data["machine"]["cpu"]
    table = bench.markdown(data).splitlines()
    assert table[0].endswith("| truth |") and len(table) >= 5
