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

from functools import lru_cache

import numpy as np

from lkstn.filters import gaussian_kernel

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

    Separable, axis after axis. Along one axis the blur (edge pixels repeated beyond the
    border) followed by linear interpolation onto the half frame's canonical coordinates is one
    linear map of ``n`` samples to ``m``, a band of ``2 * (2 r + 1)`` weights per output sample
    (:func:`_reduction`); it is applied in blocks of output rows, each a small dense matrix
    product over the input rows that block reads (one BLAS call per block rather than a NumPy
    pass per filter tap). The result is the 2-D blur followed by bilinear sampling,
    :func:`lkstn.sampling.warp_image` at the identity, to rounding.

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
    for axis in (batch_ndim, batch_ndim + 1):  # rows, then columns
        out = _reduce_axis(out, axis, _reduction(out.shape[axis]))
    return np.ascontiguousarray(out)


_BLOCK_ROWS = 16  # output samples per dense block of a reduction


@lru_cache(maxsize=64)
def _reduction(n: int) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """The blur-then-interpolate map of ``n`` samples onto ``m = (n - 1) // 2 + 1`` as blocks
    ``(i0, i1, j0, j1, D)``: output samples ``[i0, i1)`` are ``D @ input[j0:j1]``.

    Output ``i`` sits at input position ``c_i = i (n - 1) / (m - 1)`` (the same canonical
    interval; end samples kept exactly) and interpolates the blurred samples ``floor(c_i)``
    and ``floor(c_i) + 1`` (weights ``1 - t``, ``t``); blurred sample ``k`` is
    ``sum_j g_j input[clip(k + j, 0, n - 1)]`` with ``g`` the Gaussian of ``_SIGMA``."""
    m = (n - 1) // 2 + 1
    g = gaussian_kernel(_SIGMA)
    r = len(g) // 2
    c = (np.linspace(-1.0, 1.0, m) + 1.0) * ((n - 1) / 2.0)  # (m,) positions in input pixels
    r0 = np.floor(c)
    t = c - r0
    r0 = r0.astype(np.intp)
    r1 = np.minimum(r0 + 1, n - 1)  # at the last sample t = 0
    taps = np.arange(-r, r + 1)
    cols = np.clip(np.concatenate([r0[:, None] + taps, r1[:, None] + taps], 1), 0, n - 1)
    weights = np.concatenate([(1.0 - t)[:, None] * g, t[:, None] * g], 1)  # (m, 2 (2r + 1))
    blocks = []
    for i0 in range(0, m, _BLOCK_ROWS):
        i1 = min(i0 + _BLOCK_ROWS, m)
        j0, j1 = int(cols[i0:i1].min()), int(cols[i0:i1].max()) + 1
        D = np.zeros((i1 - i0, j1 - j0))
        rows = np.repeat(np.arange(i1 - i0), cols.shape[1])
        np.add.at(D, (rows, (cols[i0:i1] - j0).ravel()), weights[i0:i1].ravel())
        D.flags.writeable = False
        blocks.append((i0, i1, j0, j1, D))
    return tuple(blocks)


def _reduce_axis(a: np.ndarray, axis: int, blocks: tuple) -> np.ndarray:
    """``blocks`` (:func:`_reduction`) applied along ``axis`` of ``a``: ``D @ rows`` with the
    axis first, or ``rows @ D.T`` where it is the last of size above 1 (no transposed copy)."""
    n, m = a.shape[axis], blocks[-1][1]
    shape = list(a.shape)
    shape[axis] = m
    if a.flags.c_contiguous and np.prod(a.shape[axis + 1 :]) == 1:
        flat = a.reshape(-1, n)
        out = np.empty((flat.shape[0], m))
        for i0, i1, j0, j1, D in blocks:
            out[:, i0:i1] = flat[:, j0:j1] @ D.T
        return out.reshape(shape)
    front = np.moveaxis(a, axis, 0)
    flat = front.reshape(n, -1)  # a view when ``axis`` leads (after size-1 batch axes)
    out = np.empty((m, flat.shape[1]))
    for i0, i1, j0, j1, D in blocks:
        np.matmul(D, flat[j0:j1], out=out[i0:i1])
    return np.moveaxis(out.reshape(m, *front.shape[1:]), 0, axis)


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
