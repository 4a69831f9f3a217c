"""Forwards Lucas-Kanade: additive (LK) and compositional (CompositionalLK) ([BM04] Secs. 2-3.1).

Both linearise the image side of ``min_dp || I(p + dp) - T ||^2`` ([LL17] eqs. (1)-(2)), so their
steepest-descent images and Hessian are recomputed at every iteration, for every alignment:

* ``LK`` (forwards additive, [BM04] Fig. 1): ``sd = grad I(W(x; p)) . dW/dp(x; p)``, the image
  gradient sampled at the warped points times the warp Jacobian at ``p``; ``p <- p + dp``.
* ``CompositionalLK`` (forwards compositional, [BM04] Fig. 3): ``sd = grad I(p) . dW/dp(x; 0)``,
  the gradient of the warped image times the Jacobian at the identity; ``p <- compose(p, dp)``.

In both, ``dp = H^-1 sd^T (T - I(p))`` with ``H = sd^T sd``, solved for all alignments at once
(``np.linalg.solve`` on ``(n, P, P)``). A singular system (e.g. a start whose samples all fall
outside the image, where they are zeros) freezes that alignment with ``converged=False``.

Glossary: ``T`` template; ``I(p)`` image sampled at ``W(x; p)``; ``e = I(p) - T``; ``sd``
steepest-descent images ``(n, h*w*C, P)``; ``hessian`` ``sd^T sd`` ``(n, P, P)``; ``J`` the warp
Jacobian ``dW/dp`` ``(..., h*w, 2, P)``. Gradients are per canonical unit of the frame they are
taken in (image frame for LK, template frame for CompositionalLK), matching ``J``.

References: [LL17] Lin & Lucey, CVPR 2017. [BM04] Baker & Matthews, IJCV 2004.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lkstn.classical._gauss_newton import GaussNewton, Level, solve
from lkstn.classical._sampler import Samples
from lkstn.sampling import image_gradients

__all__ = ["CompositionalLK", "LK"]


def error_image(level: Level, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[BM04] step (2) for ``samples`` ``(n, h*w, K)`` whose first ``C`` channels are ``I(p)``:
    ``(cost (n,), e (n, h*w, C))``, ``e = I(p) - T`` (times ``sqrt(w)`` under a mask, so that its
    sum of squares is the weighted cost) and ``cost`` its mean squared value (weighted mean)."""
    T = level.template.reshape(1, -1, level.template.shape[-1])  # (1, h*w, C)
    e = samples[..., : T.shape[-1]] - T  # (n, h*w, C)
    if level.root_w is None:
        return np.einsum("nqc,nqc->n", e, e) / T.size, e
    e *= level.root_w  # weighted residuals: sum w e^2 is their sum of squares
    total = (level.root_w**2).sum() * T.shape[-1]
    return np.einsum("nqc,nqc->n", e, e) / total, e


_DOC_PARAMS = """
    Parameters
    ----------
    template : ndarray (h, w) or (h, w, C)
        The template ``T``; its own ``(h, w)`` canonical frame is the template frame.
    warp : Warp or str
        Translation, Similarity, Affine (default) or Homography.
    n_iter : int
        Iterations (per pyramid level).
    tol : float
        An alignment converges (and stops) when ``||dp||`` (canonical units) falls below ``tol``.
    handoff_tol : float, optional
        ``tol`` of the stages that a later one refines (coarser pyramid levels, the
        ``image_sigma`` stage). Default: ``tol``.
    channel_axis : None or -1
        ``-1`` for a multi-channel template (and images).
    pyramid : int
        Number of coarse-to-fine levels (1: no pyramid); see :mod:`lkstn.classical.pyramid`.
    mask : ndarray (h, w), optional
        Template weights (0 ignores a pixel): weighted least squares, ``H = sd^T W sd`` and
        ``sd^T W e``, at every pyramid level (the mask follows the template down the pyramid).
    min_score : float
        ``converged`` also requires the final score (ZNCC of the template and the warped image
        under the mask, ``AlignmentResult.score``) at or above this (default 0.5).
    max_uncertainty : float
        ``converged`` also requires ``AlignmentResult.uncertainty`` (the predicted RMS spread
        of the corners, template pixels, :mod:`lkstn.classical.uncertainty`) at or below this
        (default ``inf``: not checked).
    image_sigma : float
        Standard deviation, in pixels, of a Gaussian applied to both the template and the
        image for one more stage at the finest resolution, before the finest level's (0, the
        default: none): a level of the scale space between the pyramid's first coarse level
        and the images, as ECC's ``gaussFiltSize`` smooths both images. It widens the basin at
        the finest level (``docs/registration.md``); the stages after it, and the score, see
        the images as given, so the alignment still ends at their cost's minimum.
"""


@dataclass(frozen=True)
class _JLevel(Level):
    J: np.ndarray  # (h*w, 2, P) dW/dp at the identity


def gauss_newton_step(sd: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``dp = H^-1 sd^T (T - I(p))`` for ``sd`` ``(n, m, P)`` and ``e = I(p) - T`` ``(n, m)``."""
    hessian = sd.swapaxes(-1, -2) @ sd  # (n, P, P), [BM04] Fig. 1 step 6
    rhs = -np.einsum("nmk,nm->nk", sd, e)  # sd^T (T - I(p)), [BM04] Fig. 1 step 7
    return solve(hessian, rhs)  # [BM04] Fig. 1 step 8; ok=False where singular


def _weighted(sd: np.ndarray, level: Level) -> np.ndarray:
    """Steepest-descent rows ``(n, h*w*C, P)`` times ``sqrt(w)`` of the mask (if any): with the
    residuals weighted alike, ``H = sd^T W sd`` and ``sd^T W e``."""
    if level.root_w is None:
        return sd
    n, m, P = sd.shape
    hw = len(level.root_w)
    return (sd.reshape(n, hw, m // hw, P) * level.root_w[:, :, None]).reshape(n, m, P)


def _chain(gx: np.ndarray, gy: np.ndarray, J: np.ndarray) -> np.ndarray:
    """``grad . dW/dp`` for gradients ``(n, h*w, C)`` and ``J`` ``(..., h*w, 2, P)``.

    Returns ``(n, h*w*C, P)``.
    """
    sd = gx[..., None] * J[..., :, None, 0, :] + gy[..., None] * J[..., :, None, 1, :]
    return sd.reshape(len(gx), -1, sd.shape[-1])  # (n, h*w, C, P) -> (n, h*w*C, P)


class LK(GaussNewton):
    __doc__ = (
        """Forwards additive Lucas-Kanade ([LL17] eqs. (1)-(2), [BM04] Fig. 1).

    Linearises ``I(p + dp) ~ I(p) + grad I(W(x; p)) dW/dp(x; p) dp`` and updates ``p <- p + dp``.
    The image gradients are computed once per ``align`` call, in the image's canonical frame,
    and sampled at ``W(x; p)`` together with the image (one sampling pass per iteration).
    """
        + _DOC_PARAMS
        + """
    Examples
    --------
    >>> import numpy as np
    >>> from lkstn import LK, Affine, warp_image
    >>> yy, xx = np.mgrid[0:60, 0:80]
    >>> image = np.sin(xx / 5.0) * np.cos(yy / 7.0)
    >>> p_true = np.array([-0.5, 0.0, 0.1, 0.0, -0.5, 0.0])  # the central half of the image
    >>> template = warp_image(image, Affine(), p_true, (30, 40))
    >>> p_init = p_true + np.array([0.0, 0.0, 0.03, 0.0, 0.0, -0.02])
    >>> result = LK(template, Affine(), n_iter=30, tol=1e-8).align(image, p_init)
    >>> bool(result.converged), bool(np.allclose(result.p, p_true, atol=1e-6))
    (True, True)
    """
    )

    def _prepare_level(self, level: Level) -> _JLevel:
        return _JLevel(
            level.template, level.grid, self.warp.jacobian(level.grid), root_w=level.root_w
        )

    def _sampled(self, images: np.ndarray) -> np.ndarray:
        gx, gy = image_gradients(images, channel_axis=-1)  # per image canonical unit
        return np.concatenate([images, gx, gy], -1)  # (B, H, W, 3C): I, dI/dx, dI/dy

    def _iteration(self, level: _JLevel, sampler: Samples, p: np.ndarray, index: np.ndarray | None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        samples = sampler(p, index)  # (1) I(W(x; p)) and (3) grad I at W(x; p), (n, h*w, 3C)
        cost, e = error_image(level, samples)  # (2) the error image I(p) - T
        C = e.shape[-1]
        gx, gy = samples[..., C : 2 * C], samples[..., 2 * C :]
        # (4) dW/dp(x; p): constant for linear warps, depends on p for a homography
        J = self.warp.jacobian(level.grid, p, check=False) if self.warp.projective else level.J
        sd = _chain(gx, gy, J)  # (5) steepest-descent images
        dp, ok = gauss_newton_step(_weighted(sd, level), e.reshape(len(e), -1))  # (6)-(8)
        return cost, dp, ok

    def _update(self, p: np.ndarray, dp: np.ndarray) -> np.ndarray:
        return p + dp  # [BM04] Fig. 1 step 9


class CompositionalLK(GaussNewton):
    __doc__ = (
        """Forwards compositional Lucas-Kanade ([BM04] Sec. 3.1, Fig. 3).

    Linearises ``I(W(W(x; dp); p)) ~ I(p) + grad I(p) dW/dp(x; 0) dp``: the gradient of the
    *warped* image (template frame) times the Jacobian at the identity, precomputed once; the
    update composes, ``p <- compose(p, dp)``.
    """
        + _DOC_PARAMS
        + """
    Examples
    --------
    >>> import numpy as np
    >>> from lkstn import CompositionalLK, Affine, warp_image
    >>> yy, xx = np.mgrid[0:60, 0:80]
    >>> image = np.sin(xx / 5.0) * np.cos(yy / 7.0)
    >>> p_true = np.array([-0.5, 0.0, 0.1, 0.0, -0.5, 0.0])
    >>> template = warp_image(image, Affine(), p_true, (30, 40))
    >>> p_init = p_true + np.array([0.0, 0.0, 0.03, 0.0, 0.0, -0.02])
    >>> result = CompositionalLK(template, Affine(), n_iter=30, tol=1e-8).align(image, p_init)
    >>> bool(result.converged), bool(np.allclose(result.p, p_true, atol=1e-6))
    (True, True)
    """
    )

    def _prepare_level(self, level: Level) -> _JLevel:
        return _JLevel(
            level.template, level.grid, self.warp.jacobian(level.grid), root_w=level.root_w
        )

    def _iteration(self, level: _JLevel, sampler: Samples, p: np.ndarray, index: np.ndarray | None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        h, w, C = level.template.shape
        samples = sampler(p, index)  # (1) I(W(x; p)), (n, h*w, C)
        cost, e = error_image(level, samples)  # (2) the error image I(p) - T
        warped = samples.reshape(len(samples), h, w, C)
        gx, gy = image_gradients(warped, channel_axis=-1)  # (3) grad I(p), per template unit
        # (4) dW/dp(x; 0) precomputed; (5) steepest-descent images
        sd = _chain(gx.reshape(len(e), -1, C), gy.reshape(len(e), -1, C), level.J)
        dp, ok = gauss_newton_step(_weighted(sd, level), e.reshape(len(e), -1))  # (6)-(8)
        return cost, dp, ok

    def _update(self, p: np.ndarray, dp: np.ndarray) -> np.ndarray:
        return self.warp.compose(p, dp, check=False)  # p <- p o dp, [BM04] Fig. 3 step 9
