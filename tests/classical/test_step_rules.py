"""Step rules of the Gauss-Newton aligners: ``backtrack`` (a step that raised the cost is taken
back and halved) and ``second_look`` (low-scoring alignments run again with the other rule, the
higher score kept).

Ground truth is synthetic: a smooth random texture, templates sampled from it at known warps.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lkstn import ICLK, LK, Affine, Homography, Translation, corner_error, warp_image


def texture(seed=0, shape=(120, 140), sigma=2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (image - image.min()) / np.ptp(image)


def counted_iterations(monkeypatch) -> list[int]:
    """From now on, the number of alignments of every ``ICLK._iteration`` call (one sampling
    pass each), in order."""
    calls: list[int] = []
    iteration = ICLK._iteration

    def count(self, level, sampler, p, index):
        calls.append(len(p))
        return iteration(self, level, sampler, p, index)

    monkeypatch.setattr(ICLK, "_iteration", count)
    return calls


def test_backtrack_halves_a_step_that_raised_the_cost():
    """With a translation, ``p o dp^-1 = p - dp``: after a rejected step from the accepted
    point ``a`` to ``q``, the next row is ``a + (q - a) / 2`` exactly (up to rounding), and the
    costs of the accepted points never rise."""
    image = texture()
    p_true = np.array([0.1, -0.05])
    template = warp_image(image, Translation(), p_true, (24, 24))
    rng = np.random.default_rng(1)
    starts = p_true + rng.normal(0.0, 0.12, (60, 2))  # up to ~10 px: overshoots happen
    result = ICLK(template, "translation", n_iter=30, tol=1e-9, backtrack=True).align(image, starts)
    h, c = result.history, result.cost
    rejected = 0
    for i in range(len(starts)):
        a, c_a = h[0, i], c[0, i]
        for k in range(1, len(c) - 1):
            if np.abs(h[k + 1, i] - h[k, i]).max() < 1e-6:
                break  # converged (tol=1e-9 after a halving) or failed: the rows repeat
            if c[k, i] > c_a:  # rejected: the next row is half way back from a
                rejected += 1
                np.testing.assert_allclose(h[k + 1, i] - a, 0.5 * (h[k, i] - a), atol=1e-12)
            else:
                assert c[k, i] <= c_a  # accepted costs never rise
                a, c_a = h[k, i], c[k, i]
    assert rejected > 0  # the starts are far enough for the rule to act


@pytest.mark.parametrize("make", [ICLK, LK])
def test_second_look_keeps_the_better_score(make):
    """``second_look=1`` runs every alignment under both rules and keeps, per alignment, the
    result with the higher score: score, p and converged are those of that rule (same
    arithmetic on fewer alignments: equal to rounding)."""
    image = texture(2)
    p_true = np.array([-0.45, 0.03, 0.08, -0.02, -0.5, -0.05])
    template = warp_image(image, Affine(), p_true, (32, 32))
    rng = np.random.default_rng(3)
    starts = p_true + rng.normal(0.0, 0.06, (40, 6))  # some starts fail
    kw = dict(n_iter=30, tol=1e-6, min_score=-1.0)
    plain = make(template, Affine(), **kw).align(image, starts)
    back = make(template, Affine(), backtrack=True, **kw).align(image, starts)
    both = make(template, Affine(), second_look=1.0, **kw).align(image, starts)
    np.testing.assert_allclose(both.score, np.fmax(plain.score, back.score), atol=1e-9)
    chosen = np.where((back.score > plain.score)[:, None], back.p, plain.p)
    np.testing.assert_allclose(both.p, chosen, atol=1e-9)
    assert both.history.shape == plain.history.shape
    assert (back.score > plain.score + 1e-6).any() or (plain.score > back.score + 1e-6).any()
    never = make(template, Affine(), second_look=-1.0, **kw).align(image, starts)
    np.testing.assert_array_equal(never.p, plain.p)  # -1: the same computation, never a retry


def test_second_look_is_checked():
    with pytest.raises(ValueError, match="second_look"):
        ICLK(texture()[:20, :20], "affine", second_look=2.0)


@pytest.mark.parametrize("side", [24, 64])  # one level (and the refine stage); two levels
def test_the_refine_stages_guard_uses_the_costs_it_knows(side, monkeypatch):
    """``ICLK(refine=True)``'s last stage runs on the finest level's pixels: its guard takes
    the cost at ``p`` from the stage before and the starts' from the finest level's guard (or
    measures them once, with one level). Measuring both again gives the same alignments (the
    same cost to rounding), with more samples."""
    image = texture(3, (160, 180), 1.5)
    p_true = np.array([-0.4, 0.05, 0.1, -0.03, -0.35, -0.05])
    template = warp_image(image, Affine(), p_true, (side, side))
    rng = np.random.default_rng(side)
    starts = p_true + rng.normal(0.0, 0.08, (40, 6))  # some walk off: resets happen
    sampled = counted_iterations(monkeypatch)
    kept = ICLK.robust(template, second_look=-1, polish=False).align(image, starts)
    n_kept, sampled[:] = sum(sampled), []
    from lkstn.classical import _gauss_newton

    guard = _gauss_newton.keep_better

    def measure_again(iteration, p, p_start, index, state, memo):
        return guard(iteration, p, p_start, index, state, (*memo[:2], False))

    monkeypatch.setattr(_gauss_newton, "keep_better", measure_again)
    measured = ICLK.robust(template, second_look=-1, polish=False).align(image, starts)
    np.testing.assert_allclose(kept.p, measured.p, rtol=0, atol=1e-12)
    assert (kept.converged == measured.converged).all()
    assert n_kept < sum(sampled)
    assert 0.2 < kept.converged.mean() < 1  # both kinds of start


@pytest.mark.parametrize("warp", ["affine", "homography"])
def test_a_level_starts_from_the_iteration_its_guard_made(warp, monkeypatch):
    """The guard at a finer level runs one iteration at every alignment's point and start; the
    level's loop begins with it (the step from the point kept) instead of sampling the same
    points again. Iterating again there gives the same alignments to rounding, with one
    iteration more per level (the iteration at both points is one sampling pass)."""
    from lkstn.classical import _gauss_newton

    image = texture(4, (180, 200), 1.5)
    warp_ = Affine() if warp == "affine" else Homography()
    p_true = np.zeros(warp_.n_params)
    p_true[[0, 4, 2]] = [-0.45, -0.45, 0.1]  # a 64 px view of the middle
    template = warp_image(image, warp_, p_true, (64, 64))
    starts = p_true + np.random.default_rng(1).normal(0.0, 0.03, (30, warp_.n_params)) * (
        [1, 1, 1, 1, 1, 1] + [0.1, 0.1] * (warp == "homography")
    )
    calls = counted_iterations(monkeypatch)
    aligner = ICLK.robust(template, warp=warp_, second_look=-1, polish=False)
    reused = aligner.align(image, starts)
    n_reused, calls[:] = len(calls), []
    guard = _gauss_newton.keep_better
    monkeypatch.setattr(_gauss_newton, "keep_better", lambda *a: guard(*a) and None)
    again = aligner.align(image, starts)
    assert len(calls) == n_reused + 1  # two levels: one guard, one iteration fewer
    np.testing.assert_allclose(reused.p, again.p, rtol=0, atol=1e-9)
    assert (reused.converged == again.converged).all() and reused.converged.mean() > 0.5


def test_a_stage_that_hands_on_stops_at_the_point_it_measured(monkeypatch):
    """A stage that a later one refines stops, once its step is below ``tol``, at the point
    whose cost it has just measured, leaving that step to the next stage: one pass fewer per
    such stage than taking the step and measuring the cost where it led. The cost rows stay
    the costs of their rows, and the last stage converges to the same alignment."""
    from lkstn.classical._gauss_newton import GaussNewton

    image = texture(7, (170, 190), 1.5)
    p_true = np.array([-0.45, 0.02, 0.08, -0.03, -0.45, -0.04])
    template = warp_image(image, Affine(), p_true, (64, 64))
    starts = p_true + np.random.default_rng(3).normal(0.0, 0.02, (10, 6))
    calls = counted_iterations(monkeypatch)
    aligner = ICLK(template, pyramid=2, gradient_sigma=2.0, refine=True, n_iter=40, tol=1e-7)
    handed = aligner.align(image, starts)
    n_handed, calls[:] = len(calls), []
    iterate = GaussNewton._iterate

    def take_every_step(self, *args, hand_on=False, **kw):
        return iterate(self, *args, hand_on=False, **kw)

    monkeypatch.setattr(GaussNewton, "_iterate", take_every_step)
    stepped = aligner.align(image, starts)
    # two stages hand on (the coarse level, the smoothed finest one): a pass fewer each, give
    # or take one pass of the stage after, which starts a step (below tol) farther
    assert len(calls) - n_handed in (1, 2, 3)
    assert handed.converged.all() and stepped.converged.all()
    np.testing.assert_allclose(handed.p, stepped.p, rtol=0, atol=1e-7)


@pytest.mark.parametrize("polish", [False, True])
def test_the_last_gauss_newton_stage_hands_on_to_the_forwards_stage(polish, monkeypatch):
    """Every stage but the last hands on; with ``polish`` the forwards stage comes last, so the
    last Gauss-Newton stage hands on to it (which measures the point again, with gradients)."""
    from lkstn.classical._gauss_newton import GaussNewton

    image = texture(8, (150, 160), 1.5)
    p_true = np.array([-0.45, 0.03, 0.08, -0.02, -0.5, -0.05])
    template = warp_image(image, Affine(), p_true, (48, 48))
    seen: list[bool] = []
    iterate = GaussNewton._iterate

    def record(self, *args, hand_on=False, **kw):
        seen.append(hand_on)
        return iterate(self, *args, hand_on=hand_on, **kw)

    monkeypatch.setattr(GaussNewton, "_iterate", record)
    aligner = ICLK(template, pyramid=2, gradient_sigma=1.5, refine=True, polish=polish)
    result = aligner.align(image, p_true + 0.02)
    assert seen == [True, True, polish]  # the coarse level, the smoothed finest, the plain one
    assert result.converged and corner_error(Affine(), result.p, p_true, (48, 48)) < 1e-3


def test_stages_before_the_last_hand_on_at_handoff_tol(monkeypatch):
    """``handoff_tol`` stops the coarse level (and the smoothed finest one, which ``refine``
    follows) sooner; the last stage still converges to ``tol``, at the same alignment."""
    image = texture(6, (160, 180), 1.5)
    p_true = np.array([-0.45, 0.03, 0.1, -0.02, -0.45, -0.05])
    template = warp_image(image, Affine(), p_true, (64, 64))
    starts = p_true + np.random.default_rng(2).normal(0.0, 0.02, (20, 6))
    calls = counted_iterations(monkeypatch)
    settings = dict(pyramid=2, gradient_sigma=2.0, refine=True, n_iter=50, tol=1e-8)
    results, n_calls = [], []
    for handoff_tol in (None, 1e-2):
        calls[:] = []
        results.append(ICLK(template, **settings, handoff_tol=handoff_tol).align(image, starts))
        n_calls.append(sum(calls))
    tight, loose = results
    assert tight.converged.all() and loose.converged.all()
    np.testing.assert_allclose(loose.p, tight.p, rtol=0, atol=1e-6)  # both within ~tol of it
    assert n_calls[1] < n_calls[0]
    assert "handoff_tol=0.01" in repr(ICLK(template, handoff_tol=1e-2))
    with pytest.raises(ValueError, match="handoff_tol"):
        ICLK(template, handoff_tol=-1.0)


@pytest.mark.parametrize("coarse_best", [False, True])
def test_coarse_best_hands_on_the_lowest_cost_point_a_coarser_level_visited(coarse_best):
    """Smoothed IC-LK steps are not descent steps: on the coarse level of a two-level pyramid
    some starts walk uphill pixels away. With ``coarse_best`` the fine level starts from the
    coarse level's lowest-cost row (or from the start, when the guard finds that better);
    without it, from its last row (or the start)."""
    from lkstn import corner_error
    from lkstn.classical._gauss_newton import GaussNewton

    image = texture(5, (200, 220), 2.0)
    p_true = np.array([-0.45, 0.05, 0.05, -0.03, -0.4, -0.05])
    template = warp_image(image, Affine(), p_true, (48, 48))
    starts = p_true + np.random.default_rng(2).normal(0.0, 0.08, (60, 6))
    stages = []  # (history, cost, p at entry) of each stage, as _iterate saw them
    iterate = GaussNewton._iterate

    def record(self, level, sampler, p, index, state, history, cost, *rules, **hand_on):
        entry = p.copy()
        iterate(self, level, sampler, p, index, state, history, cost, *rules, **hand_on)
        stages.append((history.copy(), cost.copy(), entry))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GaussNewton, "_iterate", record)
        ICLK(
            template, "affine", n_iter=30, pyramid=2, gradient_sigma=3.0,
            photometric="gain-bias", coarse_best=coarse_best,
        ).align(image, starts)  # fmt: skip
    (history, cost, _), (_, _, fine_start) = stages
    rows = np.where(np.isnan(cost), np.inf, cost).argmin(0)
    lowest, last = history[rows, np.arange(len(starts))], history[-1]
    walked = corner_error(Affine(), lowest, last, (48, 48)) > 1.0  # uphill, pixels away
    assert walked.sum() >= 2
    handed = lowest if coarse_best else last
    restarted = np.all(fine_start == starts, axis=1)
    np.testing.assert_array_equal(fine_start[~restarted], handed[~restarted])
    assert (~restarted & walked).any()  # the walks that the guard did not undo


def test_the_guard_measures_once_where_the_coarser_levels_did_not_move(monkeypatch):
    """Where every alignment is still at its start when a finer level begins (the coarser ones
    stopped at once: here ``handoff_tol`` is huge), the guard's iteration at point and start is
    one measurement, and the level goes on from it: the same alignment as with both sampled."""
    image = texture(2, (120, 140), 2.0)
    p_true = np.array([-0.5, 0.0, 0.05, 0.0, -0.5, -0.1])
    template = warp_image(image, Affine(), p_true, (48, 48))
    starts = p_true + np.random.default_rng(3).normal(0.0, 0.02, (5, 6))
    calls = counted_iterations(monkeypatch)
    aligner = ICLK(template, Affine(), pyramid=2, handoff_tol=1e9, second_look=-1, n_iter=30)
    result = aligner.align(image, starts)
    assert calls[:2] == [5, 5]  # the coarse level's one iteration, then the guard's: not 10
    assert (corner_error(Affine(), result.p, p_true, (48, 48)) < 1e-3).all()
    coarse = result.history[1:31]  # the coarse level's rows: it did not move
    assert (coarse == starts).all()
