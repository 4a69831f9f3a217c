"""The Gauss-Newton loop's per-alignment bookkeeping (:mod:`lkstn.classical._gauss_newton`)."""

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
