"""SciPy's Gaussian filter and bilinear interpolation, in NumPy, for the alignment path.

``lkstn align`` reads two images, builds an aligner and aligns once: a fraction of a second of
work. ``import scipy.ndimage`` alone takes 0.2-0.3 s (SciPy's array-API layer imports
``numpy.testing`` and ``numpy.f2py``), more than the alignment of a 128 px template, so the
functions the aligners need from it are written here with SciPy's arithmetic, operation for
operation:

- :func:`gaussian_filter` is ``scipy.ndimage.gaussian_filter`` (``truncate=4``): the same
  normalised kernel, and per output the sum SciPy's ``correlate1d`` forms for a symmetric
  kernel, the centre tap first and then the pairs from the outermost in.
- :func:`bilinear` is ``scipy.ndimage.map_coordinates(order=1)``: weights ``1 - t, t`` per
  axis and the four products ``value * w_row * w_col`` added in SciPy's order.

Both are tested against SciPy (tests/test_filters.py). Everything else of ``scipy.ndimage``
(SDM's box filters, the experiments) is used from SciPy.

Glossary: ``sigma`` standard deviation in pixels per axis (0 leaves an axis alone), ``row,
col`` fractional pixel coordinates, ``mode`` what lies beyond the edge.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["bilinear", "gaussian_filter", "gaussian_kernel", "kernel_radius"]

_PAD = {"nearest": "edge", "reflect": "symmetric"}  # SciPy's modes as np.pad's


def kernel_radius(sigma: float, truncate: float = 4.0) -> int:
    """Half the width of :func:`gaussian_kernel` (0 for ``sigma = 0``): how far it reaches."""
    return int(truncate * float(sigma) + 0.5)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised 1-D Gaussian of ``scipy.ndimage.gaussian_filter``: radius
    :func:`kernel_radius`, shape ``(2 * radius + 1,)``."""
    radius = kernel_radius(sigma, truncate)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return phi / phi.sum()


def gaussian_filter(
    image: np.ndarray, sigma: float | tuple[float, ...], *, mode: Literal["nearest", "reflect"]
) -> np.ndarray:
    """A Gaussian blur, axis after axis: ``scipy.ndimage.gaussian_filter(image, sigma,
    mode=mode)``.

    Parameters
    ----------
    image : ndarray, float
    sigma : float or one per axis
        0 (below 1e-15) leaves an axis unfiltered (a batch or channel axis).
    mode : "nearest" or "reflect"
        Beyond the edge: the edge pixel repeated, or the image mirrored about its edge
        (``d c b a | a b c d | d c b a``).

    Returns
    -------
    ndarray, the shape and dtype of ``image``

    Examples
    --------
    >>> out = gaussian_filter(np.ones((5, 5)), 1.0, mode="nearest")  # the weights sum to 1
    >>> out.shape, bool(np.allclose(out, 1.0))
    ((5, 5), True)
    """
    if mode not in _PAD:
        raise ValueError(f"mode must be 'nearest' or 'reflect', got {mode!r}")
    out = np.asarray(image)
    for axis, s in enumerate(np.broadcast_to(np.asarray(sigma, dtype=float), (out.ndim,))):
        if s > 1e-15:
            out = _filter_axis(out, gaussian_kernel(s), axis, _PAD[mode])
    return out if out is not image else out.copy()


def _filter_axis(image: np.ndarray, w: np.ndarray, axis: int, pad_mode: str) -> np.ndarray:
    r, n = len(w) // 2, image.shape[axis]
    widths = [(0, 0)] * image.ndim
    widths[axis] = (r, r)
    padded = np.pad(image, widths, mode=pad_mode)  # (..., n + 2r, ...) along axis

    def taps(start: int) -> np.ndarray:  # padded[..., start : start + n, ...] along axis
        index = [slice(None)] * image.ndim
        index[axis] = slice(start, start + n)
        return padded[tuple(index)]

    out = taps(r) * w[r]  # the centre tap, then the pairs from the outside in
    for j in range(r, 0, -1):
        out += (taps(r - j) + taps(r + j)) * w[r + j]
    return out


def bilinear(
    images: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    *,
    source: np.ndarray | None = None,
    mode: Literal["zeros", "nearest"] = "zeros",
) -> np.ndarray:
    """Images at fractional pixels: ``map_coordinates(order=1)``, zero (``"grid-constant"``) or
    edge (``"nearest"``) beyond the border.

    Parameters
    ----------
    images : ndarray (H, W) or (n_img, H, W)
    row, col : ndarray (n, q)
        Where to sample, in pixels (row 0 col 0 the first pixel's centre).
    source : ndarray (n,) of int, or None
        Which image each row of ``row``/``col`` reads (a stack of images only).
    mode : "zeros" or "nearest"

    Returns
    -------
    ndarray (n, q)
    """
    stack = images if images.ndim == 3 else images[None]  # (n_img, H, W)
    _, H, W = stack.shape
    padded = np.pad(
        stack, [(0, 0), (1, 1), (1, 1)], mode="edge" if mode == "nearest" else "constant"
    )
    r0, c0 = np.floor(row), np.floor(col)
    with np.errstate(invalid="ignore"):  # an infinite coordinate: inf - inf, a NaN sample
        wr1, wc1 = row - r0, col - c0  # [1 - t, t] per axis
    wr0, wc0 = 1.0 - wr1, 1.0 - wc1
    # padded indices, clamped onto the one-pixel border (beyond it the border's value holds);
    # NaN coordinates read the border too, and their NaN weights make the sample NaN
    r0, c0 = (np.nan_to_num(v, nan=-2.0) for v in (r0, c0))
    r0, r1 = (np.clip(r0 + k, 0, H + 1).astype(np.intp) for k in (1, 2))
    c0, c1 = (np.clip(c0 + k, 0, W + 1).astype(np.intp) for k in (1, 2))
    flat = padded.reshape(-1)
    base = 0 if source is None else (np.asarray(source) * ((H + 2) * (W + 2)))[:, None]  # (n, 1)
    rows0, rows1 = base + r0 * (W + 2), base + r1 * (W + 2)
    out = flat[rows0 + c0] * wr0 * wc0
    out += flat[rows0 + c1] * wr0 * wc1
    out += flat[rows1 + c0] * wr1 * wc0
    out += flat[rows1 + c1] * wr1 * wc1
    return out
