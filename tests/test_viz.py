"""Figures render without a display and draw what they are given."""

import numpy as np

from lkstn import viz
from lkstn.warps import Affine


def test_box_corners_of_identity_are_image_corners():
    c = viz.box_corners(Affine(), np.zeros(6), (21, 31))
    np.testing.assert_allclose(c, [[0, 0], [30, 0], [30, 20], [0, 20]])


def test_figures_render(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((40, 50))
    fig = viz.plot_boxes(img, Affine(), np.zeros(6), rng.normal(size=(3, 6)) * 0.05)
    assert len(fig.axes[0].patches) == 4
    fig.savefig(tmp_path / "boxes.png")
    fig = viz.plot_grid(rng.random((10, 8, 8)), n_cols=4)
    assert len(fig.axes) == 12
    fig = viz.plot_grid(rng.random((2, 3, 8, 8, 3)), by_rows=True, row_labels=["a", "b"])
    assert len(fig.axes) == 6
    fig = viz.plot_error_curves({"a": [3, 2, 1], "b": [3, 1, 0.5, 0.4]}, trained_depth={"b": 2})
    assert len(fig.axes[0].lines) == 3  # two curves and one dot
    fig = viz.plot_mean_variance({"m": rng.random((20, 8, 8))}, rng.integers(0, 3, 20))
    fig.savefig(tmp_path / "mv.png")
    assert (tmp_path / "mv.png").stat().st_size > 1000
