"""Input checks for SDM: images, training alignments, template masks and the memory of a fit.

Each check returns the validated array (float64, never the caller's object) or raises a one-line
``ValueError`` naming the argument and what it got.

Glossary: ``N`` images, ``M`` starts per image, ``P`` warp parameters, ``D`` feature length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from lkstn.warps import Warp

__all__ = [
    "FIT_BYTES",
    "check_align_input",
    "check_fit_input",
    "check_fit_memory",
    "check_image",
    "check_mask",
    "check_params",
    "check_photometric",
    "check_regressors",
    "check_settings",
]

FIT_BYTES = 1 << 30
"""Largest working memory (bytes) a fit may need: its features ``(N M, D)`` and its ridge."""


def check_image(image: npt.ArrayLike, name: str, channel_axis: int | None) -> np.ndarray:
    """An intensity image ``(..., H, W[, C])`` as float64; bool and non-numeric dtypes refused."""
    image = np.asarray(image)
    if image.dtype == bool or not np.issubdtype(image.dtype, np.number):
        raise ValueError(
            f"{name} must hold intensities (float or integer), got dtype {image.dtype}"
        )
    if np.issubdtype(image.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real, got dtype {image.dtype}")
    n_core = 2 if channel_axis is None else 3
    if image.ndim < n_core or min(image.shape[image.ndim - n_core :][:2]) < 2:
        layout = "(..., H, W)" if channel_axis is None else "(..., H, W, C)"
        raise ValueError(f"{name} must be {layout} with H, W >= 2, got shape {image.shape}")
    return image.astype(np.float64, copy=False)


def check_params(p: npt.ArrayLike, name: str, warp: Warp) -> np.ndarray:
    """Warp parameters ``(..., P)``, finite, float64; a bool array is refused (not a warp)."""
    p = np.asarray(p)
    if p.dtype == bool or not np.issubdtype(p.dtype, np.number):
        raise ValueError(f"{name} must be real numbers, got dtype {p.dtype}")
    if p.ndim < 1 or p.shape[-1] != warp.n_params:
        raise ValueError(
            f"{name} must have shape (..., {warp.n_params}) for {warp!r}, got {p.shape}"
        )
    if not np.isfinite(p).all():
        raise ValueError(f"{name} has non-finite entries (NaN or inf)")
    return p.astype(np.float64)


def check_mask(mask: npt.ArrayLike | None, template_shape: tuple[int, int]) -> np.ndarray | None:
    """Template weights ``(h, w)``, finite and >= 0, not all zero; ``None`` passes through."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.number)):
        raise ValueError(f"mask must be numbers or bools, got dtype {mask.dtype}")
    mask = mask.astype(np.float64)
    if mask.shape != tuple(template_shape):
        raise ValueError(f"mask must have the template shape {template_shape}, got {mask.shape}")
    if not np.isfinite(mask).all() or (mask < 0).any() or not (mask > 0).any():
        raise ValueError("mask must be finite weights >= 0 with at least one pixel > 0")
    mask.setflags(write=False)
    return mask


def check_align_input(
    image: npt.ArrayLike,
    p_init: npt.ArrayLike,
    n_iter: object,
    warp: Warp,
    *,
    channel_axis: int | None,
    channels: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``SDM.align``'s inputs: the image, the starts broadcast against its batch, ``n_iter``."""
    if isinstance(n_iter, bool) or not isinstance(n_iter, int | np.integer) or n_iter < 0:
        raise ValueError(f"n_iter must be an int >= 0, got {n_iter!r}")
    image = check_image(image, "image", channel_axis)
    if channel_axis is not None and image.shape[-1] != channels:
        raise ValueError(f"image must have {channels} channels, got shape {image.shape}")
    p = check_params(p_init, "p_init", warp)
    img_batch = image.shape[: image.ndim - (2 if channel_axis is None else 3)]
    try:
        p = np.broadcast_to(p, (*np.broadcast_shapes(img_batch, p.shape[:-1]), p.shape[-1]))
    except ValueError:
        raise ValueError(f"image batch {img_batch} and p_init {p.shape} do not broadcast") from None
    return image, p, int(n_iter)


def check_fit_memory(n: int, D: int, P: int, sample_bytes: int, limit: int = FIT_BYTES) -> None:
    """Refuse a fit whose features ``(n, D)`` and ridge would exceed ``limit`` bytes."""
    from lkstn.classical.ridge import ridge_bytes

    need = ridge_bytes(n, D, P) + 8 * n * D + sample_bytes  # features, their centred copy, ...
    if need > limit:
        raise ValueError(
            f"n_samples x features = {n} x {D} needs ~{need / 2**30:.1f} GiB to fit (limit "
            f"{limit / 2**30:.1f} GiB): use fewer samples, a larger pool or a smaller template"
        )


def check_fit_input(
    warp: Warp,
    channel_axis: int | None,
    images: npt.ArrayLike,
    p_true: npt.ArrayLike,
    p_init: npt.ArrayLike,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``images (N, H, W[, C])``, ``p_true (N, P)``, ``p_init (N, M, P)`` from either batch form."""
    P, n_core = warp.n_params, 2 if channel_axis is None else 3
    images = check_image(images, "images", channel_axis)
    if images.ndim not in (n_core, n_core + 1):
        raise ValueError(f"images must be (N, H, W[, C]) or one image, got {images.shape}")
    if not np.isfinite(images).all():
        raise ValueError("images has non-finite entries (NaN or inf)")
    p_true, p_init = np.asarray(p_true), np.asarray(p_init)
    single = images.ndim == n_core
    N = 1 if single else images.shape[0]
    want_t, want_i = ((P,), ("M", P)) if single else ((N, P), (N, "M", P))
    if p_true.shape != want_t:
        raise ValueError(f"p_true must be {want_t} for images {images.shape}, got {p_true.shape}")
    bad_i = p_init.ndim != len(want_i) or p_init.shape[-1] != P or p_init.shape[-2] < 1
    if bad_i or p_init.shape[:-2] != want_t[:-1]:
        raise ValueError(f"p_init must be {want_i} for images {images.shape}, got {p_init.shape}")
    p_true = check_params(p_true, "p_true", warp).reshape(N, P)
    p_init = check_params(p_init, "p_init", warp).reshape(N, -1, P)
    return images.reshape(N, *images.shape[-n_core:]), p_true, p_init


def check_regressors(
    regressors: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]], n_stages: int, P: int, D: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_stages`` pairs ``(R (P, D), b (P,))`` of finite float64 (copies)."""
    if len(regressors) != n_stages:
        raise ValueError(f"regressors: expected {n_stages} stages, got {len(regressors)}")
    pairs = [(np.array(R, dtype=np.float64), np.array(b, dtype=np.float64)) for R, b in regressors]
    for k, (R, b) in enumerate(pairs):
        if R.shape != (P, D) or b.shape != (P,):
            raise ValueError(
                f"regressors: stage {k + 1} must be R {(P, D)} and b {(P,)}, "
                f"got {R.shape} and {b.shape}"
            )
        if not (np.isfinite(R).all() and np.isfinite(b).all()):
            raise ValueError(f"regressors: stage {k + 1} has non-finite entries")
    return pairs


def check_settings(
    template_shape: tuple[int, int],
    n_stages: int,
    alpha: float,
    tol: float,
    channel_axis: int | None,
    pool: int,
    min_score: float,
) -> None:
    """The numeric settings of ``SDM(...)``, each named in its error."""
    shape_ok = isinstance(template_shape, tuple | list) and len(template_shape) == 2
    if not shape_ok or not all(isinstance(s, int | np.integer) and s >= 2 for s in template_shape):
        raise ValueError(f"template_shape must be (h, w) with h, w >= 2, got {template_shape!r}")
    if isinstance(n_stages, bool) or not isinstance(n_stages, int | np.integer) or n_stages < 1:
        raise ValueError(f"n_stages must be an int >= 1, got {n_stages!r}")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if not np.isfinite(tol) or tol <= 0:
        raise ValueError(f"tol must be a finite number > 0 (pixels), got {tol!r}")
    if channel_axis not in (None, -1):
        raise ValueError(f"channel_axis must be None or -1, got {channel_axis!r}")
    most = max(1, min(template_shape) // 2)  # at least 2 x 2 blocks
    if isinstance(pool, bool) or not isinstance(pool, int | np.integer) or not 1 <= pool <= most:
        raise ValueError(f"pool must be an int in [1, {most}], got {pool!r}")
    if not -1 <= min_score <= 1:  # NaN fails too
        raise ValueError(f"min_score must be in [-1, 1], got {min_score!r}")


def check_photometric(photometric: str | None, residual_px: float) -> None:
    """``photometric``: ``None``, ``"bias"`` or ``"gain-bias"``; ``residual_px`` > 0."""
    if photometric not in (None, "bias", "gain-bias"):
        raise ValueError(f"photometric must be None, 'bias' or 'gain-bias', got {photometric!r}")
    if not residual_px > 0:  # NaN fails too
        raise ValueError(f"residual_px must be a number > 0 (pixels), got {residual_px!r}")
