"""Where the Gauss-Newton aligners look: template masks and the image region around the starts.

``check_mask`` and ``root_weights``: a template mask is a weight per template pixel (0 ignores
it); the aligners multiply every residual and steepest-descent row by ``sqrt(w)``, which makes
their least squares weighted, ``H = sd^T W sd`` and ``sd^T W e``.

``crop_around``: a pyramid of a whole photograph costs more than aligning a small template in
it, so for one image only the region the starts can reach is filtered and decimated.

``proper``: whether a warp maps the template's square one to one, in front of the camera.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lkstn.classical.pyramid import level_shape
from lkstn.warps import Warp

__all__ = ["change_frame", "check_mask", "crop_around", "proper", "root_weights"]


def check_mask(mask: npt.ArrayLike | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The mask as float64 weights ``(h, w)``, or None for no mask (or a mask of ones)."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype.kind not in "biuf" or m.shape != tuple(shape):
        raise ValueError(f"mask must be real weights of shape {shape}, got {m.shape}")
    m = m.astype(np.float64)
    if not (np.isfinite(m).all() and (m >= 0).all() and m.sum() > 0):
        raise ValueError("mask must hold finite weights >= 0, not all zero")
    return m


def root_weights(mask: np.ndarray | None) -> np.ndarray | None:
    """Square roots of the weights, ``(h*w, 1)``: rows of a weighted least-squares problem."""
    return None if mask is None else np.sqrt(np.maximum(mask, 0.0)).reshape(-1, 1)


def proper(warp: Warp, p: np.ndarray) -> np.ndarray:
    """Whether each warp of ``p`` ``(n, P)`` is a usable answer for the template, ``(n,)``.

    Proper: finite, ``w > 0`` at the four corners of the template's canonical square (``w``
    the third homogeneous coordinate; so ``w > 0`` on the whole square: no horizon crosses the
    template) and ``det M > 0`` (not mirrored); then the warp maps the square one to one with
    its orientation, as a camera sees a plane in front of it. A Gauss-Newton step to an improper
    warp is unusable: on a smooth 32 px patch, smoothed homography steps walked from starts
    half a pixel off to warps whose horizon cut the template, 450-1200 px away, scoring 0.95
    (``docs/registration.md``). Affine warps have ``w = 1``: only a mirror is improper.

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn.warps import Homography
    >>> p = np.zeros((3, 8))
    >>> p[1, 6] = 1.5  # w = 1 + 1.5 x: zero at x = -2/3, inside the square
    >>> p[2, 0] = -2.0  # x -> -x: a mirror
    >>> proper(Homography(), p).tolist()
    [True, False, False]
    """
    finite = np.isfinite(p).all(-1)
    M = warp.matrix(np.where(finite[:, None], p, 0.0), check=False)  # (n, 3, 3)
    w = M[:, 2, 2:] + M[:, 2, :2] @ warp.corners().T  # (n, 4) at TL, TR, BR, BL
    return finite & (w > 0).all(-1) & (np.linalg.det(M) > 0)


def crop_around(
    images: np.ndarray, warp: Warp, p: np.ndarray, pyramid: int, reach: float = 0.0
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(cropped images, to_crop)`` for a pyramid (or a smoothing) on one image, or None.

    Building the pyramid of a whole photograph costs more than aligning a small template in
    it; only the box around the starts' template corners, widened on every side by their
    half extent (and the pyramid's reach, and ``reach`` pixels more: a filter's), is used.
    ``to_crop`` ``(3, 3)`` maps the image's canonical frame onto the crop's:
    ``p_crop = to_crop o p``, which commutes with the compositional updates. Samples beyond the
    margin (an alignment that has travelled more than half the template's size) read zeros
    instead of the image. Affine and homography
    only (a translation cannot absorb the change of scale); None when cropping saves little.
    """
    if (pyramid == 1 and reach == 0) or warp.n_params < 6 or len(p) == 0:
        return None
    _, H, W, _ = images.shape
    corners = warp.matrix(p) @ np.array([[-1.0, 1, 1, -1], [-1, -1, 1, 1], [1, 1, 1, 1]])
    z = corners[:, 2]
    if not (np.isfinite(corners).all() and (z > 0).all()):
        return None
    x = (corners[:, 0] / z + 1) * (W - 1) / 2  # image pixels
    y = (corners[:, 1] / z + 1) * (H - 1) / 2
    margin = 0.5 * max(np.ptp(x), np.ptp(y)) + 2**pyramid + reach
    x0, x1 = int(max(np.floor(x.min() - margin), 0)), int(min(np.ceil(x.max() + margin), W - 1))
    y0, y1 = int(max(np.floor(y.min() - margin), 0)), int(min(np.ceil(y.max() + margin), H - 1))
    Wc, Hc = x1 - x0 + 1, y1 - y0 + 1
    if Wc * Hc > 0.75 * H * W or min(level_shape((Hc, Wc), pyramid - 1)) < 2:
        return None
    to_crop = np.array(
        [[(W - 1) / (Wc - 1), 0, (W - 1 - 2 * x0) / (Wc - 1) - 1],
         [0, (H - 1) / (Hc - 1), (H - 1 - 2 * y0) / (Hc - 1) - 1],
         [0, 0, 1]]
    )  # fmt: skip
    return images[:, y0 : y1 + 1, x0 : x1 + 1], to_crop


def change_frame(A: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Affine or homography parameters ``(..., P)`` of ``A @ M(p)`` for ``A`` ``(3, 3)`` with
    bottom row ``(0, 0, 1)`` (which keeps ``M[2, 2] == 1``): ``p`` is the row-major flattening
    of ``M(p) - I`` (``lkstn.warps``). No check of singularity: failure stays data."""
    P = p.shape[-1]
    flat = np.zeros((*p.shape[:-1], 9))
    flat[..., :P] = p
    M = flat.reshape(*p.shape[:-1], 3, 3) + np.eye(3)
    return ((A @ M) - np.eye(3)).reshape(*p.shape[:-1], 9)[..., :P]
