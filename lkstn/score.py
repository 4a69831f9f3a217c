"""The alignment score: zero-normalised cross-correlation (ZNCC) of template and warped image.

``score = <T - mean T, I(p) - mean I(p)> / (|T - mean T| |I(p) - mean I(p)|)`` over the
template's pixels (and channels), weighted by an optional template ``mask``; this is the
criterion OpenCV's ECC maximises ([EP08] eq. (2)), in ``[-1, 1]``, 1 for a perfect alignment
up to an offset and a gain. It is blind to lighting but not to geometry, so a final alignment
that stopped moving in a wrong place scores low: aligners report it as
``AlignmentResult.score`` and use it (with a threshold) in ``converged``.

Glossary: ``T`` template ``(h, w[, C])``, ``warped`` the image sampled at the final warp
``(..., h, w[, C])``, ``mask`` template weights ``(h, w)`` (0 ignores a pixel).

[EP08] G. D. Evangelidis and E. Z. Psarakis, *Parametric Image Alignment Using Enhanced
Correlation Coefficient Maximization*, IEEE TPAMI 2008.
"""

from __future__ import annotations

import numpy as np

__all__ = ["zncc"]


def zncc(
    template: np.ndarray,
    warped: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    channel_axis: int | None = None,
) -> np.ndarray:
    """Zero-normalised cross-correlation of a template with one or more warped images.

    Parameters
    ----------
    template : array, shape (h, w) or (h, w, C) with ``channel_axis=-1``
    warped : array, shape (..., h, w) or (..., h, w, C)
        The image sampled at each final warp; leading axes are a batch.
    mask : array, shape (h, w), optional
        Non-negative template weights; 0 ignores a pixel.
    channel_axis : None or -1
        Whether the last axis holds channels (pooled into one correlation).

    Returns
    -------
    score : array, shape (...)
        In ``[-1, 1]``; NaN where the warped image is non-finite, 0 where either side is
        constant over the mask (no evidence of alignment).

    Examples
    --------
    >>> import numpy as np
    >>> T = np.random.default_rng(0).random((8, 8))
    >>> float(zncc(T, 3 * T + 1)), float(zncc(T, -T))
    (1.0, -1.0)
    """
    T = np.asarray(template, dtype=np.float64)
    J = np.asarray(warped, dtype=np.float64)
    core = 2 if channel_axis is None else 3
    if T.ndim != core or J.shape[J.ndim - core :] != T.shape:
        raise ValueError(f"warped: expected shape (..., {T.shape}), got {J.shape}")
    w = np.ones(T.shape[:2]) if mask is None else np.asarray(mask, dtype=np.float64)
    if w.shape != T.shape[:2] or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"mask: expected finite weights >= 0 of shape {T.shape[:2]}")
    if core == 3:
        w = np.broadcast_to(w[..., None], T.shape)
    axes = tuple(range(-core, 0))
    total = w.sum()
    if total <= 0:
        return np.zeros(J.shape[: J.ndim - core])
    Tc = T - (w * T).sum() / total
    Jc = J - (w * J).sum(axis=axes, keepdims=True) / total
    num = (w * Tc * Jc).sum(axis=axes)
    den = np.sqrt((w * Tc**2).sum() * (w * Jc**2).sum(axis=axes))
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return np.clip(np.where(np.isfinite(num), score, np.nan), -1.0, 1.0)
