"""The Aligner contract, the result every aligner returns, and the error measures.

Glossary: ``p`` estimated warp parameters, ``p_true`` ground truth, ``history`` the iterates
``(n_iter + 1, ..., P)`` with row 0 the start, ``cost`` mean squared residual per iterate.

Errors follow [BM04]: the *corner error* is the RMS distance, in template pixels, between the
template corners and their image under ``W(.; compose(inverse(p_true), p))``; an alignment has
*converged* when it is below 1 px. The parameter L2 error in canonical units is reported beside
it (the likely unit of [LL17] Table 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from lkstn._backend import Array, ArrayLike, asarray, namespace
from lkstn.warps import Warp, warp_from_name

__all__ = [
    "AlignmentResult",
    "Aligner",
    "CONVERGED_PX",
    "check_template_shape",
    "corner_error",
    "param_error",
]

CONVERGED_PX = 1.0
"""Corner error (template pixels) below which an alignment counts as converged [BM04]."""


@dataclass(frozen=True)
class AlignmentResult:
    """What every aligner returns.

    Attributes
    ----------
    history : array, shape (n_iter + 1, ..., P)
        Parameters per iteration; row 0 is ``p_init``. Rows after an alignment stopped repeat
        its final estimate (``n_iter`` here is the number asked for; the property
        :attr:`n_iter` counts those run).
    cost : array, shape (n_iter + 1, ...), or None
        Mean squared residual per iterate, where a template exists.
    converged : bool array, shape (...)
        Per alignment: whether the final alignment is good. For the Gauss-Newton aligners
        (LK, CompositionalLK, ICLK): the last update fell below ``tol``, parameters and cost
        are finite, AND ``score`` is at least the aligner's ``min_score`` (default 0.5), so a
        start that stopped moving in a wrong place is not converged. Its false positive and
        false negative rates against ground truth are measured in ``docs/registration.md``.
        Failure is data, never an exception.
    score : array, shape (...), or None
        Per alignment, where the aligner has a template: the zero-normalised correlation of
        the template and the image warped at the final ``p`` (:func:`lkstn.score.zncc`).
    uncertainty : array, shape (...), or None
        Per alignment, for the Gauss-Newton aligners: the predicted standard deviation of the
        template's corners, RMS over the four, in template pixels, from the final residual and
        the template's texture (:mod:`lkstn.classical.uncertainty`). Large where the warp is
        not determined: a flat template on a noisy image, texture along one direction only.

    Examples
    --------
    >>> import numpy as np
    >>> history = np.zeros((4, 2, 6))  # 3 iterations asked for, 2 alignments
    >>> history[1:, 0, 2] = 0.1  # the first moved once then stopped; the second never moved
    >>> r = AlignmentResult(history, None, np.array([True, False]))
    >>> r.p.shape, r.n_iter, r.n_iter_each
    ((2, 6), 1, array([1, 0]))
    """

    history: Array
    cost: Array | None
    converged: Array
    score: Array | None = None
    uncertainty: Array | None = None

    @property
    def p(self) -> Array:
        """The final estimate, ``history[-1]``."""
        return self.history[-1]

    @property
    def n_iter(self) -> int:
        """Number of iterations actually run: the largest of :attr:`n_iter_each`.

        An aligner that stops early (a classical one once every update is below ``tol``) keeps
        the rows it did not run as copies of its final estimate, so that ``history`` has the
        length it was asked for; those rows are not counted.
        """
        each = self.n_iter_each
        return int(each.max()) if each.size else 0

    @property
    def n_iter_each(self) -> np.ndarray:
        """Iterations run per alignment, int array of shape ``(...)``: the last history row in
        which its parameters changed (0 for an alignment that never moved)."""
        history = self.history
        if not isinstance(history, np.ndarray):  # a torch tensor
            history = history.detach().cpu().numpy()
        changed = (history[1:] != history[:-1]).any(-1)  # (rows - 1, ...)
        rows = changed.shape[0]
        last = rows - np.argmax(changed[::-1], axis=0)  # 1 + index of the last change
        return np.where(changed.any(0), last, 0)


@runtime_checkable
class Aligner(Protocol):
    """Anything that aligns an image to a fixed model from a starting warp.

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn import ICLK
    >>> template = np.random.default_rng(0).random((20, 20))
    >>> isinstance(ICLK(template), Aligner)
    True
    """

    warp: Warp
    template_shape: tuple[int, int]

    def align(
        self, image: ArrayLike, p_init: ArrayLike, n_iter: int | None = None
    ) -> AlignmentResult:
        """Align ``image`` starting at ``p_init``; see DESIGN.md Sec. 3."""
        ...


def _canonical_to_pixel_scale(template_shape: tuple[int, int], like: Array) -> Array:
    h, w = template_shape
    xp = namespace(like)
    scale = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    return scale if xp is np else xp.as_tensor(scale, dtype=like.dtype, device=like.device)


def corner_error(
    warp: Warp | str, p: ArrayLike, p_true: ArrayLike, template_shape: tuple[int, int]
) -> Array:
    """RMS corner distance in template pixels between the warps ``p`` and ``p_true``.

    Parameters
    ----------
    warp : Warp or str
        A warp family, or its name (``"affine"``, ...).
    p, p_true : array, shape (..., P)
        Estimate and truth; leading dimensions broadcast.
    template_shape : (h, w)

    Returns
    -------
    array, shape (...)
        ``inf`` where ``p`` has a non-finite entry or the error itself is not finite (a diverged
        estimate is a failed alignment: failure is data, never an exception).

    Raises
    ------
    ValueError
        On wrong shapes, or a non-finite ``p_true`` (the truth must be a warp).

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn import Translation, corner_error
    >>> # a shift of 0.1 canonical units on a 21-pixel-wide template is 1 pixel
    >>> round(float(corner_error(Translation(), np.array([0.1, 0.0]), np.zeros(2), (21, 21))), 6)
    1.0
    """
    check_template_shape(template_shape)
    warp = warp_from_name(warp)
    p, p_true = asarray(p), warp.check_params(p_true, "p_true")
    if p.ndim < 1 or p.shape[-1] != warp.n_params:
        raise ValueError(f"p must have shape (..., {warp.n_params}), got {tuple(p.shape)}")
    p_true = asarray(p_true, like=p)
    xp = namespace(p, p_true)
    finite = xp.isfinite(p).all(-1)  # (...,) rows that are warps
    p = xp.where(finite[..., None], p, 0 * p_true)  # identity stands in; its error is set below
    rel = warp.compose(warp.inverse(p_true), p, check=False)  # (..., P), may be inf
    corners = warp.corners(like=rel)  # (4, 2)
    moved = warp.apply(rel, corners, check=False)  # (..., 4, 2)
    d = (moved - corners) * _canonical_to_pixel_scale(template_shape, rel)
    err = xp.sqrt((d**2).sum(-1).mean(-1))
    out = xp.where(finite & xp.isfinite(err), err, xp.inf)
    return out[()] if xp is np else out  # NumPy: a scalar for one alignment, as before


def param_error(p: ArrayLike, p_true: ArrayLike) -> Array:
    """L2 distance between parameter vectors (canonical units), shape ``(...)``.

    >>> import numpy as np
    >>> float(param_error(np.array([0.3, 0.4]), np.zeros(2)))
    0.5
    """
    p, p_true = asarray(p), asarray(p_true)
    p_true = asarray(p_true, like=p)
    xp = namespace(p, p_true)
    return xp.sqrt(((p - p_true) ** 2).sum(-1))


def check_template_shape(template_shape: object) -> None:
    """Raise ``ValueError`` unless ``template_shape`` is ``(h, w)`` with integers ``h, w >= 2``."""
    ok = (
        isinstance(template_shape, tuple | list)
        and len(template_shape) == 2
        and all(isinstance(s, int | np.integer) and s >= 2 for s in template_shape)
    )
    if not ok:
        raise ValueError(f"template_shape must be (h, w) with h, w >= 2, got {template_shape!r}")
