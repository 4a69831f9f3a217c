"""The Gauss-Newton loop's per-alignment bookkeeping (:mod:`lkstn.classical._gauss_newton`): the
state, the coarse-to-fine guard between levels, and ending a stage at its lowest cost."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class State:
    """Per-alignment bookkeeping of the loop, all ``(n,)``."""

    live: np.ndarray  # still sampled
    done: np.ndarray  # p frozen (converged or failed)
    failed: np.ndarray  # unusable step: never converged
    converged: np.ndarray  # update norm fell below tol
    cost: np.ndarray  # mean squared residual at the current p


def keep_lowest(p: np.ndarray, state: State, history: np.ndarray, cost: np.ndarray) -> None:
    """End a stage at the lowest-cost point it visited instead of its last: ``history``,
    ``cost`` are its rows, the last where it ended. Smoothed IC-LK steps are not descent steps;
    on a coarse level a few can walk uphill, far from the start. Failed ones stay the guard's."""
    c = np.where(np.isnan(cost), np.inf, cost)
    k, i = c.argmin(0), np.arange(c.shape[1])
    lower = (c[k, i] < c[-1]) & ~state.failed
    p[lower], state.cost[lower] = history[k[lower], i[lower]], c[k[lower], i[lower]]
    history[-1, lower], cost[-1, lower] = p[lower], state.cost[lower]


def keep_better(iteration, p, p_start, index, state: State, memo) -> tuple | None:
    """Coarse-to-fine guard: at the start of a finer level, an alignment whose cost there is
    higher than at its start (or that failed on a coarser level) restarts from its start.

    A coarse level sees few pixels: on little texture (an edge, a corner of a homography) it
    can walk far off, which the finer level cannot undo. ``iteration(p, index)`` is the
    aligner's iteration at this level, ``(cost, dp, ok)``. ``memo`` is ``(at_start, j,
    known)``: one measurement of both points per level ``j`` (``at_start[j]`` keeps the
    starts'); after a stage on the same pixels (``known``, ``ICLK(refine=True)``)
    ``state.cost`` is the cost at ``p`` already.

    Returns the level's first iteration at the ``p`` kept, ``(cost, dp, ok)`` for every
    alignment, where this measurement made it (the iteration at both points), else None: the
    loop starts from it instead of iterating at the same points again."""
    at_start, j, known = memo
    pair = None
    if known:
        if j not in at_start:  # one level: the starts not measured yet
            at_start[j] = iteration(p_start, index)[0]
        c_now, c_start = state.cost.copy(), at_start[j]
    else:
        if np.array_equal(p, p_start):  # nothing moved on the coarser levels: one point
            pair = tuple(np.concatenate([part, part]) for part in iteration(p, index))
        else:
            both = None if index is None else np.concatenate([index, index])
            pair = iteration(np.vstack([p, p_start]), both)
        c_now, c_start = np.split(pair[0], 2)
        at_start[j] = c_start
    reset = state.failed | (c_start < c_now) | (np.isnan(c_now) & ~np.isnan(c_start))
    p[reset] = p_start[reset]
    state.failed &= ~reset
    if pair is None:
        return None
    n = len(p)
    row = np.where(reset, np.arange(n) + n, np.arange(n))  # the point each one goes on from
    return tuple(part[row] for part in pair)
