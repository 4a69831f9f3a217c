"""Supervised Descent Method: a cascade of linear regressors learned from perturbations.

SDM [XD13] learns, stage by stage, linear predictors ``{R, b}`` from warped appearance to warp
update by ridge regression on Monte-Carlo perturbations of known alignments ([LL17] eq. (7)):

    ``min_{R, b} sum_n sum_j || dp_nj - R phi(I_n(p_n o dp_nj)) - b ||^2 + alpha ||R||_F^2``

Update form (chosen to match IC-LK, so that the first stage is comparable to ``ICLK.regressor()``)
    A current estimate is written ``p = p_true o delta`` (a start is ``p_init = compose(p_true,
    delta)``, the paper's noise model). Each stage predicts ``dp ~ delta = p_true^-1 o p`` from
    ``phi(I(p))`` and applies it as IC-LK does, ``p <- p o dp^-1`` ([BM04] Sec. 3.2): with
    ``dp = delta`` this recovers ``p_true`` exactly. With raw pixels, a tiny ``sigma`` and a tiny
    ``alpha`` the first ``(R, b)`` tends to IC-LK's ``(H^-1 sd_images^T, -R T)``.
Sequential learning ([LL17] Sec. 2)
    Stage ``k`` is fitted on the estimates produced by stages ``1..k-1`` from the training starts,
    so it learns the error distribution it will actually see.
Ridge
    Closed form with the intercept not penalised: exactly ``sklearn.linear_model.Ridge(alpha)``
    (``alpha`` has sklearn's meaning: it multiplies ``||R||_F^2`` against the *summed*, not
    averaged, squared error; ``alpha = 0`` gives the minimum-norm least-squares solution).

Glossary: ``I`` image, ``p`` warp parameters, ``delta`` displacement of ``p`` from ``p_true`` in
the template frame, ``dp`` a predicted update, ``phi`` the feature function, ``D`` feature length,
``R (P, D)``, ``b (P,)`` one stage's regressor, ``N`` images, ``M`` starts per image.

References: [XD13] Xiong & De la Torre, Supervised Descent Method, CVPR 2013. [LL17], [BM04]: see
:mod:`lkstn.warps`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import linalg

from lkstn.chunks import align_in_chunks
from lkstn.classical.features import FeatureFn, get_features
from lkstn.perturb import perturb
from lkstn.result import AlignmentResult, _check_shape
from lkstn.sampling import warp_image
from lkstn.warps import Warp, warp_from_name

__all__ = ["SDM", "ridge_regression"]


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


def _inverse(warp: Warp, p: np.ndarray) -> np.ndarray:
    """``inverse(p)`` that never raises: a singular or NaN warp gives non-finite parameters."""
    M = warp._matrix(p)  # (..., 3, 3)
    r0, r1, r2 = M[..., 0, :], M[..., 1, :], M[..., 2, :]
    with np.errstate(all="ignore"):
        adj = np.stack([np.cross(r1, r2), np.cross(r2, r0), np.cross(r0, r1)], -1)  # (..., 3, 3)
        det = (r0 * np.cross(r1, r2)).sum(-1)  # (...)
        return warp._params(adj / det[..., None, None])


class SDM:
    """Supervised Descent Method with the IC-LK update form ([LL17] eq. (7), [XD13]).

    Parameters
    ----------
    template_shape : (h, w)
        Size of the template frame in which appearance is sampled.
    warp : Warp or str
        Translation, Similarity, Affine (default) or Homography.
    n_stages : int
        Number of linear regressors in the cascade.
    alpha : float
        Ridge penalty, sklearn's meaning (see the module docstring).
    features : "pixels", "hog" or callable
        ``phi(samples, *, channel_axis=None) -> (..., D)``; see :mod:`lkstn.classical.features`.
    channel_axis : None or -1
        ``-1`` for colour images ``(..., H, W, C)``.
    tol : float
        Template pixels (IC-LK's ``tol`` is ``||dp||`` in canonical units). An alignment is
        ``converged`` when its parameters and cost are finite, its last update moved the
        template corners by less than ``tol`` (RMS, as :func:`lkstn.corner_error`), and at least
        half of the template frame lies inside the image (zero padding beyond). A weak test
        for a cascade: its last stage also makes small steps in a wrong basin (on the cat at
        sigma = 5 px the flag agrees with "corner error < 1 px" for ~96-98 % of the starts).

    Raises
    ------
    RuntimeError
        From ``align`` and ``regressors`` before ``fit``.

    Attributes (after ``fit``)
    --------------------------
    regressors : list of (R (P, D), b (P,))
    template : ndarray (h, w[, C])
        Mean training appearance at ``p_true``, the template SDM implicitly learns; ``cost`` in
        :meth:`align` is the mean squared residual against it.
    train_errors : ndarray (n_stages + 1,)
        Median corner error (px) of the training estimates before stage 1 and after each stage.

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn import Affine
    >>> yy, xx = np.mgrid[:40, :40] / 6.0
    >>> image = np.sin(xx) * np.cos(0.7 * yy)
    >>> p_true = np.array([-0.4, 0, 0, 0, -0.4, 0])  # a centred 60% box
    >>> sdm = SDM(template_shape=(16, 16), warp=Affine(), n_stages=3, alpha=1e-3)
    >>> sdm = sdm.fit_perturbed(image, p_true, 1.0, 200, np.random.default_rng(0))
    >>> bool(sdm.train_errors[-1] < 0.1 * sdm.train_errors[0])
    True
    """

    def __init__(
        self,
        template_shape: tuple[int, int] = (50, 50),
        warp: Warp | str = "affine",
        n_stages: int = 4,
        alpha: float = 1.0,
        features: str | FeatureFn = "pixels",
        *,
        channel_axis: int | None = None,
        tol: float = 0.1,
    ) -> None:
        _check_shape(template_shape)
        if not isinstance(n_stages, int | np.integer) or n_stages < 1:
            raise ValueError(f"n_stages must be an int >= 1, got {n_stages!r}")
        if not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        if not np.isfinite(tol) or tol <= 0:
            raise ValueError(f"tol must be a finite number > 0 (pixels), got {tol!r}")
        if channel_axis not in (None, -1):
            raise ValueError(f"channel_axis must be None or -1, got {channel_axis!r}")
        self.template_shape = (int(template_shape[0]), int(template_shape[1]))
        self.warp = warp_from_name(warp)
        self.n_stages, self.alpha, self.tol = int(n_stages), float(alpha), float(tol)
        self.features, self.channel_axis = features, channel_axis
        self._phi = get_features(features)
        self._regressors: list[tuple[np.ndarray, np.ndarray]] | None = None
        self.template: np.ndarray | None = None
        self.train_errors: np.ndarray | None = None

    def __repr__(self) -> str:
        return (
            f"SDM(template_shape={self.template_shape}, warp={self.warp!r}, "
            f"n_stages={self.n_stages}, alpha={self.alpha}, features={self.features!r})"
        )

    @property
    def regressors(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The learned ``(R (P, D), b (P,))`` per stage; ``RuntimeError`` before ``fit``."""
        if self._regressors is None:
            raise RuntimeError("SDM is not fitted: call fit(images, p_true, p_init) first")
        return list(self._regressors)

    # -- learning ---------------------------------------------------------------------------------
    def fit(self, images: Any, p_true: Any, p_init: Any) -> SDM:
        """Learn the cascade from ``M`` perturbed starts per image ([LL17] eq. (7)).

        Parameters
        ----------
        images : ndarray (N, H, W[, C]) or one image (H, W[, C])
        p_true : ndarray (N, P), or (P,) for one image
        p_init : ndarray (N, M, P), or (M, P) for one image

        Returns ``self``.

        Raises
        ------
        ValueError
            For bad shapes or non-finite input, for images whose features are the same at every
            start (a flat image: no appearance to learn from), or when a stage diverges.
        """
        images, p_true, p = self._check_fit(images, p_true, p_init)  # (N, ...), (N, P), (N, M, P)
        warp, shape, ca = self.warp, self.template_shape, self.channel_axis
        N, M, P = p.shape
        self.template = warp_image(images, warp, p_true, shape, channel_axis=ca).mean(0)
        p_true_inv = warp.inverse(p_true)[:, None]  # (N, 1, P)
        errors, regressors = [self._median_error(p, p_true)], []
        for k in range(self.n_stages):  # sequential learning ([LL17] Sec. 2)
            samples = warp_image(images[:, None], warp, p, shape, channel_axis=ca)  # I_n(p_nj)
            phi = self._features(samples).reshape(N * M, -1)  # (NM, D)
            spread = np.abs(phi - phi.mean(0)).max() if k == 0 and N * M > 1 else np.inf
            if spread <= 1e-9 * np.abs(phi).max():  # flat up to rounding of the sampler
                raise ValueError(
                    "images give the same features at every training start (flat images, or "
                    "identical starts): there is no appearance to regress the warp from"
                )
            delta = warp._compose(p_true_inv, p).reshape(N * M, P)  # p = p_true o delta
            R, b = ridge_regression(phi, delta, self.alpha)  # [LL17] eq. (7)
            dp = (phi @ R.T + b).reshape(N, M, P)  # [LL17] eq. (6)
            p = warp._compose(p, _inverse(warp, dp))  # p <- p o dp^-1, as IC-LK [BM04]
            if not np.isfinite(p).all():
                raise ValueError(f"stage {k + 1} diverged on the training starts: raise alpha")
            regressors.append((R, b))
            errors.append(self._median_error(p, p_true))
        self._regressors, self.train_errors = regressors, np.array(errors)
        return self

    def fit_perturbed(self, image: Any, p_true: Any, sigma: float, n_samples: int, rng: Any) -> SDM:
        """Draw ``n_samples`` starts per image with the paper's noise model, then :meth:`fit`.

        ``image`` (H, W[, C]) with ``p_true`` (P,), or a batch (N, H, W[, C]) with (N, P);
        ``sigma`` in template pixels (:func:`lkstn.perturb.perturb`); ``rng`` a
        ``numpy.random.Generator``.
        """
        if not isinstance(n_samples, int | np.integer) or n_samples < 1:
            raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
        p_true = self.warp._check_p(np.asarray(p_true, dtype=np.float64), "p_true")
        p_init = perturb(self.warp, p_true, sigma, self.template_shape, rng, n=int(n_samples))
        return self.fit(image, p_true, np.moveaxis(p_init, 0, -2))  # (..., M, P)

    # -- alignment --------------------------------------------------------------------------------
    def align(
        self, image: Any, p_init: Any, n_iter: int | None = None, *, chunk_size: int | None = None
    ) -> AlignmentResult:
        """Apply the cascade: stage ``k`` at iteration ``k``, the last stage again beyond it.

        Parameters
        ----------
        image : ndarray (..., H, W[, C])
            One image with many starts, or a batch broadcasting against ``p_init``.
        p_init : ndarray (..., P)
        n_iter : int, optional
            Defaults to ``n_stages``.
        chunk_size : int, optional
            Align at most this many starts at a time (:func:`lkstn.chunks.align_in_chunks`):
            memory bounded by the chunk, the same result.

        Returns
        -------
        AlignmentResult
            ``history (n_iter + 1, ..., P)``, ``cost (n_iter + 1, ...)`` against ``template``,
            ``converged (...)``.
        """
        if chunk_size is not None:  # align_in_chunks calls back here without chunk_size
            return align_in_chunks(self, image, p_init, chunk_size=chunk_size, n_iter=n_iter)
        regressors = self.regressors
        n_iter = self.n_stages if n_iter is None else n_iter
        if not isinstance(n_iter, int | np.integer) or n_iter < 0:
            raise ValueError(f"n_iter must be an int >= 0, got {n_iter!r}")
        image = self._check_image(image, "image")
        p = self.warp._check_p(np.asarray(p_init, dtype=np.float64), "p_init")
        n_core = 2 if self.channel_axis is None else 3
        img_batch = image.shape[: image.ndim - n_core]
        try:
            p = np.broadcast_to(p, (*np.broadcast_shapes(img_batch, p.shape[:-1]), p.shape[-1]))
        except ValueError:
            raise ValueError(
                f"image batch {img_batch} and p_init {p.shape} do not broadcast"
            ) from None
        history, costs = [p], []
        update_px = np.zeros(p.shape[:-1])
        with np.errstate(all="ignore"):  # NaN/inf pixels, points at infinity: flagged below
            for k in range(n_iter):
                R, b = regressors[min(k, len(regressors) - 1)]
                samples, cost = self._sample(image, p)  # I(p)
                costs.append(cost)
                dp = self._features(samples) @ R.T + b  # [LL17] eq. (6)
                p = self.warp._compose(p, _inverse(self.warp, dp))  # p <- p o dp^-1 [BM04]
                update_px = self._update_px(dp)
                history.append(p)
            costs.append(self._sample(image, p)[1])
        cost = np.stack(costs)  # (n_iter + 1, ...)
        converged = np.isfinite(p).all(-1) & np.isfinite(cost[-1])
        with np.errstate(all="ignore"):
            converged &= update_px < self.tol  # NaN compares False
            converged &= self._coverage(image, p) >= 0.5  # a template off the image: failed
        return AlignmentResult(history=np.stack(history), cost=cost, converged=converged)

    # -- helpers ----------------------------------------------------------------------------------
    def _features(self, samples: np.ndarray) -> np.ndarray:
        phi = np.asarray(self._phi(samples, channel_axis=self.channel_axis), dtype=np.float64)
        n_core = 2 if self.channel_axis is None else 3
        batch = samples.shape[: samples.ndim - n_core]
        if phi.shape[:-1] != batch:
            raise ValueError(f"features returned shape {phi.shape} for samples {samples.shape}")
        return phi  # (..., D)

    def _sample(self, image: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``I(p)`` and its cost; non-finite ``p`` rows give NaN samples instead of an error."""
        finite = np.isfinite(p).all(-1)  # (...)
        p_safe = np.where(finite[..., None], p, 0.0)
        samples = warp_image(
            image, self.warp, p_safe, self.template_shape, channel_axis=self.channel_axis
        )
        samples[~finite] = np.nan
        axes = tuple(range(finite.ndim, samples.ndim))
        return samples, ((samples - self.template) ** 2).mean(axes)

    def _coverage(self, image: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Fraction of the template frame that ``W(.; p)`` puts inside the image, ``(...)``.

        Outside the image the samples are zero padding, which no regressor can align: a last
        stage that predicts a small step from them (its intercept) is no convergence.
        """
        n_core = 2 if self.channel_axis is None else 3
        H, W = image.shape[image.ndim - n_core : image.ndim - n_core + 2]
        p_safe = np.where(np.isfinite(p).all(-1)[..., None], p, 0.0)
        inside = warp_image(np.ones((H, W)), self.warp, p_safe, self.template_shape)
        return inside.mean((-2, -1))

    def _update_px(self, dp: np.ndarray) -> np.ndarray:
        """RMS displacement (template px) of the corners under ``W(.; dp)``."""
        h, w = self.template_shape
        corners = self.warp.corners()  # (4, 2)
        with np.errstate(all="ignore"):
            d = (self.warp._apply(dp, corners) - corners) * [(w - 1) / 2, (h - 1) / 2]
            return np.sqrt((d**2).sum(-1).mean(-1))

    def _median_error(self, p: np.ndarray, p_true: np.ndarray) -> float:
        delta = self.warp._compose(self.warp.inverse(p_true)[:, None], p)  # (N, M, P)
        return float(np.median(self._update_px(delta)))

    def _check_image(self, image: Any, name: str) -> np.ndarray:
        image = np.asarray(image)
        image = image if np.issubdtype(image.dtype, np.floating) else image.astype(np.float64)
        n_core = 2 if self.channel_axis is None else 3
        if image.ndim < n_core or min(image.shape[image.ndim - n_core :][:2]) < 2:
            layout = "(..., H, W)" if self.channel_axis is None else "(..., H, W, C)"
            raise ValueError(f"{name} must be {layout} with H, W >= 2, got shape {image.shape}")
        T = self.template if name == "image" else None
        if self.channel_axis is not None and T is not None and image.shape[-1] != T.shape[-1]:
            raise ValueError(f"{name} must have {T.shape[-1]} channels, got shape {image.shape}")
        return image

    def _check_fit(self, images: Any, p_true: Any, p_init: Any):
        P, n_core = self.warp.n_params, 2 if self.channel_axis is None else 3
        images = self._check_image(np.asarray(images, dtype=np.float64), "images")
        if images.ndim not in (n_core, n_core + 1):
            raise ValueError(f"images must be (N, H, W[, C]) or one image, got {images.shape}")
        if not np.isfinite(images).all():
            raise ValueError("images has non-finite entries (NaN or inf)")
        p_true, p_init = np.asarray(p_true, dtype=np.float64), np.asarray(p_init, dtype=np.float64)
        single = images.ndim == n_core
        N = 1 if single else images.shape[0]
        want_t, want_i = ((P,), ("M", P)) if single else ((N, P), (N, "M", P))
        if p_true.shape != want_t:
            raise ValueError(
                f"p_true must be {want_t} for images {images.shape}, got {p_true.shape}"
            )
        bad_i = p_init.ndim != len(want_i) or p_init.shape[-1] != P or p_init.shape[-2] < 1
        if bad_i or p_init.shape[:-2] != want_t[:-1]:
            raise ValueError(
                f"p_init must be {want_i} for images {images.shape}, got {p_init.shape}"
            )
        p_true = self.warp._check_p(p_true, "p_true").reshape(N, P)
        p_init = self.warp._check_p(p_init, "p_init").reshape(N, -1, P)
        return images.reshape(N, *images.shape[-n_core:]), p_true, p_init
