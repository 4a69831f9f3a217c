"""Ridge regression with an unpenalised intercept, in closed form: the solver of SDM's stages.

Glossary: ``X (n, D)`` features, ``Y (n, P)`` targets, ``R (P, D)``, ``b (P,)`` the regressor,
``alpha`` the penalty on ``||R||_F^2`` (scikit-learn's meaning).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

__all__ = ["ridge_regression", "ridge_bytes"]


def ridge_regression(X: np.ndarray, Y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with an unpenalised intercept: ``Y ~ X R^T + b``, as ``sklearn.linear_model.Ridge``.

    Parameters
    ----------
    X : ndarray (n, D)
    Y : ndarray (n, P)
    alpha : float >= 0

    Returns
    -------
    R : ndarray (P, D)
    b : ndarray (P,)

    Notes
    -----
    Centred data, then the primal normal equations ``(Xc^T Xc + alpha I) W = Xc^T Yc`` when
    ``n >= D`` or the dual ``W = Xc^T (Xc Xc^T + alpha I)^-1 Yc`` when ``n < D`` (the same ``W``),
    by Cholesky. ``alpha = 0`` (or a system that is not numerically positive definite) gives the
    minimum-norm least-squares solution ``lstsq(Xc, Yc)``, the limit ``alpha -> 0+``.
    """
    x_mean, y_mean = X.mean(0), Y.mean(0)
    Xc, Yc = X - x_mean, Y - y_mean  # (n, D), (n, P)
    n, D = Xc.shape
    primal = n >= D
    A = Xc.T @ Xc if primal else Xc @ Xc.T  # (D, D) or (n, n)
    rhs = Xc.T @ Yc if primal else Yc
    A[np.diag_indices_from(A)] += alpha
    try:
        if alpha == 0:
            raise linalg.LinAlgError("alpha = 0: least squares")
        W = linalg.cho_solve(linalg.cho_factor(A, check_finite=False), rhs, check_finite=False)
        W = W if primal else Xc.T @ W  # (D, P)
    except linalg.LinAlgError:
        W = np.linalg.lstsq(Xc, Yc, rcond=None)[0]  # (D, P) minimum norm, rank cut at eps
    R = W.T  # (P, D)
    return R, y_mean - R @ x_mean


def ridge_bytes(n: int, D: int, P: int) -> int:
    """Peak working memory (bytes) of :func:`ridge_regression` on ``X (n, D)``, ``Y (n, P)``.

    The centred copy ``Xc (n, D)``, the Gram matrix (primal ``(D, D)`` or dual ``(n, n)``) and,
    on the least-squares fallback, LAPACK's copy of ``Xc``.
    """
    k = min(n, D)
    return 8 * (2 * n * D + k * k + 2 * k * P + n * P)
