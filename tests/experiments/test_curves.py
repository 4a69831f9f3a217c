"""Error-vs-iteration curves for any aligner ([LL17] Fig. 7; lkstn.experiments.curves)."""

from __future__ import annotations

import numpy as np
import pytest

from lkstn.classical.iclk import ICLK
from lkstn.experiments.convergence import fixed_starts
from lkstn.experiments.curves import TorchAligner, error_curves, plot_curves
from lkstn.experiments.problems import planar_problem

SHAPE = (30, 30)


@pytest.fixture(scope="module")
def easy():
    """The cat with a 30x30 template and 1-px starts: IC-LK converges on all of them."""
    prob = planar_problem(SHAPE)
    return prob, fixed_starts(prob.warp, prob.p_true, 1.0, SHAPE, 40, seed=0)


def test_shapes_and_monotone_iclk_on_an_easy_set(easy):
    prob, starts = easy
    iclk = ICLK(prob.template, prob.warp, n_iter=15, tol=1e-8)
    lazy = ICLK(prob.template, prob.warp, n_iter=15, tol=1e-8)
    curves = error_curves({"ICLK": iclk, "ICLK again": lazy}, prob.image, prob.p_true, starts, 15)
    assert curves.n_iter == 15 and curves.n_trials == 40
    for table in (
        curves.mean_corner_px,
        curves.median_corner_px,
        curves.mean_param_l2,
        curves.fraction_converged,
    ):
        assert set(table) == {"ICLK", "ICLK again"} and all(len(v) == 16 for v in table.values())
    err = np.array(curves.mean_corner_px["ICLK"])
    assert err[0] > 1.0  # 1 px of noise on each corner plus a shared shift
    # measured: 1.68 px, then x ~0.65 per iteration (a 3x subsampled template), 0.01 px at 15
    assert np.all(np.diff(err) <= 1e-12) and err[-1] < 0.05  # falls at every iteration
    assert curves.fraction_converged["ICLK"][-1] == 1.0
    assert curves.mean_corner_px["ICLK"] == curves.mean_corner_px["ICLK again"]  # same starts
    assert curves.to_dict()["mean_param_l2"]["ICLK"][0] == pytest.approx(
        np.linalg.norm(starts - prob.p_true, axis=1).mean()
    )


def test_torch_aligner_adapter_reproduces_iclk(easy):
    """A one-linear-layer IC-STN from IC-LK through the NumPy adapter: the same curves."""
    from lkstn.learned.stn import ICSTN

    prob, starts = easy
    iclk = ICLK(prob.template, prob.warp, n_iter=4, tol=0.0)  # tol=0: never freezes
    model = ICSTN.from_iclk(iclk)
    curves = error_curves({"ICLK": iclk, "IC-STN": model}, prob.image, prob.p_true, starts, 4)
    np.testing.assert_allclose(
        curves.mean_corner_px["IC-STN"], curves.mean_corner_px["ICLK"], rtol=1e-9
    )
    one = TorchAligner(model).align(prob.image, starts[0], n_iter=2)  # a single start (P,)
    assert one.history.shape == (3, 6) and one.converged.shape == ()
    assert isinstance(one.history, np.ndarray)


def test_plot_and_bad_input(easy):
    prob, starts = easy
    iclk = ICLK(prob.template, prob.warp, n_iter=2)
    curves = error_curves({"ICLK": iclk}, prob.image, prob.p_true, starts[:5], 2)
    fig = plot_curves(curves, metric="mean_param_l2", trained_depth={"ICLK": 1})
    assert len(fig.axes[0].lines) == 2  # the curve and the trained-depth dot
    with pytest.raises(ValueError, match="metric"):
        plot_curves(curves, metric="rmse")
    with pytest.raises(ValueError, match="n_iter"):
        error_curves({"ICLK": iclk}, prob.image, prob.p_true, starts, -1)
    with pytest.raises(ValueError, match="aligners"):
        error_curves({}, prob.image, prob.p_true, starts, 2)
    with pytest.raises(ValueError, match="p_init"):
        error_curves({"ICLK": iclk}, prob.image, prob.p_true, starts[:, :4], 2)
    pyramid = ICLK(prob.template, prob.warp, n_iter=2, pyramid=2)  # 2 levels: 5 history rows
    with pytest.raises(ValueError, match="pyramid"):
        error_curves({"pyr": pyramid}, prob.image, prob.p_true, starts, 2)
    with pytest.raises(ValueError, match="torch aligner"):
        TorchAligner(object())
