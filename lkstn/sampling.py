"""Warping images (``I(p)`` of [LL17] eq. (1)) and image gradients, for NumPy and torch.

Sampling is bilinear with zero padding: a sample between an edge pixel and the outside is
interpolated with zeros, exactly as ``grid_sample(mode="bilinear", padding_mode="zeros",
align_corners=True)`` and SciPy's ``map_coordinates(order=1, mode="grid-constant")`` do (NumPy
runs :func:`lkstn.filters.bilinear`, SciPy's arithmetic; SciPy's
plain ``"constant"`` differs in that one-pixel fringe). ``mode="border"`` repeats edge pixels
(``padding_mode="border"`` / ``mode="nearest"``).

Image layouts
-------------
NumPy: ``(..., H, W)`` grey or ``(..., H, W, C)`` with ``channel_axis=-1`` (scikit-image style);
leading dimensions are a batch that broadcasts against the leading dimensions of ``p``.
torch: ``(B, C, H, W)``; ``p`` is ``(B, P)`` or ``(P,)``.

Sampling grids
--------------
Every sampler of lkstn (:func:`warp_image`; the Gauss-Newton aligners' float64
``lkstn.classical._sampler.Sampler`` and float32
:class:`lkstn.classical.torch_sampler.SingleSampler`; the learned aligners'
:class:`lkstn.learned.torch_warp.WarpSampler`) computes where to sample with
:func:`warped_grid`: a matrix batch ``M (..., 3, 3)`` applied to the homogeneous
canonical grid of the template, :func:`homogeneous_grid`. A sampler that works in pixels folds
its change of frame into ``M`` (``pixel_from_canonical @ M(p)``).

Glossary: ``xy`` canonical points, ``grid`` the template's pixel centres in canonical units,
``grid_h`` the same with a row of ones, ``(3, h*w)``, ``M`` a warp matrix ``(..., 3, 3)``,
``gx, gy`` derivatives of intensity per canonical unit.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from lkstn._backend import Array, ArrayLike, asarray, is_torch, namespace
from lkstn.filters import bilinear
from lkstn.warps import Warp, warp_from_name

__all__ = [
    "canonical_grid",
    "canonical_to_pixel",
    "homogeneous_grid",
    "image_gradients",
    "pixel_to_canonical",
    "warp_image",
    "warped_grid",
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


def homogeneous_grid(shape: tuple[int, int], like: Array | None = None) -> Array:
    """:func:`canonical_grid` with a row of ones, transposed: ``(3, h * w)``, contiguous.

    Examples
    --------
    >>> from lkstn.sampling import homogeneous_grid
    >>> homogeneous_grid((2, 2))
    array([[-1.,  1., -1.,  1.],
           [-1., -1.,  1.,  1.],
           [ 1.,  1.,  1.,  1.]])
    """
    grid = canonical_grid(shape)  # (h*w, 2)
    grid_h = np.ascontiguousarray(np.concatenate([grid, np.ones((len(grid), 1))], 1).T)
    return grid_h if like is None else asarray(grid_h, like=like)


def warped_grid(
    M: Array,
    grid_h: Array,
    *,
    projective: bool,
    shape: tuple[int, int] | None = None,
    out: Array | None = None,
) -> Array:
    """``W(x; p)`` at the points ``grid_h``: the sampling coordinates of every lkstn sampler.

    Coordinate ``r`` of point ``n`` is ``(M grid_h)[r, n]``, divided by ``(M grid_h)[2, n]``
    when ``projective``: the frame of the result is the one ``M`` maps into (canonical for a
    warp matrix ``M(p)``, pixels for ``pixel_from_canonical @ M(p)``). NumPy or torch, any
    leading batch shape, differentiable in ``M`` (torch, without ``out``).

    Parameters
    ----------
    M : array (..., 3, 3)
    grid_h : array (3, N)
        Homogeneous points ``(x, y, 1)``: :func:`homogeneous_grid` of the template, or a block
        of its columns.
    projective : bool
        Divide by the third coordinate (a homography); the affine families skip that row.
    shape : (h, w), optional
        The separable form: ``grid_h`` is then the whole :func:`homogeneous_grid` of an
        ``(h, w)`` frame, so coordinate ``r`` of pixel ``(i, j)`` is
        ``M[r, 0] u_j + (M[r, 1] v_i + M[r, 2])`` (``u``, ``v`` the canonical column and row
        positions): small products and one broadcast sum instead of a product with an inner
        dimension of 3. The same values up to rounding.
    out : array (2, ..., N), optional
        Where to write the result, plane by plane (any strides, as long as each plane
        reshapes to ``(-1, N)``, or ``(..., h, w)`` in the separable form, as a view; no
        autograd). Its dtype may be lower than ``M``'s: in the separable form the column and
        row terms are formed in ``M``'s precision and rounded to ``out``'s before the sum, the
        one pass over every point (the float32 sampler's grid).

    Returns
    -------
    array (2, ..., N)
        The ``x`` and ``y`` planes of the coordinates, each contiguous without ``out``
        (``out`` when given); ``xy.permute(1, 2, 0)`` (torch, one batch dimension) is the
        points-last layout of ``grid_sample``.

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn.sampling import homogeneous_grid, warped_grid
    >>> M = np.array([[1.0, 0, 0.5], [0, 1, 0], [0, 0, 1]])  # half the frame to the right
    >>> warped_grid(M, homogeneous_grid((2, 2)), projective=False)
    array([[-0.5,  1.5, -0.5,  1.5],
           [-1. , -1. ,  1. ,  1. ]])
    """
    xp = namespace(M, grid_h)
    # (3, ..., 3): row r of every matrix (swapaxes for the samplers' one batch axis: cheaper)
    rows = M.swapaxes(0, 1) if M.ndim == 3 else xp.moveaxis(M, -2, 0)
    if out is None:
        k = 3 if projective else 2  # rows of M used
        xyz = _times_grid(xp, rows[:k], grid_h, shape)  # (k, ..., N)
        if not projective:
            return xyz
        out = None if is_torch(xyz) else xyz[:2]  # a fresh array: divide in place
        return xp.divide(xyz[:2], xyz[2:], out=out)  # (2, ..., N)
    # into out plane by plane: each pass then runs along a row of points, whatever out's strides
    if not projective:
        for r in range(2):
            _times_grid(xp, rows[r], grid_h, shape, out=out[r])  # (..., N)
        return out
    z = _times_grid(xp, rows[2], grid_h, shape, like=out)  # (..., N)
    for r in range(2):
        xp.divide(_times_grid(xp, rows[r], grid_h, shape, like=out), z, out=out[r])
    return out


def _times_grid(xp, rows, grid_h, shape, *, out=None, like=None):
    """``rows @ grid_h``, ``(..., 3) @ (3, N) -> (..., N)``, into ``out`` or in
    ``like``'s dtype when given: the product form, or the separable one when ``shape`` is."""
    batch_shape = tuple(rows.shape[:-1])
    like = out if out is not None else like
    if shape is None:  # one (prod(batch_shape), 3) @ (3, N) matrix product
        if like is not None and rows.dtype != like.dtype:
            rows, grid_h = asarray(rows, like=like), asarray(grid_h, like=like)
        target = None if out is None else _view(out, (-1, grid_h.shape[-1]))
        xyz = xp.matmul(rows.reshape(-1, 3), grid_h, out=target)  # (prod(batch_shape), N)
        return xyz.reshape(*batch_shape, grid_h.shape[-1])
    h, w = shape
    u, v = grid_h[0, :w], grid_h[1, ::w]  # canonical x of the columns, y of the rows
    cols = rows[..., 0, None] * u  # (..., w)
    lines = rows[..., 1, None] * v + rows[..., 2, None]  # (..., h)
    if like is not None and cols.dtype != like.dtype:  # the sum (the one pass over every
        cols, lines = asarray(cols, like=like), asarray(lines, like=like)  # point) in like's
    target = None if out is None else _view(out, (*batch_shape, h, w))
    xyz = xp.add(cols[..., None, :], lines[..., :, None], out=target)  # (..., h, w)
    return xyz.reshape(*batch_shape, h * w)


def _view(a: Array, shape: tuple[int, ...]) -> Array:
    """``a`` reshaped without a copy (what is written into the result must reach ``a``)."""
    if is_torch(a):
        return a.view(shape)
    view = a.reshape(shape)
    if not np.may_share_memory(view, a):
        raise ValueError(f"out must reshape to {shape} as a view, got strides {a.strides}")
    return view


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
    warp: Warp | str,
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
    warp : Warp or str
        A warp family, or its name (``"affine"``, ...).
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
    warp = warp_from_name(warp)
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
    M = warp.matrix(p, check=False)  # (...p, 3, 3)
    x, y = warped_grid(M, homogeneous_grid(out_shape), projective=warp.projective)  # (...p, h*w)
    x, y = (np.broadcast_to(c, (*batch, c.shape[-1])).reshape(-1, c.shape[-1]) for c in (x, y))
    col = (x + 1.0) * ((W - 1) / 2.0)  # (Bn, h*w)
    row = (y + 1.0) * ((H - 1) / 2.0)
    if (H, W) == out_shape:  # the identity warp returns the image exactly
        ident = np.broadcast_to((p == 0).all(-1), batch).reshape(-1)  # (Bn,)
        if ident.any():
            rr, cc = np.divmod(np.arange(H * W), W)
            row[ident], col[ident] = rr, cc
    chans = image.reshape(-1, H, W, 1 if channel_axis is None else image.shape[-1])  # (n_img, ...)
    # source image of each output, without materialising one image copy per output
    src = np.broadcast_to(np.arange(chans.shape[0]).reshape(img_batch), batch).reshape(-1)  # (n,)
    n, C = src.size, chans.shape[-1]
    out = np.empty((n, col.shape[-1], C), dtype=image.dtype)
    single = _single_source(image, img_batch, batch)
    for c in range(C):  # a loop over channels, never over alignments
        out[..., c] = bilinear(
            chans[0, ..., c] if single else chans[..., c],
            row,
            col,
            source=None if single else src,
            mode="zeros" if mode == "zeros" else "nearest",
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
    M = warp.matrix(p, check=False)  # (Bp, 3, 3)
    xy = warped_grid(M, homogeneous_grid(out_shape, like=p), projective=warp.projective)
    grid = xy.permute(1, 2, 0).reshape(p.shape[0], *out_shape, 2).expand(B, *out_shape, 2)
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
