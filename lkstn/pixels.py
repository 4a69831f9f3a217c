"""Warps in pixels: the 3x3 matrix from template pixels to image pixels, and back.

lkstn's aligners estimate ``p`` in the canonical frame (:mod:`lkstn.warps`), where the corner
pixels of the template and of the image both sit at ``±1``. A user, OpenCV and other tools
speak of the *pixel matrix* ``image_px_from_template_px`` instead: template pixel ``x``
(homogeneous, ``(x, y, 1)``, origin at the centre of the top-left pixel) samples image pixel
``H x``. This is OpenCV's ``warpMatrix`` convention for
``cv2.findTransformECC(template, image, ...)``:
``cv2.warpPerspective(image, H, (w, h), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP)``
reproduces the template. With ``F_t = pixel_from_canonical(template_shape)`` and ``F_i`` the
same for the image,

``H = F_i M(p) F_t^-1``    (1)

A translation or a similarity *in pixels* is one in canonical units only when both frames
share their pixel scale (same shape); :func:`lkstn.register.align_pixels` handles the others.

Glossary: ``H`` pixel matrix ``(..., 3, 3)``, ``M`` canonical matrix, ``F`` pixel from
canonical, ``box`` ``(x0, y0, x1, y1)``: the image pixels of the template's top-left and
bottom-right pixel centres.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lkstn.warps import Warp, warp_from_name

__all__ = [
    "box_matrix",
    "params_from_pixel_matrix",
    "pixel_from_canonical",
    "pixel_matrix",
    "project_pixel_matrix",
    "read_pixel_matrix",
    "warp_image_pixels",
]


def pixel_from_canonical(shape: tuple[int, int]) -> np.ndarray:
    """3x3 matrix from canonical to pixel coordinates of an ``(H, W)`` frame.

    ``x_pix = (x + 1) (W - 1) / 2`` (:mod:`lkstn.warps`).
    """
    h, w = shape
    sx, sy = (w - 1) / 2.0, (h - 1) / 2.0
    return np.array([[sx, 0.0, sx], [0.0, sy, sy], [0.0, 0.0, 1.0]])


def pixel_matrix(
    warp: Warp | str,
    p: npt.ArrayLike,
    template_shape: tuple[int, int],
    image_shape: tuple[int, int],
) -> np.ndarray:
    """``(..., 3, 3)`` image-pixel-from-template-pixel matrix of the canonical warp ``p``, eq. (1).

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn import Affine
    >>> H = pixel_matrix(Affine(), np.zeros(6), (11, 11), (21, 21))  # identity: a 2x zoom
    >>> H.round(6).tolist()
    [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]
    """
    M = np.asarray(warp_from_name(warp).matrix(np.asarray(p, dtype=np.float64)))  # (..., 3, 3)
    canonical_from_pixel = np.linalg.inv(pixel_from_canonical(template_shape))
    H = pixel_from_canonical(image_shape[:2]) @ M @ canonical_from_pixel  # eq. (1)
    return H / H[..., 2:3, 2:3]


def params_from_pixel_matrix(
    warp: Warp | str,
    H: npt.ArrayLike,
    template_shape: tuple[int, int],
    image_shape: tuple[int, int],
) -> np.ndarray:
    """Inverse of :func:`pixel_matrix`: canonical ``p`` ``(..., P)`` of a pixel matrix.

    ``H`` is ``(..., 3, 3)`` or an affine ``(..., 2, 3)`` (completed with ``[0, 0, 1]``).
    A matrix outside the family (e.g. a homography given to ``Affine()``) is projected by
    :meth:`Warp.params`.

    Examples
    --------
    >>> # an 11 px template 3 px right of the centre of a 21 px image, at twice its size:
    >>> # canonical units are half the image side, so 3 px is 0.3
    >>> p = params_from_pixel_matrix("affine", [[2, 0, 3], [0, 2, 0]], (11, 11), (21, 21))
    >>> (p.round(6) + 0.0).tolist()  # + 0.0: no -0.0
    [0.0, 0.0, 0.3, 0.0, 0.0, 0.0]
    """
    H = _as_3x3(H, "H")
    image_from_pixel = np.linalg.inv(pixel_from_canonical(image_shape[:2]))
    M = image_from_pixel @ H @ pixel_from_canonical(template_shape)  # eq. (1) solved for M
    return np.asarray(warp_from_name(warp).params(M))


def box_matrix(warp: Warp | str, box: npt.ArrayLike, template_shape: tuple[int, int]) -> np.ndarray:
    """The pixel matrix of ``warp``'s family closest to mapping the template onto ``box``.

    The template's corner pixels go to the box corners, fitted in pixels (exact for affine
    and homography, least squares for a translation or a similarity: a translation keeps the
    template's size and centres it on the box, a similarity the best square).

    Raises
    ------
    ValueError
        For a box that is not 4 finite numbers with ``x1 > x0`` and ``y1 > y0``.

    Examples
    --------
    >>> (box_matrix("homography", [10, 20, 50, 60], (41, 41)).round(6) + 0.0).tolist()  # 1:1
    [[1.0, 0.0, 10.0], [0.0, 1.0, 20.0], [0.0, 0.0, 1.0]]
    >>> (box_matrix("translation", [10, 20, 50, 60], (21, 21)).round(6) + 0.0).tolist()
    [[1.0, 0.0, 20.0], [0.0, 1.0, 30.0], [0.0, 0.0, 1.0]]
    """
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        raise ValueError(f"box: expected 4 finite numbers (x0, y0, x1, y1), got {box.tolist()}")
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box: need x1 > x0 and y1 > y0, got {box.tolist()}")
    dst = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    return _fit_pixels(warp_from_name(warp), _corners_px(template_shape), dst)


def project_pixel_matrix(
    warp: Warp | str, H: npt.ArrayLike, template_shape: tuple[int, int]
) -> np.ndarray:
    """The pixel matrix of ``warp``'s family that moves the template's corners closest to ``H``.

    Identity for a matrix already in the family (e.g. an affine ``H`` and ``Affine()``).
    """
    H = _as_3x3(H, "H")
    src = _corners_px(template_shape)
    dst_h = np.concatenate([src, np.ones((4, 1))], 1) @ H.T  # (4, 3)
    return _fit_pixels(warp_from_name(warp), src, dst_h[:, :2] / dst_h[:, 2:])


def read_pixel_matrix(path: str | Path, *, name: str = "init") -> np.ndarray:
    """A 3x3 pixel matrix from a file: JSON with ``"pixel_matrix"`` (e.g. a ``params.json``
    written by ``lkstn align``) or whitespace-separated text of 2x3 or 3x3 numbers.

    Raises
    ------
    ValueError
        One line naming ``name`` and the file.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}: cannot read {path} ({type(exc).__name__})") from None
    try:
        if text.lstrip().startswith("{"):
            record = json.loads(text)
            if "pixel_matrix" not in record:
                raise ValueError("no 'pixel_matrix' key")
            values = np.asarray(record["pixel_matrix"], dtype=np.float64)
        else:
            values = np.array([row.replace(",", " ").split() for row in text.strip().splitlines()
                               if row.strip() and not row.lstrip().startswith("#")],
                              dtype=np.float64)  # fmt: skip
        return _as_3x3(values, name)
    except ValueError as exc:
        raise ValueError(f"{name}: {path}: expected a 2x3 or 3x3 pixel matrix ({exc})") from None


def warp_image_pixels(
    image: npt.ArrayLike, H: npt.ArrayLike, out_shape: tuple[int, int]
) -> np.ndarray:
    """``image`` sampled at ``H x`` for every pixel ``x`` of an ``out_shape`` frame.

    Bilinear with zeros outside (:func:`lkstn.sampling.warp_image`); for a template-shaped
    ``out_shape`` this is the image registered onto the template, the same as
    ``cv2.warpPerspective(image, H, (w, h), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP)``
    away from the border.
    """
    from lkstn.sampling import warp_image
    from lkstn.warps import Homography

    image = np.asarray(image, dtype=np.float64)
    p = params_from_pixel_matrix(Homography(), H, out_shape, image.shape[:2])
    channel_axis = -1 if image.ndim == 3 else None
    return np.asarray(
        warp_image(image, Homography(), p, tuple(out_shape), channel_axis=channel_axis)
    )


def _as_3x3(H: npt.ArrayLike, name: str) -> np.ndarray:
    H = np.asarray(H, dtype=np.float64)
    if H.shape[-2:] == (2, 3):
        bottom = np.broadcast_to([0.0, 0.0, 1.0], (*H.shape[:-2], 1, 3))
        H = np.concatenate([H, bottom], -2)
    if H.shape[-2:] != (3, 3):
        raise ValueError(f"{name} must be (..., 2, 3) or (..., 3, 3), got shape {H.shape}")
    if not np.all(np.isfinite(H)) or np.any(np.abs(np.linalg.det(H)) < 1e-12):
        raise ValueError(f"{name} must be finite and invertible")
    return H


def _corners_px(template_shape: tuple[int, int]) -> np.ndarray:
    h, w = template_shape[:2]
    return np.array([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]])


def _fit_pixels(warp: Warp, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    # The families are the same in pixels as in canonical units (each is closed under
    # conjugation by a shift and a uniform scale), so Warp.fit works on pixel points; the
    # centroid is taken out first so that the least squares do not weigh the origin.
    c_src, c_dst = src.mean(0), dst.mean(0)
    p = warp.fit(src - c_src, dst - c_dst)
    H = _shift(c_dst) @ np.asarray(warp.matrix(p)) @ _shift(-c_src)
    return H / H[2, 2]


def _shift(c: np.ndarray) -> np.ndarray:
    return np.array([[1.0, 0.0, c[0]], [0.0, 1.0, c[1]], [0.0, 0.0, 1.0]])
