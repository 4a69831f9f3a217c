"""Track a template through a sequence of frames, one alignment per frame.

Each frame starts from the previous frame's result (a pixel matrix, :mod:`lkstn.pixels`),
aligned with :func:`lkstn.register.align_pixels`, and is scored by the zero-normalised
correlation of the template and the frame warped at the result (:mod:`lkstn.score`; the
aligner's own ``result.score`` where it fills it). A frame whose score falls below
``min_score`` (or whose alignment did not converge) is *re-detected*: the frame is aligned again
from the last good frame's matrix and from that matrix shifted by a quarter of the template's
side in each of 8 directions (the template lost by a fast motion is usually near where it was),
with the ``redetect`` aligner when one is given (e.g. one with a coarser pyramid, which sees
farther); the best-scoring attempt is kept if it reaches ``min_score``. Otherwise the frame is
marked lost, and the next frame starts again from the last good matrix.

Glossary: ``H`` image-pixel-from-template-pixel matrix ``(3, 3)`` per frame, ``score`` ZNCC in
``[-1, 1]``, ``ok`` the frame's alignment is trusted, ``redetected`` it needed a second search.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lkstn.pixels import project_pixel_matrix
from lkstn.register import PixelAlignment, align_pixels
from lkstn.result import Aligner

__all__ = ["Track", "track"]


@dataclass(frozen=True)
class Track:
    """Per-frame outcome of :func:`track`.

    Attributes
    ----------
    H : ndarray, shape (N, 3, 3)
        Image pixels from template pixels, per frame (the last good one for a lost frame).
    score : ndarray, shape (N,)
        ZNCC of template and frame at the alignment found (before falling back).
    ok : bool ndarray, shape (N,)
        Converged with ``score >= min_score``.
    redetected : bool ndarray, shape (N,)
        The first alignment failed and a re-detection was tried.
    uncertainty : ndarray, shape (N,)
        The aligner's ``result.uncertainty`` at the alignment found (the predicted corner
        spread, template pixels); NaN where the aligner gives none.
    """

    H: np.ndarray
    score: np.ndarray
    ok: np.ndarray
    redetected: np.ndarray
    uncertainty: np.ndarray


def _good(a: PixelAlignment, min_score: float) -> bool:
    return bool(a.converged and np.isfinite(a.score) and a.score >= min_score)


def _shifted_starts(H: np.ndarray, template_shape: tuple[int, int]) -> list[np.ndarray]:
    h, w = template_shape
    starts = [H]
    for dx, dy in [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)]:
        shift = np.array([[1.0, 0.0, dx * w / 4.0], [0.0, 1.0, dy * h / 4.0], [0.0, 0.0, 1.0]])
        starts.append(shift @ H)  # the template's box moved by a quarter of its side
    return starts


def track(
    aligner: Aligner,
    frames: Iterable[np.ndarray],
    H_init: npt.ArrayLike,
    *,
    min_score: float = 0.9,
    template: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    redetect: Aligner | None = None,
    callback: Callable[[int, PixelAlignment], None] | None = None,
) -> Track:
    """Track the aligner's template through ``frames``, starting at ``H_init`` in frame 0.

    Parameters
    ----------
    aligner : Aligner
        Built on the template (:class:`lkstn.ICLK`, ...).
    frames : iterable of ndarray (H, W) or (H, W, C)
        As the aligner takes them; read one at a time (a generator keeps memory flat).
    H_init : array, shape (3, 3) or (2, 3)
        Pixel matrix of the template in the first frame.
    min_score : float
        ZNCC below which a frame is re-detected (and lost if that fails too).
    template, mask : ndarray, optional
        For the score (default: the aligner's own).
    redetect : Aligner, optional
        Used for re-detection instead of ``aligner`` (e.g. more pyramid levels).
    callback : callable(i, PixelAlignment), optional
        Called after each frame (progress, writing overlays).

    Returns
    -------
    Track

    Raises
    ------
    ValueError
        For ``min_score`` outside ``[-1, 1]`` or no frames.
    """
    if not (np.isfinite(min_score) and -1.0 <= min_score <= 1.0):
        raise ValueError(f"min_score must be in [-1, 1], got {min_score}")
    shape = tuple(aligner.template_shape)
    last_good = project_pixel_matrix(aligner.warp, H_init, shape)
    kw = {"template": template, "mask": mask}
    Hs, scores, oks, redone, spreads = [], [], [], [], []
    for i, frame in enumerate(frames):
        a = align_pixels(aligner, frame, last_good, **kw)
        again = not _good(a, min_score)
        if again:
            second = redetect if redetect is not None else aligner
            tries = [
                align_pixels(second, frame, s, **kw) for s in _shifted_starts(last_good, shape)
            ]
            tries = [t for t in tries if t.converged and np.isfinite(t.score)] or [a]
            a = max(tries, key=lambda t: t.score)
        ok = _good(a, min_score)
        if ok:
            last_good = a.H
        Hs.append(last_good)
        scores.append(a.score)
        oks.append(ok)
        redone.append(again)
        u = a.result.uncertainty
        spreads.append(np.nan if u is None else float(np.asarray(u).reshape(-1)[0]))
        if callback is not None:
            callback(i, a)
    if not Hs:
        raise ValueError("frames: no frames given")
    return Track(np.stack(Hs), np.asarray(scores), np.asarray(oks), np.asarray(redone),
                 np.asarray(spreads))  # fmt: skip
