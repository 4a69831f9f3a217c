"""Argument checks shared by the Gauss-Newton aligners: one-line ``ValueError`` naming the
argument."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["check_int", "check_score", "check_template"]


def check_int(value: object, name: str, minimum: int) -> int:
    """``value`` as an int, or ValueError naming ``name`` unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


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
