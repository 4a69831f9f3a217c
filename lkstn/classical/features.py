"""Feature functions ``phi`` for SDM: warped samples ``I(p)`` to vectors ([LL17] eq. (7)).

[LL17] Sec. 2: "the image appearance ``I`` is often replaced with a predefined feature extraction
function (e.g. SIFT or HOG)". Every feature function here has the signature

    ``phi(samples, *, channel_axis=None) -> ndarray (..., D)``

for ``samples`` of shape ``(..., h, w)`` (grey) or ``(..., h, w, C)`` (``channel_axis=-1``); the
leading dimensions are a batch and are kept. ``D`` depends only on ``(h, w[, C])``. A user callable
with the same signature can be passed to ``SDM(features=...)`` instead of a name.

Registry: ``"pixels"`` -> :func:`pixels`, ``"hog"`` -> :func:`hog` (see :func:`get_features`).

Glossary: ``samples`` warped template-frame images ``I(p)``, ``phi`` a feature function, ``D`` the
feature length, ``C`` channels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = [
    "FEATURES",
    "FeatureFn",
    "block_mean",
    "get_features",
    "hog",
    "normalised",
    "pixels",
]

FeatureFn = Callable[..., np.ndarray]

# HOG parameters for ~50x50 samples: 6x6 cells of 8x8 pixels (the last 2 rows/columns of a
# 50-pixel side fall outside a whole cell and are ignored by skimage), 5x5 overlapping blocks
# of 2x2 cells, 9 unsigned orientations: D = 5 * 5 * 2 * 2 * 9 = 900 for a 50x50 sample.
HOG_ORIENTATIONS = 9
HOG_PIXELS_PER_CELL = (8, 8)
HOG_CELLS_PER_BLOCK = (2, 2)


def _core_ndim(channel_axis: int | None) -> int:
    if channel_axis not in (None, -1):
        raise ValueError(f"channel_axis must be None or -1, got {channel_axis!r}")
    return 2 if channel_axis is None else 3


def pixels(samples: npt.ArrayLike, *, channel_axis: int | None = None) -> np.ndarray:
    """Raw intensities, ravelled: ``(..., h, w[, C]) -> (..., h * w [* C])``, float64.

    With ``pixels`` the SDM regressor acts on ``I(p).ravel()`` exactly as IC-LK's linear
    predictor does ([LL17] eq. (6)), so the two can be compared entry by entry.

    Examples
    --------
    >>> import numpy as np
    >>> pixels(np.zeros((7, 5, 4))).shape
    (7, 20)
    """
    samples = np.asarray(samples, dtype=np.float64)
    n_core = _core_ndim(channel_axis)
    if samples.ndim < n_core:
        raise ValueError(f"samples must have at least {n_core} dims, got shape {samples.shape}")
    batch = samples.shape[: samples.ndim - n_core]
    return samples.reshape(*batch, -1)  # (..., D)


def hog(
    samples: npt.ArrayLike,
    *,
    channel_axis: int | None = None,
    orientations: int = HOG_ORIENTATIONS,
    pixels_per_cell: tuple[int, int] = HOG_PIXELS_PER_CELL,
    cells_per_block: tuple[int, int] = HOG_CELLS_PER_BLOCK,
) -> np.ndarray:
    """Histograms of oriented gradients (``skimage.feature.hog``, ``L2-Hys`` block norm).

    Parameters
    ----------
    samples : ndarray (..., h, w[, C])
        Each sample must hold at least one block: ``h, w >= pixels_per_cell * cells_per_block``.
    channel_axis : None or -1
        For colour samples skimage keeps, per pixel, the channel with the largest gradient.
    orientations, pixels_per_cell, cells_per_block
        The defaults (9, (8, 8), (2, 2)) give ``D = 900`` for 50x50 samples.

    Returns
    -------
    ndarray (..., D), float64

    Notes
    -----
    ``skimage.feature.hog`` takes one image at a time, so this function loops over the flattened
    batch: the only Python loop over samples in the SDM code path, and so by far the slowest
    feature per sample (a cascade stage on thousands of training samples takes seconds, against
    milliseconds for :func:`pixels`; ``benchmarks/sdm_template.py`` times both).
    Non-finite samples give non-finite features (no warnings), so that SDM reports them as not
    converged.

    Examples
    --------
    >>> import numpy as np
    >>> hog(np.random.default_rng(0).random((3, 50, 50))).shape
    (3, 900)
    """
    from skimage.feature import hog as sk_hog

    samples = np.asarray(samples, dtype=np.float64)
    n_core = _core_ndim(channel_axis)
    if samples.ndim < n_core:
        raise ValueError(f"samples must have at least {n_core} dims, got shape {samples.shape}")
    batch = samples.shape[: samples.ndim - n_core]
    core = samples.shape[samples.ndim - n_core :]
    need = np.multiply(pixels_per_cell, cells_per_block)
    if core[0] < need[0] or core[1] < need[1]:
        raise ValueError(
            f"samples must be at least {tuple(int(s) for s in need)} pixels for HOG with "
            f"pixels_per_cell={pixels_per_cell}, cells_per_block={cells_per_block}, got {core[:2]}"
        )
    kwargs = dict(
        orientations=orientations,
        pixels_per_cell=pixels_per_cell,
        cells_per_block=cells_per_block,
        block_norm="L2-Hys",
        feature_vector=True,
        channel_axis=channel_axis,
    )
    flat = samples.reshape(-1, *core)  # (B, h, w[, C])
    if flat.shape[0] == 0:
        dim = sk_hog(np.zeros(core), **kwargs).shape[0]
        return np.zeros((*batch, dim))
    with np.errstate(all="ignore"):
        out = np.stack([sk_hog(s, **kwargs) for s in flat])  # (B, D): skimage has no batch API
    bad = ~np.isfinite(flat.reshape(flat.shape[0], -1)).all(-1)  # (B,)
    out[bad] = np.nan  # a NaN sample must not look like a valid (normalised) descriptor
    return out.reshape(*batch, -1)  # (..., D)


def block_mean(
    samples: npt.ArrayLike, k: int, *, channel_axis: int | None = None, reduce: str = "mean"
) -> np.ndarray:
    """Mean over ``k x k`` pixel blocks: ``(..., h, w[, C]) -> (..., h // k, w // k[, C])``.

    The anti-aliased low-resolution appearance that lets SDM regress from ``(h / k) (w / k)``
    features instead of ``h w``. The ``h % k`` rows (``w % k`` columns) that fill no whole block
    are dropped evenly from both sides, so the blocks stay centred on the frame: block ``(i, j)``
    covers rows ``r0 + k i ... r0 + k i + k - 1`` with ``r0 = (h % k) // 2`` (columns alike).
    ``reduce="min"`` takes the smallest value instead (a block mask: 0 if any pixel is 0).

    Examples
    --------
    >>> import numpy as np
    >>> block_mean(np.arange(16.0).reshape(4, 4), 2)
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """
    samples = np.asarray(samples, dtype=np.float64)
    n_core = _core_ndim(channel_axis)
    if samples.ndim < n_core:
        raise ValueError(f"samples must have at least {n_core} dims, got shape {samples.shape}")
    axis = samples.ndim - n_core  # the row axis
    h, w = samples.shape[axis : axis + 2]
    if not 1 <= k <= min(h, w):
        raise ValueError(f"pool must be between 1 and {min(h, w)} for samples {(h, w)}, got {k}")
    r0, c0 = (h % k) // 2, (w % k) // 2
    rows, cols = h // k, w // k
    inner = (
        samples[..., r0 : r0 + rows * k, c0 : c0 + cols * k]
        if n_core == 2
        else samples[..., r0 : r0 + rows * k, c0 : c0 + cols * k, :]
    )
    batch, tail = samples.shape[:axis], samples.shape[axis + 2 :]
    blocks = inner.reshape(*batch, rows, k, cols, k, *tail)  # (..., rows, k, cols, k[, C])
    if reduce not in ("mean", "min"):
        raise ValueError(f"reduce must be 'mean' or 'min', got {reduce!r}")
    return getattr(blocks, reduce)((axis + 1, axis + 3))


def normalised(
    samples: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    *,
    gain: bool = True,
    channel_axis: int | None = None,
) -> np.ndarray:
    """Samples less their weighted mean (``gain``: and divided by their weighted RMS), per channel.

    ``x -> w (x - mean_w x) / rms_w(x - mean_w x)``: the normalisation of the zero-normalised
    correlation (:func:`lkstn.score.zncc`), so that features built on it ignore an offset (and a
    gain) of the image, as ECC does. ``weights (h, w)`` (default ones) also zero ignored pixels;
    a flat sample stays zero.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((2, 4, 4))
    >>> bool(np.allclose(normalised(3 * x + 1), normalised(x)))
    True
    """
    samples = np.asarray(samples, dtype=np.float64)
    n_core = _core_ndim(channel_axis)
    axis = samples.ndim - n_core
    core = samples.shape[axis:]
    w = np.ones(core[:2]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != core[:2]:
        raise ValueError(f"weights must have shape {core[:2]}, got {w.shape}")
    w = w if n_core == 2 else w[..., None]
    space = (axis, axis + 1)  # rows and columns: one mean (and gain) per channel
    total = w.sum((0, 1))
    centred = w * (samples - (w * samples).sum(space, keepdims=True) / total)
    if not gain:
        return centred
    with np.errstate(all="ignore"):
        rms = np.sqrt((centred**2).sum(space, keepdims=True) / total)
        return np.where(rms > 0, centred / np.where(rms > 0, rms, 1.0), 0.0)


FEATURES: dict[str, FeatureFn] = {"pixels": pixels, "hog": hog}
"""Feature functions by name, for ``SDM(features="...")``."""


def get_features(features: str | FeatureFn) -> FeatureFn:
    """Resolve ``"pixels"``, ``"hog"`` or a callable ``phi(samples, *, channel_axis=None)``."""
    if callable(features):
        return features
    if isinstance(features, str) and features.lower() in FEATURES:
        return FEATURES[features.lower()]
    raise ValueError(f"features must be one of {sorted(FEATURES)} or a callable, got {features!r}")
