"""Coarse-to-fine image pyramids that keep the canonical frame.

Every level of a pyramid covers exactly the same canonical square ``[-1, 1]^2`` as the
original: level ``l + 1`` is level ``l`` blurred with a small Gaussian (the anti-aliasing of
``skimage.transform.pyramid_reduce``, sigma ``2 * 2 / 6`` pixels) and then *sampled on the
canonical grid* of a frame of ``((H - 1) // 2 + 1, (W - 1) // 2 + 1)`` pixels. For odd sizes this is
plain decimation (every other pixel, corner pixels kept); for even sizes it interpolates. Warp
parameters live in canonical coordinates, so a ``p`` estimated at one level is used unchanged at
the next: no rescaling of translations is needed, which is the point of the convention.

(``skimage.transform.pyramid_reduce`` maps pixel *edges* onto pixel edges, which moves the
canonical corners by half a pixel per level; sampling on the canonical grid avoids that.)

Glossary: ``level`` an image of the pyramid, index 0 the original, ``n_levels`` the number of
levels including the original, ``batch_ndim`` leading batch dimensions of an image array.
"""

from __future__ import annotations

import numpy as np

from lkstn.filters import gaussian_filter

__all__ = ["MIN_SIZE", "downsample", "gaussian_pyramid", "level_shape"]

MIN_SIZE = 6
"""Smallest side (pixels) of the template at the coarsest level that the aligners accept."""

_SIGMA = 2.0 * 2.0 / 6.0  # pyramid_reduce's default anti-aliasing for a factor of 2


def level_shape(shape: tuple[int, int], level: int) -> tuple[int, int]:
    """``(h, w)`` of pyramid level ``level`` for a frame of ``shape`` (level 0 is ``shape``)."""
    h, w = int(shape[0]), int(shape[1])
    for _ in range(level):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return h, w


def downsample(
    image: np.ndarray, *, channel_axis: int | None = None, batch_ndim: int = 0
) -> np.ndarray:
    """One pyramid step: Gaussian blur, then sample on the canonical grid of the half frame.

    Separable, axis after axis: blur the rows' axis and interpolate it onto the half frame's
    canonical coordinates, then the same for the columns (the blur along one axis commutes with
    the interpolation along the other, so this is the 2-D blur followed by bilinear sampling,
    :func:`lkstn.sampling.warp_image` at the identity, to rounding; half the blurring work).

    Parameters
    ----------
    image : ndarray (..., H, W[, C])
    channel_axis : None or -1
    batch_ndim : int
        Number of leading batch dimensions (not blurred).

    Returns
    -------
    ndarray (..., (H - 1) // 2 + 1, (W - 1) // 2 + 1[, C])
    """
    out = np.asarray(image, dtype=np.float64)
    H, W = out.shape[batch_ndim : batch_ndim + 2]
    h, w = level_shape((H, W), 1)
    for axis, n, m in ((batch_ndim, H, h), (batch_ndim + 1, W, w)):  # rows, then columns
        sigma = [0.0] * out.ndim
        sigma[axis] = _SIGMA
        out = _onto_grid(gaussian_filter(out, sigma, mode="nearest"), axis, n, m)
    return out


def _onto_grid(a: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """``a`` linearly interpolated along ``axis`` from ``n`` samples onto the ``m`` pixel
    centres of the same canonical interval ``[-1, 1]`` (end samples kept exactly)."""
    c = (np.linspace(-1.0, 1.0, m) + 1.0) * ((n - 1) / 2.0)  # (m,) positions in a's pixels
    r0 = np.floor(c)
    t = (c - r0).reshape([m if k == axis else 1 for k in range(a.ndim)])
    r0 = r0.astype(np.intp)
    r1 = np.minimum(r0 + 1, n - 1)  # at the last sample t = 0
    return np.take(a, r0, axis=axis) * (1.0 - t) + np.take(a, r1, axis=axis) * t


def gaussian_pyramid(
    image: np.ndarray, n_levels: int, *, channel_axis: int | None = None, batch_ndim: int = 0
) -> list[np.ndarray]:
    """``[image, downsample(image), ...]``, ``n_levels`` arrays, finest first.

    Level 0 is a float64 copy of ``image`` (not blurred): alignment at the finest level uses
    raw pixels, and nothing the aligners do reaches the caller's array.
    """
    levels = [np.array(image, dtype=np.float64)]
    for _ in range(n_levels - 1):
        levels.append(downsample(levels[-1], channel_axis=channel_axis, batch_ndim=batch_ndim))
    return levels
