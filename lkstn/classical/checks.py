"""Argument checks shared by the Gauss-Newton aligners: one-line ``ValueError`` naming the
argument."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lkstn.classical.pyramid import level_shape
from lkstn.warps import Warp

__all__ = ["check_dtype", "check_int", "check_score", "check_template", "parse_images"]


def check_dtype(dtype: object) -> np.dtype:
    """``np.float64`` or ``np.float32`` as a ``np.dtype``, or ValueError naming ``dtype``."""
    try:  # (np.dtype(None) would be float64)
        value = np.dtype(dtype) if isinstance(dtype, str | type | np.dtype) else None
    except TypeError:
        value = None
    if value is None or value not in (np.float64, np.float32):
        raise ValueError(f"dtype must be float64 or float32, got {dtype!r}")
    return value


def check_int(value: object, name: str, minimum: int) -> int:
    """``value`` as an int, or ValueError naming ``name`` unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_sigma(value: object, name: str) -> float:
    """``value`` as a float, or ValueError naming ``name`` unless it is a finite number >= 0 (the
    standard deviation of a Gaussian, in pixels; 0: none)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < np.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_score(value: object, name: str) -> float:
    """``value`` as a float, or ValueError naming ``name`` unless it is a number in [-1, 1] (a
    threshold on ZNCC)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not -1 <= value <= 1:
        raise ValueError(f"{name} must be a number in [-1, 1], got {value!r}")
    return float(value)


def check_template(template: npt.ArrayLike, channel_axis: int | None) -> np.ndarray:
    """The template as float64 ``(h, w, C)``, or ValueError for a template that is not one."""
    T = np.asarray(template)
    if T.dtype.kind not in "biuf":
        raise ValueError(f"template must hold real numbers, got dtype {T.dtype}")
    core = 2 if channel_axis is None else 3
    if T.ndim != core:
        raise ValueError(
            f"template must be {'(h, w)' if core == 2 else '(h, w, C)'} for "
            f"channel_axis={channel_axis}, got shape {T.shape}"
        )
    if min(T.shape[:2]) < 2 or (core == 3 and T.shape[-1] < 1):
        raise ValueError(f"template must be at least 2x2 pixels, got shape {T.shape}")
    if not np.isfinite(T).all():
        raise ValueError("template has non-finite pixels (NaN or inf)")
    T = T.astype(np.float64)
    return T[..., None] if core == 2 else T


def parse_images(
    image: npt.ArrayLike, p_init: npt.ArrayLike, T: np.ndarray, channel_axis: int | None,
    pyramid: int, warp: Warp,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[int, ...]]:  # fmt: skip
    """What ``align`` was given, checked against the template ``T`` ``(h, w, C)``: images
    ``(B, H, W, C)``, starts ``(n, P)``, the image index of each start (None: one image) and
    the batch shape; a one-line ``ValueError`` naming the argument otherwise."""
    image = np.asarray(image)
    if image.dtype.kind not in "biuf":
        raise ValueError(f"image must hold real numbers, got dtype {image.dtype}")
    core = 2 if channel_axis is None else 3
    if image.ndim not in (core, core + 1):
        raise ValueError(
            f"image must have {core} dims (one image) or {core + 1} (a batch), matching the "
            f"template {T.shape[:core]}; got shape {image.shape}"
        )
    if channel_axis is None and image.ndim == 3 and image.shape[-1] in (3, 4):
        # one RGB(A) image, not a batch of grey images 3 or 4 pixels wide (nothing to align)
        raise ValueError(
            f"image of shape {image.shape} is one colour image but the template is grey: "
            f"expected (H, W) or a batch (B, H, W); convert it (skimage.color.rgb2gray) or "
            f"use a colour template with channel_axis=-1"
        )
    C = T.shape[-1]
    if channel_axis is not None and image.shape[-1] != C:
        raise ValueError(f"image has {image.shape[-1]} channels, the template {C}")
    batched = image.ndim == core + 1
    H, W = image.shape[int(batched) : int(batched) + 2]
    Hc, Wc = level_shape((H, W), pyramid - 1)
    if min(Hc, Wc) < 2:
        raise ValueError(f"image of {H}x{W} pixels is too small for pyramid={pyramid}")
    P = warp.n_params
    p = np.asarray(p_init, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] != P or not np.isfinite(p).all():
        raise ValueError(f"p_init must be finite with shape (..., {P}), got {p.shape}")
    images = image.reshape(-1, H, W, C)  # float64 where the pyramid copies it: the crop only
    if not batched:
        return images, p.reshape(-1, P).copy(), None, p.shape[:-1]
    B = image.shape[0]
    if p.shape not in ((P,), (B, P)):
        raise ValueError(f"p_init must be ({B}, {P}) or ({P},) for a batch of {B}, got {p.shape}")
    return images, np.broadcast_to(p, (B, P)).copy(), np.arange(B), (B,)
