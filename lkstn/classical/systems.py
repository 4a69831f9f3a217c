"""The Gauss-Newton aligners' systems ([BM04]): the template's steepest-descent images, and
the guarded batched solve of the normal equations.

Every alignment of a batch solves its own ``P x P`` system; one that is singular or not finite
gets ``dp = 0`` and ``ok = False`` (failure is data, :mod:`lkstn.classical._gauss_newton`)
instead of raising for the whole batch. Glossary: ``hessian`` ``(n, P, P)``, ``rhs`` ``(n, P)``.

References: [BM04] Baker & Matthews, IJCV 2004.
"""

from __future__ import annotations

import numpy as np

from lkstn.sampling import image_gradients
from lkstn.warps import Warp

__all__ = ["RCOND", "singular", "solve", "steepest_descent"]

RCOND = 1e-10  # smallest eigenvalue / largest eigenvalue of a usable Hessian
_ROWS = 1 << 14  # template pixels per block of the Jacobian: its temporaries stay in cache


def singular(hessian: np.ndarray) -> np.ndarray:
    """Whether each symmetric ``(..., P, P)`` Hessian is unusable (non-finite or ill-posed)."""
    finite = np.isfinite(hessian).all((-2, -1))
    safe = np.where(finite[..., None, None], hessian, np.eye(hessian.shape[-1]))
    eig = np.linalg.eigvalsh(safe)  # (..., P) ascending
    return ~finite | ~(eig[..., 0] > RCOND * eig[..., -1])


def solve(hessian: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched ``hessian^-1 rhs`` for ``(n, P, P)`` and ``(n, P)``; returns ``(dp, ok)``.

    A singular or non-finite system gives ``dp = 0`` and ``ok = False`` for that alignment alone.
    """
    bad = singular(hessian) | ~np.isfinite(rhs).all(-1)
    safe = np.where(bad[:, None, None], np.eye(hessian.shape[-1]), hessian)
    dp = np.linalg.solve(safe, np.where(bad[:, None], 0.0, rhs)[..., None])[..., 0]
    return dp, ~bad


def steepest_descent(template: np.ndarray, warp: Warp, grid: np.ndarray) -> np.ndarray:
    """``grad T . dW/dp`` at the identity warp for ``template`` ``(h, w, C)`` at its canonical
    pixel centres ``grid`` ``(h*w, 2)``.

    Returns ``(h*w, C, P)``; rows follow ``template.ravel()`` order. The Jacobian
    ``dW/dp(x; 0)`` ([BM04] Fig. 4 step 4) is formed for ``_ROWS`` pixels at a time (a 1024 px
    template's whole Jacobian and its temporaries would be half a gigabyte), each row the same
    numbers as from the whole grid.
    """
    h, w, C = template.shape
    gx, gy = image_gradients(template, channel_axis=-1)  # (h, w, C), per canonical unit
    gx, gy = gx.reshape(h * w, C, 1), gy.reshape(h * w, C, 1)
    sd = np.empty((h * w, C, warp.n_params))
    for a in range(0, h * w, _ROWS):
        rows = slice(a, a + _ROWS)
        J = warp.jacobian(grid[rows])  # (rows, 2, P)
        np.add(gx[rows] * J[:, None, 0, :], gy[rows] * J[:, None, 1, :], out=sd[rows])  # step 5
    return sd
