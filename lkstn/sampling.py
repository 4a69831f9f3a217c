"""Warping images (``I(p)`` of [LL17] eq. (1)) and image gradients, for NumPy and torch.

Sampling is bilinear with zero padding: a sample between an edge pixel and the outside is
interpolated with zeros, exactly as ``grid_sample(mode="bilinear", padding_mode="zeros",
align_corners=True)`` and SciPy's ``map_coordinates(order=1, mode="grid-constant")`` do (SciPy's
plain ``"constant"`` differs in that one-pixel fringe). ``mode="border"`` repeats edge pixels
(``padding_mode="border"`` / ``mode="nearest"``).

Image layouts
-------------
NumPy: ``(..., H, W)`` grey or ``(..., H, W, C)`` with ``channel_axis=-1`` (scikit-image style);
leading dimensions are a batch that broadcasts against the leading dimensions of ``p``.
torch: ``(B, C, H, W)``; ``p`` is ``(B, P)`` or ``(P,)``.

Glossary: ``xy`` canonical points, ``grid`` the template's pixel centres in canonical units,
``gx, gy`` derivatives of intensity per canonical unit.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

from lkstn._backend import Array, ArrayLike, asarray, is_torch
from lkstn.warps import Warp

__all__ = [
    "canonical_grid",
    "canonical_to_pixel",
    "image_gradients",
    "pixel_to_canonical",
    "warp_image",
]

Mode = Literal["zeros", "border"]


def canonical_grid(shape: tuple[int, int], like: Array | None = None) -> Array:
    """Pixel centres of an ``(h, w)`` frame in canonical units, ``(h * w, 2)``, row-major.

    Examples
    --------
    >>> from lkstn.sampling import canonical_grid
    >>> canonical_grid((2, 3))  # corner pixel centres at -1 and +1, x varying fastest
    array([[-1., -1.],
           [ 0., -1.],
           [ 1., -1.],
           [-1.,  1.],
           [ 0.,  1.],
           [ 1.,  1.]])
    """
    h, w = shape
    ys, xs = np.meshgrid(np.linspace(-1.0, 1.0, h), np.linspace(-1.0, 1.0, w), indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel()], -1)  # (h*w, 2)
    return grid if like is None else asarray(grid, like=like)


def pixel_to_canonical(xy_pix: ArrayLike, shape: tuple[int, int]) -> Array:
    """``x = 2 x_pix / (W - 1) - 1`` for ``(..., 2)`` points in an ``(H, W)`` image.

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn.sampling import canonical_to_pixel, pixel_to_canonical
    >>> pixel_to_canonical(np.array([[0.0, 0.0], [99.0, 49.0]]), (50, 100))  # (H, W) = (50, 100)
    array([[-1., -1.],
           [ 1.,  1.]])
    >>> xy = np.array([[0.3, -0.7]])
    >>> bool(np.allclose(pixel_to_canonical(canonical_to_pixel(xy, (50, 100)), (50, 100)), xy))
    True
    """
    h, w = shape
    scale = asarray([(w - 1) / 2.0, (h - 1) / 2.0], like=asarray(xy_pix))
    return asarray(xy_pix) / scale - 1.0


def canonical_to_pixel(xy: ArrayLike, shape: tuple[int, int]) -> Array:
    """``x_pix = (x + 1) (W - 1) / 2`` for ``(..., 2)`` points in an ``(H, W)`` image.

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn.sampling import canonical_to_pixel
    >>> canonical_to_pixel(np.array([[0.0, 0.0]]), (5, 9))  # the centre of a 5x9 image
    array([[4., 2.]])
    """
    h, w = shape
    scale = asarray([(w - 1) / 2.0, (h - 1) / 2.0], like=asarray(xy))
    return (asarray(xy) + 1.0) * scale


def warp_image(
    image: ArrayLike,
    warp: Warp,
    p: ArrayLike,
    out_shape: tuple[int, int],
    *,
    channel_axis: int | None = None,
    mode: Mode = "zeros",
) -> Array:
    """Sample ``image`` at ``W(x; p)`` over an ``out_shape`` template frame: ``I(p)``.

    Parameters
    ----------
    image : ndarray (..., H, W[, C]) or Tensor (B, C, H, W)
    warp : Warp
    p : array (..., P)
        NumPy: leading dims broadcast with the image's batch dims (one image with many ``p``,
        or a batch of images with one ``p`` each). torch: ``(B, P)`` or ``(P,)``.
    out_shape : (h, w)
    channel_axis : None or -1
        NumPy only: ``-1`` when the last axis holds channels.
    mode : "zeros" or "border"

    Returns
    -------
    ndarray (..., h, w[, C]) or Tensor (B, C, h, w)

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn import Affine
    >>> from lkstn.sampling import warp_image
    >>> img = np.arange(12.0).reshape(3, 4)
    >>> bool(np.array_equal(warp_image(img, Affine(), np.zeros(6), (3, 4)), img))
    True
    """
    if mode not in ("zeros", "border"):
        raise ValueError(f"mode must be 'zeros' or 'border', got {mode!r}")
    if not (len(out_shape) == 2 and all(int(s) >= 1 for s in out_shape)):
        raise ValueError(f"out_shape must be (h, w) with h, w >= 1, got {out_shape!r}")
    out_shape = (int(out_shape[0]), int(out_shape[1]))
    if is_torch(image):
        return _warp_torch(image, warp, p, out_shape, mode)
    return _warp_numpy(image, warp, p, out_shape, channel_axis, mode)


def _warp_numpy(image, warp, p, out_shape, channel_axis, mode) -> np.ndarray:
    image = np.asarray(image)
    if channel_axis not in (None, -1):
        raise ValueError(f"channel_axis must be None or -1, got {channel_axis!r}")
    n_core = 2 if channel_axis is None else 3
    if image.ndim < n_core:
        raise ValueError(f"image must have at least {n_core} dims, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float64)
    p = warp.check_params(np.asarray(p, dtype=np.float64))
    img_batch = image.shape[: image.ndim - n_core]
    H, W = image.shape[len(img_batch) : len(img_batch) + 2]
    try:
        batch = np.broadcast_shapes(img_batch, p.shape[:-1])
    except ValueError:
        raise ValueError(
            f"image batch {img_batch} and p batch {p.shape[:-1]} do not broadcast"
        ) from None
    xy = warp.apply(p, canonical_grid(out_shape), check=False)  # (...p, h*w, 2)
    xy = np.broadcast_to(xy, (*batch, xy.shape[-2], 2)).reshape(-1, xy.shape[-2], 2)
    col = (xy[..., 0] + 1.0) * ((W - 1) / 2.0)  # (Bn, h*w)
    row = (xy[..., 1] + 1.0) * ((H - 1) / 2.0)
    if (H, W) == out_shape:  # the identity warp returns the image exactly
        ident = np.broadcast_to((p == 0).all(-1), batch).reshape(-1)  # (Bn,)
        if ident.any():
            rr, cc = np.divmod(np.arange(H * W), W)
            row[ident], col[ident] = rr, cc
    chans = image.reshape(-1, H, W, 1 if channel_axis is None else image.shape[-1])  # (n_img, ...)
    # source image of each output, without materialising one image copy per output
    src = np.broadcast_to(np.arange(chans.shape[0]).reshape(img_batch), batch).reshape(-1)  # (n,)
    scipy_mode = "grid-constant" if mode == "zeros" else "nearest"
    n, C = src.size, chans.shape[-1]
    out = np.empty((n, xy.shape[-2], C), dtype=image.dtype)
    if _single_source(image, img_batch, batch):
        for c in range(C):  # a loop over channels, never over alignments
            out[..., c] = ndimage.map_coordinates(
                chans[0, ..., c], (row, col), order=1, mode=scipy_mode, cval=0.0
            )
    else:
        # a zero image after each one: the zero-weight neighbour along the batch axis of the
        # 3-D interpolation is then finite, so a NaN/inf image cannot leak into the one before
        spaced = np.zeros((2 * chans.shape[0], *chans.shape[1:]), dtype=chans.dtype)
        spaced[::2] = chans
        idx = np.broadcast_to(2 * src[:, None], row.shape)
        for c in range(C):
            out[..., c] = ndimage.map_coordinates(
                spaced[..., c], (idx, row, col), order=1, mode=scipy_mode, cval=0.0
            )
    out = out.reshape(*batch, *out_shape, C)
    return out if channel_axis is not None else out[..., 0]


def _single_source(image, img_batch, batch) -> bool:
    return int(np.prod(img_batch, dtype=int)) == 1


def _warp_torch(image, warp, p, out_shape, mode):
    import torch.nn.functional as F

    if image.ndim != 4:
        raise ValueError(f"torch image must be (B, C, H, W), got {tuple(image.shape)}")
    p = asarray(p, like=image)
    if p.ndim == 1:
        p = p[None]
    if p.ndim != 2 or p.shape[-1] != warp.n_params:
        raise ValueError(f"p must be (B, {warp.n_params}) for {warp!r}, got {tuple(p.shape)}")
    B = max(image.shape[0], p.shape[0])
    if image.shape[0] not in (1, B) or p.shape[0] not in (1, B):
        raise ValueError(f"image batch {image.shape[0]} and p batch {p.shape[0]} differ")
    grid = warp.apply(p, canonical_grid(out_shape, like=p), check=False)  # (Bp, h*w, 2)
    grid = grid.reshape(p.shape[0], *out_shape, 2).expand(B, *out_shape, 2)
    image = image.expand(B, *image.shape[1:])
    padding = "zeros" if mode == "zeros" else "border"
    return F.grid_sample(image, grid, mode="bilinear", padding_mode=padding, align_corners=True)


def image_gradients(image: ArrayLike, *, channel_axis: int | None = None) -> tuple[Array, Array]:
    """Intensity derivatives per *canonical* unit, ``(dI/dx, dI/dy)``, same shape as ``image``.

    Central differences inside, one-sided at the border (``np.gradient``), then scaled by
    ``(W - 1) / 2`` and ``(H - 1) / 2`` so that they pair with ``Warp.jacobian`` ([BM04] eq. (9)).

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn.sampling import image_gradients
    >>> ramp = np.tile(np.arange(5.0), (3, 1))  # I = x_pix on a 3x5 image
    >>> gx, gy = image_gradients(ramp)
    >>> float(gx[1, 2]), float(gy[1, 2])  # 1 per pixel = (W - 1) / 2 per canonical unit
    (2.0, 0.0)
    """
    image = np.asarray(image, dtype=np.float64)
    off = 0 if channel_axis is None else 1
    if image.ndim < 2 + off:
        raise ValueError(f"image must have at least {2 + off} dims, got shape {image.shape}")
    ax_y, ax_x = image.ndim - 2 - off, image.ndim - 1 - off
    H, W = image.shape[ax_y], image.shape[ax_x]
    if H < 2 or W < 2:
        raise ValueError(f"image must be at least 2x2, got {H}x{W}")
    gy, gx = np.gradient(image, axis=(ax_y, ax_x))
    return gx * ((W - 1) / 2.0), gy * ((H - 1) / 2.0)
