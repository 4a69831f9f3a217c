"""How well the final warp is determined: the predicted spread of the template's corners.

The least-squares estimate of ``p`` from residuals of variance ``sigma^2`` per (weighted)
pixel has covariance ``sigma^2 H^-1``, with ``H = sd^T W sd`` the Gauss-Newton Hessian of the
template at the identity: its texture as the warp sees it ([BM04] Sec. 4.1). Mapped through
the warp's Jacobian at the four corners of the template, ``J_k`` (template pixels per unit of
``p``), it gives the RMS over the corners of their standard deviation,

    uncertainty = sqrt(sigma^2 * mean_k trace(J_k H^-1 J_k^T)),

in template pixels, the unit of :func:`lkstn.result.corner_error`. ``sigma^2`` is the final
mean squared residual (the cost) over the residual's degrees of freedom. An estimate that is
not the least-squares one has its own covariance: IC-LK with ``gradient_sigma`` and no plain or
forwards stage after it stops where ``dp = R e`` vanishes, ``R = (sd_G^T sd)^-1 sd_G^T``, so
its covariance is ``sigma^2 R R^T`` (larger: the smoothed images discard fine texture).

It is large where the residual is large against the texture: a nearly flat template on a noisy
image (any place fits as well as the truth), or texture along one direction only (an edge, a
line: the warp is not fixed along it, and a place far along the line scores as high as the
truth). The correlation ``score`` cannot see the second. On a right alignment of a clean image
the residual, and so the uncertainty, is close to zero. Measured against ground truth in
``docs/registration.md``: on noisy photographs the errors of right alignments were 1.4x and
2.4x the prediction, pooled over two seeds (0.8-4.8x per cell). It is a lower bound: it does
not see a minimum pulled off the truth, nor one sliding along a weakly fixed direction. It
ranks alignments better than it sizes their errors.

References: [BM04] Baker & Matthews, IJCV 2004.
"""

from __future__ import annotations

import numpy as np

from lkstn.warps import Warp

__all__ = ["corner_gain", "corner_sigma", "unit_covariance"]


def unit_covariance(hessian: np.ndarray) -> np.ndarray:
    """``H^-1``: the covariance of a least-squares estimate per unit residual variance; all
    ``inf`` where ``hessian`` ``(P, P)`` is singular (the warp is not determined)."""
    try:
        return np.linalg.inv(hessian)
    except np.linalg.LinAlgError:
        return np.full(hessian.shape, np.inf)


def corner_gain(warp: Warp, template_shape: tuple[int, int], covariance: np.ndarray) -> float:
    """``mean_k trace(J_k C J_k^T)``: the corners' mean variance (template pixels^2) per unit
    residual variance, for ``covariance`` ``C`` ``(P, P)`` of ``p`` per unit residual variance
    (``H^-1`` for least squares, :func:`unit_covariance`); ``inf`` where it is not finite."""
    h, w = template_shape
    scale = np.array([(w - 1) / 2.0, (h - 1) / 2.0])  # template pixels per canonical unit
    J = warp.jacobian(warp.corners()) * scale[:, None]  # (4, 2, P) at the identity
    if not np.isfinite(covariance).all():
        return np.inf
    gain = float(np.einsum("kap,pq,kaq->", J, covariance, J)) / len(J)
    return gain if np.isfinite(gain) and gain >= 0 else np.inf


def corner_sigma(cost: np.ndarray, gain: float, total: float, dof: int) -> np.ndarray:
    """The uncertainty (template pixels) of alignments whose final cost (mean squared residual
    over ``total`` weighted residuals) is ``cost`` ``(n,)``; ``dof`` parameters were fitted (the
    warp's and the photometric ones). NaN where the cost is not finite."""
    variance = np.asarray(cost, dtype=np.float64) * (total / max(total - dof, 1.0))
    if not np.isfinite(gain):  # a singular Hessian: the warp is not determined
        return np.where(np.isfinite(variance), np.inf, np.nan)
    with np.errstate(invalid="ignore"):
        return np.sqrt(variance * gain)
