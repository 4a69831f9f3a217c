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
from lkstn.sampling import warp_image
from lkstn.warps import Translation

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
    image = np.asarray(image, dtype=np.float64)
    n_chan = 0 if channel_axis is None else 1
    sigma = [0.0] * batch_ndim + [_SIGMA, _SIGMA] + [0.0] * n_chan
    blurred = gaussian_filter(image, sigma, mode="nearest")
    H, W = image.shape[batch_ndim : batch_ndim + 2]
    identity = np.zeros(2)  # translation by 0: sample the canonical grid of the smaller frame
    return warp_image(
        blurred, Translation(), identity, level_shape((H, W), 1), channel_axis=channel_axis
    )


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
