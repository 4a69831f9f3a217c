"""Bounded-memory alignment of many starts: run any :class:`~lkstn.result.Aligner` chunk by chunk.

An aligner's working memory grows with the number of alignments it advances together: forwards LK
holds steepest-descent images ``(n, h*w*C, P)``, SDM the warped samples and features
``(n, h, w)``, a spatial transformer its sampling grids and activations ``(n, C, h, w)``. Aligning
100,000 starts in one call can need tens of GiB. :func:`align_in_chunks` slices the starts into
chunks of ``chunk_size``, aligns each chunk with the aligner's own ``align`` and writes the pieces
into one preallocated :class:`~lkstn.result.AlignmentResult`, so that the peak memory is the
result itself (``history`` ``(n_iter + 1, n, P)``) plus one chunk's working set.

Batch forms (DESIGN.md Sec. 3), told apart by the image:

- **one image, many starts**: a NumPy image with no batch dimension (``(H, W[, C])``), or a torch
  image ``(1, C, H, W)``; only ``p_init`` ``(..., P)`` is sliced, the image is passed whole;
- **a batch of images**: NumPy ``(B, H, W[, C])`` (or more leading dimensions, for SDM) or torch
  ``(B, C, H, W)`` with ``p_init`` ``(B, P)`` or ``(P,)``; images and starts are sliced together,
  as views. A NumPy image batch that is itself broadcast against more starts (SDM's ``(N, 1, H,
  W)`` against ``(N, M, P)``) is gathered per chunk: a chunk then holds a copy of its images.

Every alignment is independent of the others in all lkstn aligners, so the chunked result is the
unchunked one up to rounding: a chunk changes the shapes of the matrix products, and BLAS picks
its kernel (its order of summation) by shape and by CPU, so the two can differ by a few ulps per
product, ~1e-16 relative (float64) or ~1e-7 (float32); only a diverging start amplifies them
(``tests/reliability/test_chunks.py``).

Glossary: ``n`` the number of alignments, ``chunk`` a slice of them, ``rows`` ``n_iter + 1``.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from lkstn._backend import Array, ArrayLike, is_torch
from lkstn.result import Aligner, AlignmentResult

__all__ = ["align_in_chunks"]


def align_in_chunks(
    aligner: Aligner,
    image: ArrayLike,
    p_init: ArrayLike,
    *,
    chunk_size: int = 4096,
    n_iter: int | None = None,
) -> AlignmentResult:
    """``aligner.align(image, p_init, n_iter)`` computed ``chunk_size`` alignments at a time.

    Parameters
    ----------
    aligner : Aligner
        Any lkstn aligner (classical NumPy or learned torch) or anything with the same ``align``.
    image : ndarray (H, W[, C]) or (..., H, W[, C]); or Tensor (B, C, H, W)
        One image, or a batch (see the module docstring).
    p_init : array (..., P); Tensor (B, P) or (P,)
        The starts, as ``aligner.align`` takes them.
    chunk_size : int
        Alignments per call of ``aligner.align``.
    n_iter : int, optional
        Passed on to ``aligner.align``.

    Returns
    -------
    AlignmentResult
        As ``aligner.align(image, p_init, n_iter)``: ``history`` ``(rows, ..., P)``, ``cost``
        ``(rows, ...)`` or ``None``, ``converged`` ``(...)``, ``score`` ``(...)`` or ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn import ICLK, Affine, warp_image
    >>> yy, xx = np.mgrid[0:60, 0:80]
    >>> image = np.sin(xx / 5.0) * np.cos(yy / 7.0)
    >>> p_true = np.array([-0.5, 0.0, 0.1, 0.0, -0.5, 0.0])
    >>> iclk = ICLK(warp_image(image, Affine(), p_true, (30, 40)), Affine(), n_iter=10)
    >>> p_init = p_true + np.random.default_rng(0).normal(0, 0.02, (1000, 6))
    >>> whole = iclk.align(image, p_init)
    >>> chunked = align_in_chunks(iclk, image, p_init, chunk_size=128)
    >>> chunked.history.shape, bool(np.array_equal(whole.converged, chunked.converged))
    ((11, 1000, 6), True)
    >>> bool(np.abs(whole.history - chunked.history).max() < 1e-12)
    True
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if is_torch(image):
        return _torch_chunks(aligner, image, p_init, int(chunk_size), n_iter)
    return _numpy_chunks(aligner, image, p_init, int(chunk_size), n_iter)


def _numpy_chunks(aligner, image, p_init, chunk_size, n_iter) -> AlignmentResult:
    image, p = np.asarray(image), np.asarray(p_init)
    core = 2 if getattr(aligner, "channel_axis", None) is None else 3
    if image.ndim < core or p.ndim < 1:  # let the aligner name what is wrong
        return aligner.align(image, p_init, n_iter)
    img_batch = image.shape[: image.ndim - core]
    try:
        batch = np.broadcast_shapes(img_batch, p.shape[:-1])
    except ValueError:
        return aligner.align(image, p_init, n_iter)
    n = int(np.prod(batch, dtype=np.int64))
    if n <= chunk_size:
        return aligner.align(image, p_init, n_iter)
    P = p.shape[-1]
    flat_p = np.broadcast_to(p, (*batch, P)).reshape(n, P)  # (n, P)
    if img_batch == ():  # one image, many starts: slice the starts only

        def piece(s: slice) -> tuple[np.ndarray, np.ndarray]:
            return image, flat_p[s]

    elif img_batch == batch:  # a batch of images, one start each: slice both (views)
        images = image.reshape(n, *image.shape[len(batch) :])  # (n, H, W[, C])

        def piece(s: slice) -> tuple[np.ndarray, np.ndarray]:
            return images[s], flat_p[s]

    else:  # images broadcast against more starts (SDM): gather each chunk's images
        n_img = int(np.prod(img_batch, dtype=np.int64))
        images = image.reshape(n_img, *image.shape[len(img_batch) :])
        index = np.broadcast_to(np.arange(n_img).reshape(img_batch), batch).reshape(n)

        def piece(s: slice) -> tuple[np.ndarray, np.ndarray]:
            return images[index[s]], flat_p[s]

    out = _Collector(n, batch)
    for start in range(0, n, chunk_size):  # chunks of alignments, each one vectorised
        s = slice(start, min(start + chunk_size, n))
        out.add(s, aligner.align(*piece(s), n_iter), np)
    return out.result()


def _torch_chunks(aligner, image, p_init, chunk_size, n_iter) -> AlignmentResult:
    import torch

    p = torch.as_tensor(p_init, dtype=image.dtype, device=image.device)
    if image.ndim != 4 or p.ndim not in (1, 2):
        return aligner.align(image, p_init, n_iter)
    p = p[None] if p.ndim == 1 else p
    n = max(image.shape[0], p.shape[0])
    if n <= chunk_size or image.shape[0] not in (1, n) or p.shape[0] not in (1, n):
        return aligner.align(image, p_init, n_iter)
    p = p.expand(n, p.shape[1])  # (n, P)
    out = _Collector(n, (n,))
    for start in range(0, n, chunk_size):
        s = slice(start, min(start + chunk_size, n))
        chunk_image = image if image.shape[0] == 1 else image[s]
        out.add(s, aligner.align(chunk_image, p[s], n_iter), torch)
    return out.result()


class _Collector:
    """Preallocated output, filled chunk by chunk: ``history`` ``(rows, n, P)`` and the rest."""

    def __init__(self, n: int, batch: tuple[int, ...]) -> None:
        self.n, self.batch = n, tuple(batch)
        self.history = self.cost = self.converged = self.score = self.uncertainty = None

    def add(self, s: slice, res: AlignmentResult, xp: ModuleType) -> None:
        m = s.stop - s.start
        history = res.history.reshape(res.history.shape[0], m, res.history.shape[-1])
        cost = None if res.cost is None else res.cost.reshape(res.cost.shape[0], m)
        converged = res.converged.reshape(m)
        score = None if res.score is None else res.score.reshape(m)
        spread = None if res.uncertainty is None else res.uncertainty.reshape(m)
        if self.history is None:  # shapes and dtypes come from the first chunk
            self.history = _empty(xp, history, (history.shape[0], self.n, history.shape[-1]))
            self.cost = None if cost is None else _empty(xp, cost, (cost.shape[0], self.n))
            self.converged = _empty(xp, converged, (self.n,))
            self.score = None if score is None else _empty(xp, score, (self.n,))
            self.uncertainty = None if spread is None else _empty(xp, spread, (self.n,))
        self.history[:, s] = history
        if self.cost is not None:
            self.cost[:, s] = cost
        if self.score is not None:
            self.score[s] = score
        if self.uncertainty is not None:
            self.uncertainty[s] = spread
        self.converged[s] = converged

    def result(self) -> AlignmentResult:
        rows, P = self.history.shape[0], self.history.shape[-1]
        cost = None if self.cost is None else self.cost.reshape(rows, *self.batch)
        return AlignmentResult(
            history=self.history.reshape(rows, *self.batch, P),
            cost=cost,
            converged=self.converged.reshape(self.batch),
            score=None if self.score is None else self.score.reshape(self.batch),
            uncertainty=None if self.uncertainty is None else self.uncertainty.reshape(self.batch),
        )


def _empty(xp: ModuleType, like: Array, shape: tuple[int, ...]) -> Array:
    if xp is np:
        return np.empty(shape, dtype=like.dtype)
    return xp.empty(shape, dtype=like.dtype, device=like.device)
