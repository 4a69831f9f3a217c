"""SDM's sequential learning: one ridge regression per stage on the estimates of the stages before.

Stage ``k`` regresses the displacement ``delta = p_true^-1 o p`` from the features ``phi(I(p))``
of the estimates ``p`` that stages ``1..k-1`` produced from the training starts ([LL17] Sec. 2,
eq. (7)), then moves every estimate as IC-LK does, ``p <- p o dp^-1`` ([BM04] Sec. 3.2). Samples
are drawn :data:`CHUNK_BYTES` at a time into one feature matrix ``(N M, D)``, the fit's memory,
which :func:`~lkstn.classical.sdm_checks.check_fit_memory` bounds before anything is allocated.
BLAS runs on one thread during the fit: the ridge systems (``D`` ~ 1000) gain little from a second
core and lose several times over when the cores are shared with other work (measured by
``python benchmarks/sdm_template.py --ridge-threads``; figures in ``benchmarks/README.md``).

Glossary: ``N`` images, ``M`` starts per image, ``P`` warp parameters, ``D`` feature length,
``sample(n, p)`` image ``n`` warped at the starts ``p (m, P)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from lkstn.classical.ridge import ridge_regression
from lkstn.classical.sdm_checks import check_fit_memory
from lkstn.result import corner_error
from lkstn.sampling import warp_image
from lkstn.warps import Warp

if TYPE_CHECKING:  # sdm.py imports this module
    from lkstn.classical.sdm import SDM

__all__ = [
    "CHUNK_BYTES",
    "Sampler",
    "corner_motion_px",
    "coverage",
    "learn_cascade",
]

CHUNK_BYTES = 32 << 20
"""Samples ``I(p)`` warped at once while fitting (bytes)."""

Sampler = Callable[[int, np.ndarray], np.ndarray]
"""``sample(n, p) -> I_n(p)``: training image ``n`` warped at the starts ``p (m, P)``."""


def learn_cascade(
    sdm: SDM,
    sample: Sampler,
    p_true: np.ndarray,
    p_init: np.ndarray,
    *,
    pooled: bool = False,
    progress: bool | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """``sdm.n_stages`` regressors ``(R (P, D), b (P,))`` and the median training error per stage.

    Parameters
    ----------
    sdm : SDM
        Gives the warp, ``n_stages``, ``alpha``, ``template_shape`` and ``features_of``.
    sample : Sampler
        ``(m, h, w[, C])`` samples, or block means when ``pooled``.
    p_true : ndarray (N, P)
    p_init : ndarray (N, M, P)
    progress : bool, optional
        tqdm bar on stderr; ``None``: on a terminal, once the fit has run for 2 s.

    Returns
    -------
    regressors : list of (R, b)
    errors : ndarray (n_stages + 1,)
        Median corner error (template px) of the training estimates before and after each stage.
    """
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    warp, shape, (N, M, P) = sdm.warp, sdm.template_shape, p_init.shape
    first = sample(0, p_init[0, :1])  # (1, ...)
    D = sdm.features_of(first, pooled=pooled).shape[-1]
    per = max(1, CHUNK_BYTES // first.nbytes)  # starts per chunk of samples
    check_fit_memory(N * M, D, P, min(per, M) * first.nbytes)
    p, p_true_inv = p_init, warp.inverse(p_true)[:, None]  # (N, M, P), (N, 1, P)

    def median_error(p: np.ndarray) -> float:
        return float(np.median(corner_error(warp, p, p_true[:, None], shape)))

    errors, regressors = [median_error(p)], []
    auto = progress is None
    bar = tqdm(
        total=sdm.n_stages * N * M, desc="SDM fit", unit="start", unit_scale=True,
        disable=None if auto else not progress, delay=2.0 if auto else 0.0,
    )  # fmt: skip
    with bar, threadpool_limits(limits=1, user_api="blas"):
        for k in range(sdm.n_stages):  # sequential learning ([LL17] Sec. 2)
            phi = np.empty((N * M, D))
            for n in range(N):
                for s in range(0, M, per):
                    m = min(per, M - s)
                    samples = sample(n, p[n, s : s + m])  # I_n(p)
                    phi[n * M + s : n * M + s + m] = sdm.features_of(samples, pooled=pooled)
                    bar.update(m)
            spread = np.abs(phi - phi.mean(0)).max() if k == 0 and N * M > 1 else np.inf
            if spread <= 1e-9 * np.abs(phi).max():  # flat up to rounding of the sampler
                raise ValueError(
                    "images give the same features at every training start (flat images, or "
                    "identical starts): there is no appearance to regress the warp from"
                )
            delta = warp.compose(p_true_inv, p).reshape(N * M, P)  # p = p_true o delta
            R, b = ridge_regression(phi, delta, sdm.alpha)  # [LL17] eq. (7)
            dp = (phi @ R.T + b).reshape(N, M, P)  # [LL17] eq. (6)
            try:
                p = warp.compose(p, warp.inverse(dp))  # p <- p o dp^-1, as IC-LK [BM04]
            except ValueError:  # a non-finite or singular update
                raise ValueError(
                    f"stage {k + 1} diverged on the training starts: raise alpha"
                ) from None
            regressors.append((R, b))
            errors.append(median_error(p))
            bar.set_postfix(median_px=f"{errors[-1]:.3g}")
    return regressors, np.array(errors)


def corner_motion_px(warp: Warp, template_shape: tuple[int, int], dp: np.ndarray) -> np.ndarray:
    """RMS displacement (template px) of the template corners under ``W(.; dp)``, ``(...)``.

    NaN where ``dp`` is not finite (a failed step is data, not an error).
    """
    finite = np.isfinite(dp).all(-1)  # (...)
    with np.errstate(all="ignore"):  # a finite but huge step may overflow: inf, not an error
        moved = corner_error(
            warp, np.where(finite[..., None], dp, 0.0), warp.identity(), template_shape
        )
    return np.where(finite, moved, np.nan)


def coverage(
    image: np.ndarray,
    warp: Warp,
    p: np.ndarray,
    template_shape: tuple[int, int],
    channel_axis: int | None,
) -> np.ndarray:
    """Fraction of the template frame that ``W(.; p)`` puts inside the image, ``(...)``.

    Outside the image the samples are zero padding, which no regressor can align: a last stage
    that predicts a small step from them (its intercept) is no convergence.
    """
    n_core = 2 if channel_axis is None else 3
    H, W = image.shape[image.ndim - n_core : image.ndim - n_core + 2]
    p_safe = np.where(np.isfinite(p).all(-1)[..., None], p, 0.0)
    return warp_image(np.ones((H, W)), warp, p_safe, template_shape).mean((-2, -1))
