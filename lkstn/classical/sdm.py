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
    (:func:`lkstn.classical.ridge.ridge_regression`).
Appearance and success
    ``phi`` acts on ``I(p)`` pooled over blocks under the template mask; ``converged`` needs the
    final ZNCC (``score``, :func:`lkstn.score.zncc`) and the first stage to agree that ``p`` is
    aligned, so a cascade that stops in a wrong place reports failure.

Glossary: ``I`` image, ``p`` warp parameters, ``delta`` displacement of ``p`` from ``p_true`` in
the template frame, ``dp`` a predicted update, ``phi`` the feature function, ``D`` feature length,
``R (P, D)``, ``b (P,)`` one stage's regressor, ``N`` images, ``M`` starts per image.

References: [XD13] Xiong & De la Torre, Supervised Descent Method, CVPR 2013. [LL17], [BM04]: see
:mod:`lkstn.warps`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lkstn.chunks import align_in_chunks
from lkstn.classical.features import FeatureFn, block_mean, get_features, normalised
from lkstn.classical.ridge import ridge_regression
from lkstn.classical.sdm_cascade import Sampler, corner_motion_px, coverage, learn_cascade
from lkstn.classical.sdm_checks import (
    check_align_input,
    check_fit_input,
    check_image,
    check_mask,
    check_params,
    check_photometric,
    check_regressors,
    check_settings,
)
from lkstn.classical.sdm_io import load_sdm, save_sdm
from lkstn.classical.sdm_template import fit_template
from lkstn.perturb import perturb
from lkstn.result import CONVERGED_PX, AlignmentResult
from lkstn.sampling import warp_image
from lkstn.score import zncc
from lkstn.warps import Warp, warp_from_name

__all__ = ["MIN_SCORE", "SDM", "ridge_regression"]

MIN_SCORE = 0.5
"""Default ``min_score``: the ZNCC below which a final alignment does not count as converged;
the classical Gauss-Newton aligners' default (a test keeps the two equal)."""


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
        Only the named ones can be saved.
    channel_axis : None or -1
        ``-1`` for colour images ``(..., H, W, C)``.
    tol : float
        Template pixels (IC-LK's ``tol`` is ``||dp||`` in canonical units): the largest RMS
        corner displacement of the last update of a converged alignment.
    mask : ndarray (h, w), optional
        Template weights, 0 ignores a pixel. The pooled appearance is multiplied by
        ``block_mask``, the smallest weight of each block: a block holding an ignored pixel
        gives zeros, in fitting and aligning alike; ``score`` weights pixels by ``mask``.
    pool : int
        Appearance averaged over ``pool x pool`` template pixels before ``phi`` (1: none;
        at most half the template's shorter side).
    min_score : float
        ``converged`` needs the final ZNCC (``score``) at least this high.
    photometric : None, "bias" or "gain-bias"
        Features blind to an offset (and a gain) of the image per channel: each pooled sample
        less its mean (over its RMS) under the block mask, as ZNCC normalises.

    residual_px : float
        ``converged`` needs the first stage, applied at the final estimate, to predict a motion
        under this many template px: the widest stage estimates the misalignment that is left.

    An alignment is ``converged`` when its parameters and cost are finite, at least one stage
    ran and its last update moved the template corners by less than ``tol`` px, at least half
    of the template frame lies inside the image, ``score >= min_score`` and the final estimate
    is a fixed point of the first stage (``residual_px``).

    ``align``, ``regressors`` and ``save`` raise ``RuntimeError`` before ``fit``.

    Attributes (after ``fit``)
    --------------------------
    regressors : list of (R (P, D), b (P,))
    template : ndarray (h, w[, C])
        Mean training appearance at ``p_true``, which ``cost`` and ``score`` compare with.
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
        mask: npt.ArrayLike | None = None,
        pool: int = 1,
        min_score: float = MIN_SCORE,
        photometric: str | None = None,
        residual_px: float = CONVERGED_PX,
    ) -> None:
        check_settings(template_shape, n_stages, alpha, tol, channel_axis, pool, min_score)
        check_photometric(photometric, residual_px)
        self.template_shape = (int(template_shape[0]), int(template_shape[1]))
        self.warp = warp_from_name(warp)
        self.n_stages, self.alpha, self.tol = int(n_stages), float(alpha), float(tol)
        self.features, self.channel_axis = features, channel_axis
        self.mask, self.pool = check_mask(mask, self.template_shape), int(pool)
        self.block_mask = None if self.mask is None else block_mean(self.mask, pool, reduce="min")
        self.min_score, self.photometric = float(min_score), photometric
        self.residual_px = float(residual_px)
        self._phi = get_features(features)
        self._regressors: list[tuple[np.ndarray, np.ndarray]] | None = None
        self.template: np.ndarray | None = None
        self.train_errors: np.ndarray | None = None

    def __repr__(self) -> str:
        return (
            f"SDM(template_shape={self.template_shape}, warp={self.warp!r}, "
            f"n_stages={self.n_stages}, alpha={self.alpha}, features={self.features!r}, "
            f"pool={self.pool})"
        )

    @property
    def regressors(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The learned ``(R (P, D), b (P,))`` per stage; ``RuntimeError`` before ``fit``."""
        if self._regressors is None:
            raise RuntimeError("SDM is not fitted: call fit(images, p_true, p_init) first")
        return list(self._regressors)

    @property
    def n_features(self) -> int:
        """``D``, the length of ``phi`` for one template-shaped sample."""
        C = () if self.template is None else self.template.shape[2:]
        return self._feature_length(C if self.channel_axis is None or C else (1,))

    def _feature_length(self, channels: tuple[int, ...]) -> int:
        return int(self.features_of(np.zeros((1, *self.template_shape, *channels))).shape[-1])

    # -- learning ---------------------------------------------------------------------------------
    def fit(self, images: npt.ArrayLike, p_true: npt.ArrayLike, p_init: npt.ArrayLike, *,
            progress: bool | None = None) -> SDM:  # fmt: skip
        """Learn the cascade from ``M`` perturbed starts per image ([LL17] eq. (7)).

        Parameters
        ----------
        images : ndarray (N, H, W[, C]) or one image (H, W[, C])
        p_true : ndarray (N, P), or (P,) for one image
        p_init : ndarray (N, M, P), or (M, P) for one image
        progress : bool, optional
            A progress bar (tqdm, on stderr). ``None``: shown on a terminal once the fit has
            run for 2 s.

        Returns ``self``.

        Raises
        ------
        ValueError
            For bad shapes or non-finite input, for a fit that would need more than
            :data:`~lkstn.classical.sdm_checks.FIT_BYTES` of memory, for images whose features
            are the same at every start (a flat image: no appearance to learn from), or when a
            stage diverges.
        """
        images, p_true, p = check_fit_input(self.warp, self.channel_axis, images, p_true, p_init)
        warp, shape, ca = self.warp, self.template_shape, self.channel_axis

        def sample(n: int, p_n: np.ndarray) -> np.ndarray:
            return warp_image(images[n], warp, p_n, shape, channel_axis=ca)  # I_n(p)

        template = warp_image(images, warp, p_true, shape, channel_axis=ca).mean(0)
        return self.fit_sampler(sample, template, p_true, p, progress=progress)

    def fit_perturbed(
        self,
        image: npt.ArrayLike,
        p_true: npt.ArrayLike,
        sigma: float,
        n_samples: int,
        rng: np.random.Generator,
        *,
        progress: bool | None = None,
    ) -> SDM:
        """Draw ``n_samples`` starts per image with the paper's noise model, then :meth:`fit`.

        ``image`` (H, W[, C]) with ``p_true`` (P,), or a batch (N, H, W[, C]) with (N, P);
        ``sigma`` in template pixels (:func:`lkstn.perturb.perturb`); ``rng`` a
        ``numpy.random.Generator``.
        """
        if not isinstance(n_samples, int | np.integer) or n_samples < 1:
            raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
        p_true = check_params(p_true, "p_true", self.warp)
        p_init = perturb(self.warp, p_true, sigma, self.template_shape, rng, n=int(n_samples))
        return self.fit(image, p_true, np.moveaxis(p_init, 0, -2), progress=progress)  # (..., M, P)

    for_template = classmethod(fit_template)  # SDM.for_template(template, *, warp=..., ...)

    def fit_sampler(
        self,
        sample: Sampler,
        template: np.ndarray,
        p_true: np.ndarray,
        p_init: np.ndarray,
        *,
        pooled: bool = False,
        progress: bool | None = None,
    ) -> SDM:
        """The cascade of :meth:`fit` with any source of training appearance.

        ``sample(n, p)`` returns image ``n`` warped at the starts ``p (m, P)``, ``(m, h, w[,
        C])``, or already averaged over blocks (``pooled=True``, as :meth:`features_of`);
        ``template (h, w[, C])``; ``p_true (N, P)``; ``p_init (N, M, P)``. The samples are drawn
        in chunks: the fit holds only the features ``(N M, D)``
        (:func:`~lkstn.classical.sdm_cascade.learn_cascade`).
        """
        regressors, errors = learn_cascade(
            self, sample, p_true, p_init, pooled=pooled, progress=progress
        )
        self.set_regressors(regressors, template, errors)
        return self

    def set_regressors(
        self,
        regressors: list[tuple[np.ndarray, np.ndarray]],
        template: npt.ArrayLike,
        train_errors: npt.ArrayLike | None = None,
    ) -> None:
        """Install a fitted cascade (from :meth:`fit` or a file): ``n_stages`` pairs ``(R, b)``.

        ``R (P, D)`` and ``b (P,)`` finite with ``D = n_features``; ``template (h, w[, C])``.
        """
        T = check_image(template, "template", self.channel_axis)
        if T.shape[:2] != self.template_shape or not np.isfinite(T).all():
            raise ValueError(
                f"template must be finite, of shape {self.template_shape}, got {T.shape}"
            )
        D = self._feature_length(T.shape[2:])
        pairs = check_regressors(regressors, self.n_stages, self.warp.n_params, D)
        errors = None if train_errors is None else np.array(train_errors, dtype=np.float64)
        if errors is not None and errors.shape != (self.n_stages + 1,):
            raise ValueError(f"train_errors must be ({self.n_stages + 1},), got {errors.shape}")
        self.template = T.copy()
        self._regressors, self.train_errors = pairs, errors

    # -- files ------------------------------------------------------------------------------------
    save = save_sdm  # sdm.save(path): one .npz of arrays and JSON, no pickle
    load = classmethod(load_sdm)  # SDM.load(path): every field checked

    # -- alignment --------------------------------------------------------------------------------
    def align(self, image: npt.ArrayLike, p_init: npt.ArrayLike, n_iter: int | None = None,
              *, chunk_size: int | None = None) -> AlignmentResult:  # fmt: skip
        """Apply the cascade: stage ``k`` at iteration ``k``, the last stage again beyond it.

        Parameters
        ----------
        image : ndarray (..., H, W[, C])
            One image with many starts, or a batch broadcasting against ``p_init``.
        p_init : ndarray (..., P)
        n_iter : int, optional
            Defaults to ``n_stages``. With 0 nothing moves and nothing counts as converged.
        chunk_size : int, optional
            Align at most this many starts at a time (:func:`lkstn.chunks.align_in_chunks`):
            memory bounded by the chunk, the same result.

        Returns
        -------
        AlignmentResult
            ``history (n_iter + 1, ..., P)``, ``cost (n_iter + 1, ...)`` against ``template``,
            ``converged (...)``, ``score (...)``.
        """
        if chunk_size is not None:  # align_in_chunks calls back here without chunk_size
            return align_in_chunks(self, image, p_init, chunk_size=chunk_size, n_iter=n_iter)
        regressors = self.regressors
        image, p, n_iter = check_align_input(
            image, p_init, self.n_stages if n_iter is None else n_iter, self.warp,
            channel_axis=self.channel_axis, channels=self.template.shape[-1],
        )  # fmt: skip
        history, costs = [p], []
        update_px = np.full(p.shape[:-1], np.inf)  # no stage run: no evidence of convergence
        with np.errstate(all="ignore"):  # NaN/inf pixels, points at infinity: flagged below
            for k in range(n_iter):
                R, b = regressors[min(k, len(regressors) - 1)]
                samples, cost = self._sample(image, p)  # I(p)
                costs.append(cost)
                dp = self.features_of(samples) @ R.T + b  # [LL17] eq. (6)
                dp_inv = self.warp.inverse(dp, check=False)  # NaN rows where M(dp) is singular
                p = self.warp.compose(p, dp_inv, check=False)  # p <- p o dp^-1 [BM04]
                update_px = corner_motion_px(self.warp, self.template_shape, dp)
                history.append(p)
            samples, cost = self._sample(image, p)
            costs.append(cost)
            converged, score = self._verdict(image, p, cost, samples, update_px)
        return AlignmentResult(np.stack(history), np.stack(costs), converged, score)

    def _verdict(self, image, p, cost, samples, update_px) -> tuple[np.ndarray, np.ndarray]:
        """``(converged, score)`` at the final ``p``: finite, the last stage moved the corners
        less than ``tol`` px, at least half the template on the image, ``score >= min_score``,
        and the first (widest) regressor sees less than ``residual_px`` of misalignment left."""
        score = zncc(self.template, samples, self.mask, channel_axis=self.channel_axis)
        converged = np.isfinite(p).all(-1) & np.isfinite(cost)
        converged &= update_px < self.tol  # NaN compares False
        inside = coverage(image, self.warp, p, self.template_shape, self.channel_axis)
        converged &= inside >= 0.5  # a template off the image: failed
        converged &= score >= self.min_score  # stopped in a wrong place: failed
        R, b = self.regressors[0]  # the widest basin: its estimate of the misalignment left
        left = self.features_of(samples) @ R.T + b
        converged &= corner_motion_px(self.warp, self.template_shape, left) < self.residual_px
        return converged, score

    # -- helpers ----------------------------------------------------------------------------------
    def features_of(self, samples: np.ndarray, *, pooled: bool = False) -> np.ndarray:
        """``phi`` of samples ``(..., h, w[, C])`` after pooling and the block mask: ``(..., D)``.

        ``pooled=True``: the samples are already block means ``(..., h // pool, w // pool[, C])``.
        """
        ca = self.channel_axis
        if self.pool > 1 and not pooled:
            samples = block_mean(samples, self.pool, channel_axis=ca)
        if self.photometric is not None:
            gain = self.photometric == "gain-bias"
            samples = normalised(samples, self.block_mask, gain=gain, channel_axis=ca)
        elif self.block_mask is not None:
            samples = samples * (self.block_mask if ca is None else self.block_mask[..., None])
        phi = np.asarray(self._phi(samples, channel_axis=ca), dtype=np.float64)
        n_core = 2 if ca is None else 3
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
