"""The Gauss-Newton core shared by LK, CompositionalLK and ICLK ([BM04]).

The three aligners minimise the same sum of squared differences
``sum_x || I(W(x; p)) - T(x) ||^2`` ([LL17] eq. (1)) by Gauss-Newton and differ only in where the
linearisation happens and how the update is applied. This module holds what they share: input
checking, the coarse-to-fine pyramid, a fused bilinear sampler, the iteration loop with
per-alignment freezing, and a guarded batched solve. Each aligner supplies ``_prepare_level``
(what is precomputed from the template), ``_step`` (the update ``dp``) and ``_update`` (how ``dp``
enters ``p``); ICLK also fuses sampling and its fixed linear map in ``_measure``.

Batch semantics (DESIGN.md Sec. 3): an image with the template's ``ndim`` is one image and
``p_init`` ``(..., P)`` holds any number of starts in it; an image with one more leading dimension
is a batch ``(B, H, W[, C])`` with ``p_init`` ``(B, P)`` (or ``(P,)``, shared). All alignments
advance together: one sampling pass per iteration, batched solves, no Python loop over alignments
(the sampler walks over cache-sized blocks of samples).

Failure is data. An alignment stops updating (its ``p`` is frozen) when its update norm falls
below ``tol`` (converged) or when its step is unusable: a singular system, a NaN from the image,
a non-finite warp (not converged). Samples outside the image are zeros (the sampling convention
of :mod:`lkstn.sampling`), so a start that leaves the image sees a dark border and usually fails.
Floating-point warnings are silenced inside ``align`` and every non-finite value is handled
explicitly instead.

Glossary: ``T`` template ``(h, w, C)``; ``I`` image(s) ``(B, H, W, C)``; ``I(p)`` the image sampled
at ``W(x; p)`` over the template frame; ``e = I(p) - T`` the error image; ``sd`` steepest-descent
images ``(..., h*w*C, P)``; ``hessian`` ``sd^T sd``; ``n`` number of alignments; ``K`` sampled
channels (``C``, or ``3C`` when image gradients travel with the image).

References: [LL17] Lin & Lucey, CVPR 2017. [BM04] Baker & Matthews, IJCV 2004.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lkstn.chunks import align_in_chunks
from lkstn.classical.pyramid import MIN_SIZE, gaussian_pyramid, level_shape
from lkstn.result import AlignmentResult
from lkstn.sampling import canonical_grid
from lkstn.warps import Warp, warp_from_name

_BLOCK = 1 << 14  # samples per block of the sampler: the temporaries stay in cache
_RCOND = 1e-10  # smallest eigenvalue / largest eigenvalue of a usable Hessian


@dataclass(frozen=True)
class Level:
    """What an aligner precomputes from the template at one pyramid level."""

    template: np.ndarray  # (h, w, C)
    grid: np.ndarray  # (h*w, 2) canonical pixel centres of the template frame


def singular(hessian: np.ndarray) -> np.ndarray:
    """Whether each symmetric ``(..., P, P)`` Hessian is unusable (non-finite or ill-posed)."""
    finite = np.isfinite(hessian).all((-2, -1))
    safe = np.where(finite[..., None, None], hessian, np.eye(hessian.shape[-1]))
    eig = np.linalg.eigvalsh(safe)  # (..., P) ascending
    return ~finite | ~(eig[..., 0] > _RCOND * eig[..., -1])


def solve(hessian: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched ``hessian^-1 rhs`` for ``(n, P, P)`` and ``(n, P)``; returns ``(dp, ok)``.

    A singular or non-finite system gives ``dp = 0`` and ``ok = False`` for that alignment alone.
    """
    bad = singular(hessian) | ~np.isfinite(rhs).all(-1)
    safe = np.where(bad[:, None, None], np.eye(hessian.shape[-1]), hessian)
    dp = np.linalg.solve(safe, np.where(bad[:, None], 0.0, rhs)[..., None])[..., 0]
    return dp, ~bad


class Sampler:
    """Bilinear, zero-padded sampling of ``(B, H, W, K)`` images at ``W(grid; p)``.

    The arithmetic of :func:`lkstn.sampling.warp_image` (``map_coordinates(order=1,
    mode="grid-constant")``, agreeing to rounding), fused and without re-validation. The
    canonical-to-pixel change of frame is folded into ``M(p)``; the image gets a one-pixel zero
    border, and coordinates are clamped onto that border, which reproduces zero padding exactly.
    A sample is four gathers (through offset views, no index arithmetic) and three lerps. Blocks
    whose template corners all land inside the image skip the clamping (the image of the
    template frame under an affine warp, or a homography positive at the corners, is convex).
    """

    def __init__(self, images: np.ndarray, warp: Warp, grid: np.ndarray) -> None:
        B, H, W, K = images.shape
        padded = np.zeros((B, H + 2, W + 2, K))  # a one-pixel zero border: exact zero padding
        padded[:, 1:-1, 1:-1] = images
        flat = padded.reshape(-1, K) if K > 1 else padded.reshape(-1)  # (B*Hp*Wp[, K])
        Wp = W + 2
        # the four bilinear neighbours of flat index i are i, i + 1, i + Wp, i + Wp + 1: views
        # of one array (the last rows of the shifted views are never read)
        self._neighbours = [flat, flat[1:], flat[Wp:], flat[Wp + 1 :]]
        self._size = (H + 2, W + 2)  # padded frame
        self._K = K
        self._warp = warp
        grid_h = np.concatenate([grid, np.ones((len(grid), 1))], 1).T  # (3, h*w) homogeneous
        hw = grid_h.shape[1]
        self._na, nq = max(1, _BLOCK // hw), min(hw, _BLOCK)  # block: na alignments x nq pixels
        self._grid_blocks = [
            (slice(q, q + nq), np.ascontiguousarray(grid_h[:, q : q + nq]))
            for q in range(0, hw, nq)
        ]
        self._hw = hw
        self._corners = np.array([[-1.0, 1, 1, -1], [-1, -1, 1, 1], [1, 1, 1, 1]])  # (3, 4)
        sx, sy = (W - 1) / 2.0, (H - 1) / 2.0  # padded pixel = (x + 1) (W - 1) / 2 + 1
        self._pad_from_canonical = np.array([[sx, 0, sx + 1], [0, sy, sy + 1], [0, 0, 1.0]])
        self._out = np.empty((0, len(grid), K))

    def __call__(self, p: np.ndarray, image_index: np.ndarray | None) -> np.ndarray:
        """``I(p)`` for ``p`` ``(n, P)`` in image ``image_index[i]`` (or 0): ``(n, h*w, K)``.

        The result is a view of a buffer that the next call overwrites.
        """
        n, hw = p.shape[0], self._hw
        if self._out.shape[0] < n:
            self._out = np.empty((n, hw, self._K))
        out = self._out[:n]
        for s, t, values in self.blocks(p, image_index):
            out[s, t] = values
        return out

    def blocks(self, p: np.ndarray, image_index: np.ndarray | None):
        """Yield ``(alignments, pixels, I(p)[alignments, pixels])`` block by block.

        Blocks hold about ``_BLOCK`` samples (whole alignments when the template is small), so
        that the temporaries stay in cache; the values are ``(na, nq, K)`` fresh arrays.
        """
        n = p.shape[0]
        A = self._pad_from_canonical @ self._warp._matrix(
            p
        )  # (n, 3, 3) padded pixel from canonical
        Hp, Wp = self._size
        corners = A @ self._corners  # (n, 3, 4)
        w = corners[:, 2]
        x, y = corners[:, 0] / w, corners[:, 1] / w
        m = 1e-6  # margin against rounding between corners and interior points
        inside = (w > 0) & (x >= m) & (x <= Wp - 1 - m) & (y >= m) & (y <= Hp - 1 - m)
        inside = inside.all(-1)  # convex image of the frame: all samples inside
        base = None if image_index is None else image_index * float(Hp * Wp)
        for a in range(0, n, self._na):  # blocks of samples, not alignments one by one
            s = slice(a, a + self._na)
            b = None if base is None else base[s]
            for t, G in self._grid_blocks:
                yield s, t, self._bilinear(A[s], G, b, bool(inside[s].all()))

    def _bilinear(self, A, G, base, inside: bool) -> np.ndarray:
        Hp, Wp = self._size
        x, y = A[:, 0] @ G, A[:, 1] @ G  # (na, nq) padded pixel coordinates
        if self._warp.projective:
            w = A[:, 2] @ G
            x /= w
            y /= w
        if not inside:  # clamp onto the zero border (fmax/fmin also send NaN there)
            np.fmin(np.fmax(x, 0.0, out=x), Wp - 1.0, out=x)
            np.fmin(np.fmax(y, 0.0, out=y), Hp - 1.0, out=y)
        x0, y0 = np.floor(x), np.floor(y)
        if not inside:
            np.minimum(x0, Wp - 2.0, out=x0)
            np.minimum(y0, Hp - 2.0, out=y0)
        x -= x0  # fractional parts in [0, 1]
        y -= y0
        y0 *= Wp  # flat index of the top-left neighbour, exact in float64
        y0 += x0
        if base is not None:
            y0 += base[:, None]
        i = y0.astype(np.intp)
        if self._K > 1:
            x, y = x[..., None], y[..., None]
        # mode="clip" is a no-op here (indices are in range by construction) and skips checks
        v00, v01, v10, v11 = (v.take(i, axis=0, mode="clip") for v in self._neighbours)
        v01 -= v00  # top = v00 + x (v01 - v00)
        v01 *= x
        v01 += v00
        v11 -= v10  # bottom = v10 + x (v11 - v10)
        v11 *= x
        v11 += v10
        v11 -= v01  # top + y (bottom - top)
        v11 *= y
        v11 += v01
        return v11 if self._K > 1 else v11[..., None]  # (na, nq, K)


@dataclass
class _State:
    """Per-alignment bookkeeping of the loop, all ``(n,)``."""

    live: np.ndarray  # still sampled
    done: np.ndarray  # p frozen (converged or failed)
    failed: np.ndarray  # unusable step: never converged
    converged: np.ndarray  # update norm fell below tol
    cost: np.ndarray  # mean squared residual at the current p


class GaussNewton:
    """Base of the Gauss-Newton aligners: construction, input checks, pyramid and loop."""

    def __init__(
        self,
        template: Any,
        warp: Warp | str = "affine",
        n_iter: int = 30,
        tol: float = 1e-4,
        *,
        channel_axis: int | None = None,
        pyramid: int = 1,
    ) -> None:
        self.warp = warp_from_name(warp)
        self.n_iter = _check_int(n_iter, "n_iter", 0)
        self.tol = float(tol)
        if not (np.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        self.pyramid = _check_int(pyramid, "pyramid", 1)
        if channel_axis not in (None, -1):
            raise ValueError(f"channel_axis must be None or -1, got {channel_axis!r}")
        self.channel_axis = channel_axis
        T = _check_template(template, channel_axis)  # (h, w, C)
        self.template_shape: tuple[int, int] = T.shape[:2]
        coarsest = level_shape(self.template_shape, self.pyramid - 1)
        if min(coarsest) < MIN_SIZE:
            raise ValueError(
                f"pyramid={pyramid} shrinks the {self.template_shape} template to {coarsest}; "
                f"the coarsest level needs at least {MIN_SIZE} pixels a side"
            )
        pyr = gaussian_pyramid(T, self.pyramid, channel_axis=-1)
        self._T = T
        self._levels = [
            self._prepare_level(Level(t, canonical_grid(t.shape[:2]))) for t in pyr
        ]  # finest first

    @property
    def template(self) -> np.ndarray:
        """The template as given (float64 copy), ``(h, w)`` or ``(h, w, C)``."""
        return self._T[..., 0].copy() if self.channel_axis is None else self._T.copy()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(template_shape={self.template_shape}, warp={self.warp!r}, "
            f"n_iter={self.n_iter}, tol={self.tol}, pyramid={self.pyramid})"
        )

    # -- hooks ------------------------------------------------------------------------------------
    def _prepare_level(self, level: Level) -> Level:
        return level

    def _sampled(self, images: np.ndarray) -> np.ndarray:
        """What the sampler reads, ``(B, H, W, K)``: the images (LK adds their gradients)."""
        return images

    def _sampler(self, images: np.ndarray, level: Level) -> Sampler:
        """What samples ``I(p)`` at this level (ICLK may sample in single precision)."""
        return Sampler(images, self.warp, level.grid)

    def _measure(self, level: Level, sampler: Sampler, p: np.ndarray, index) -> tuple:
        """Steps (1)-(2) for ``n`` alignments: ``(cost (n,), work)``, ``work`` a tuple of arrays
        with ``n`` rows that ``_step`` consumes: here ``I(p)`` samples and the error ``e``."""
        T = level.template.reshape(1, -1, level.template.shape[-1])  # (1, h*w, C)
        samples = sampler(p, index)  # (1) I(W(x; p)), (n, h*w, K)
        e = samples[..., : T.shape[-1]] - T  # (2) error image I(p) - T, (n, h*w, C)
        return np.einsum("nqc,nqc->n", e, e) / T.size, (samples, e)

    def _step(self, level: Level, p: np.ndarray, *work: np.ndarray):
        raise NotImplementedError

    def _update(self, p: np.ndarray, dp: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- alignment --------------------------------------------------------------------------------
    def align(
        self, image: Any, p_init: Any, n_iter: int | None = None, *, chunk_size: int | None = None
    ) -> AlignmentResult:
        """Align ``image`` to the template from ``p_init``; see the module docstring.

        Parameters
        ----------
        image : ndarray (H, W[, C]) or (B, H, W[, C])
            One image, or a batch (one leading dimension more than the template).
        p_init : array (..., P) for one image, (B, P) or (P,) for a batch
        n_iter : int, optional
            Iterations per pyramid level (default: the constructor's).
        chunk_size : int, optional
            Align at most this many starts at a time (:func:`lkstn.chunks.align_in_chunks`):
            memory bounded by the chunk, the same result.

        Returns
        -------
        AlignmentResult
            ``history`` ``(pyramid * n_iter + 1, ..., P)``, ``cost`` ``(pyramid * n_iter + 1,
            ...)``, ``converged`` ``(...)``. With a pyramid, cost row ``j`` is measured at the
            resolution of the level that iterates from history row ``j``.
        """
        if chunk_size is not None:  # align_in_chunks calls back here without chunk_size
            return align_in_chunks(self, image, p_init, chunk_size=chunk_size, n_iter=n_iter)
        n_iter = self.n_iter if n_iter is None else _check_int(n_iter, "n_iter", 0)
        images, p, index, batch_shape = self._parse(image, p_init)
        pyr = gaussian_pyramid(images, self.pyramid, channel_axis=-1, batch_ndim=1)
        n, P = p.shape
        rows = self.pyramid * n_iter + 1
        history, cost = np.empty((rows, n, P)), np.empty((rows, n))
        history[0] = p
        false = np.zeros(n, bool)
        state = _State(~false, false.copy(), false.copy(), false.copy(), np.full(n, np.nan))
        with np.errstate(all="ignore"):
            for i, level in enumerate(reversed(self._levels)):  # coarse to fine
                state.live, state.done = ~state.failed, state.failed.copy()
                state.converged[:] = False
                sampler = self._sampler(self._sampled(pyr[self.pyramid - 1 - i]), level)
                rows_i = slice(i * n_iter, (i + 1) * n_iter + 1)
                self._iterate(level, sampler, p, index, state, history[rows_i], cost[rows_i])
        converged = state.converged & ~state.failed & np.isfinite(state.cost)
        return AlignmentResult(
            history=history.reshape(rows, *batch_shape, P),
            cost=cost.reshape(rows, *batch_shape),
            converged=converged.reshape(batch_shape),
        )

    def _iterate(self, level, sampler, p, index, state, history, cost) -> None:
        """Gauss-Newton at one level ([BM04] Figs. 1, 3, 4); fills ``history[1:]``, ``cost``."""
        for k in range(len(history)):
            live = np.flatnonzero(state.live)
            at = None if index is None else index[live]
            state.cost[live], work = self._measure(level, sampler, p[live], at)  # (1)-(2)
            cost[k] = state.cost  # mean squared residual of history[k]
            if k + 1 == len(history):
                break  # the last row only needs its cost
            retire = state.done[live]  # frozen last iteration: that cost was all they needed
            state.live[live[retire]] = False
            if retire.any():
                live, work = live[~retire], tuple(w[~retire] for w in work)
            if live.size:
                dp, ok = self._step(level, p[live], *work)  # (3)-(8) the update dp
                p_new = self._update(p[live], dp)  # (9) update the warp
                ok &= np.isfinite(p_new).all(-1) & np.isfinite(state.cost[live])
                small = ok & (np.linalg.norm(dp, axis=-1) <= self.tol)
                p[live[ok]] = p_new[ok]
                state.failed[live[~ok]] = True  # frozen at the last good p, cost known
                state.live[live[~ok]] = False
                state.converged[live[small]] = True
                state.done[live[~ok | small]] = True
            history[k + 1] = p

    def _parse(self, image: Any, p_init: Any):
        """Images ``(B, H, W, C)``, starts ``(n, P)``, image index per start, batch shape."""
        image = np.asarray(image)
        if image.dtype.kind not in "biuf":
            raise ValueError(f"image must hold real numbers, got dtype {image.dtype}")
        core = 2 if self.channel_axis is None else 3
        if image.ndim not in (core, core + 1):
            raise ValueError(
                f"image must have {core} dims (one image) or {core + 1} (a batch), matching the "
                f"template {self.template.shape}; got shape {image.shape}"
            )
        C = self._T.shape[-1]
        if self.channel_axis is not None and image.shape[-1] != C:
            raise ValueError(f"image has {image.shape[-1]} channels, the template {C}")
        batched = image.ndim == core + 1
        H, W = image.shape[int(batched) : int(batched) + 2]
        Hc, Wc = level_shape((H, W), self.pyramid - 1)
        if min(Hc, Wc) < 2:
            raise ValueError(f"image of {H}x{W} pixels is too small for pyramid={self.pyramid}")
        P = self.warp.n_params
        p = np.asarray(p_init, dtype=np.float64)
        if p.ndim < 1 or p.shape[-1] != P or not np.isfinite(p).all():
            raise ValueError(f"p_init must be finite with shape (..., {P}), got {p.shape}")
        images = image.reshape(-1, H, W, C).astype(np.float64)
        if not batched:
            return images, p.reshape(-1, P).copy(), None, p.shape[:-1]
        B = image.shape[0]
        if p.shape not in ((P,), (B, P)):
            raise ValueError(
                f"p_init must be ({B}, {P}) or ({P},) for a batch of {B}, got {p.shape}"
            )
        return images, np.broadcast_to(p, (B, P)).copy(), np.arange(B), (B,)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_template(template: Any, channel_axis: int | None) -> np.ndarray:
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
