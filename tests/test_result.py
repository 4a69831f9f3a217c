"""Error measures and the AlignmentResult container."""

import numpy as np
import pytest
import torch

from lkstn.result import AlignmentResult, corner_error, param_error
from lkstn.warps import Affine, Homography, Translation


@pytest.mark.parametrize("warp", [Affine(), Homography()], ids=repr)
def test_corner_error_zero_at_truth(warp):
    p = np.random.default_rng(0).normal(size=(3, warp.n_params)) * 0.05
    np.testing.assert_allclose(corner_error(warp, p, p, (50, 50)), 0.0, atol=1e-12)


def test_corner_error_pure_translation_by_hand():
    # 0.1 canonical units along x on a 41-wide template = 0.1 * 20 = 2 px at every corner;
    # 0.05 along y on a 21-high template = 0.5 px. RMS = sqrt(2^2 + 0.5^2).
    p = np.array([0, 0, 0.1, 0, 0, 0.05])
    assert float(corner_error(Affine(), p, np.zeros(6), (21, 41))) == pytest.approx(
        np.hypot(2, 0.5)
    )
    assert float(corner_error(Translation(), p[[2, 5]], np.zeros(2), (21, 41))) == pytest.approx(
        np.hypot(2, 0.5)
    )


def test_corner_error_is_measured_in_the_template_frame():
    # A truth that zooms by 2: an error of 0.1 canonical units *after* p_true is 1 px on 21 px.
    warp = Affine()
    p_true = np.array([1.0, 0, 0.3, 0, 1.0, 0])
    p = warp.compose(p_true, np.array([0, 0, 0.1, 0, 0, 0]))
    assert float(corner_error(warp, p, p_true, (21, 21))) == pytest.approx(1.0)


def test_torch_and_numpy_agree():
    rng = np.random.default_rng(1)
    p, q = rng.normal(size=(4, 8)) * 0.05, rng.normal(size=(4, 8)) * 0.05
    a = corner_error(Homography(), p, q, (36, 36))
    b = corner_error(Homography(), torch.tensor(p), torch.tensor(q), (36, 36))
    np.testing.assert_allclose(a, b.numpy(), atol=1e-12)
    np.testing.assert_allclose(param_error(p, q), np.linalg.norm(p - q, axis=-1))


def test_result_properties():
    history = np.zeros((4, 2, 6))
    history[-1] = 1.0
    r = AlignmentResult(history=history, cost=None, converged=np.array([True, False]))
    assert r.n_iter == 3 and np.array_equal(r.p, np.ones((2, 6)))
    with pytest.raises(AttributeError):
        r.cost = 1  # frozen


def test_bad_template_shape():
    with pytest.raises(ValueError, match="template_shape"):
        corner_error(Affine(), np.zeros(6), np.zeros(6), (50,))


def test_n_iter_counts_the_iterations_actually_run():
    """ICLK asked for 50 iterations stops once every update is below ``tol``: ``n_iter`` is the
    number it ran, and running exactly that many gives the same estimate, one fewer another."""
    from lkstn import ICLK
    from lkstn.perturb import perturb
    from lkstn.problems import planar_problem

    problem = planar_problem((40, 40))
    starts = perturb(Affine(), problem.p_true, 2.0, (40, 40), np.random.default_rng(1), n=8)
    iclk = ICLK(problem.template, warp=Affine(), n_iter=50)  # the default tol=1e-4 stops early
    result = iclk.align(problem.image, starts)
    assert result.history.shape[0] == 51  # the rows asked for
    assert 0 < result.n_iter < 50 and result.n_iter == result.n_iter_each.max()
    for j, k in enumerate(result.n_iter_each):  # rows after an alignment's last step repeat it
        assert (result.history[k:, j] == result.history[-1, j]).all()
        assert k == 0 or (result.history[k - 1, j] != result.history[-1, j]).any()
    again = iclk.align(problem.image, starts, n_iter=result.n_iter)
    # the same computation with fewer rows: the same arithmetic, so equal to rounding
    np.testing.assert_allclose(again.p, result.p, rtol=0, atol=1e-12)
    fewer = iclk.align(problem.image, starts, n_iter=result.n_iter - 1)
    assert np.abs(fewer.p - result.p).max() > 0


def test_corner_error_of_a_nan_row_is_inf():
    """Failure is data: a diverged estimate in a batch gives inf for its row, the others their
    error; a NaN truth is a caller's mistake and raises."""
    p = np.zeros((3, 6))
    p[1] = np.nan
    p[2, 2] = 0.1  # 0.1 canonical units along x on a 21-pixel template: 1 px
    np.testing.assert_allclose(corner_error(Affine(), p, np.zeros(6), (21, 21)), [0, np.inf, 1])
    t = corner_error(Affine(), torch.tensor(p), torch.zeros(6, dtype=torch.float64), (21, 21))
    np.testing.assert_allclose(t.numpy(), [0, np.inf, 1])
    with pytest.raises(ValueError, match="p_true"):
        corner_error(Affine(), p, np.full(6, np.nan), (21, 21))
