"""The float64 bilinear sampler of the Gauss-Newton aligners: ``I(W(x; p))`` for many ``p``.

:class:`Sampler` is what LK, CompositionalLK and ICLK call once per iteration for all their
alignments; ``ICLK(dtype="float32")`` uses
:class:`lkstn.classical.torch_sampler.SingleSampler`, which has the same interface. Glossary as
in :mod:`lkstn.classical._gauss_newton`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from lkstn.sampling import warped_grid
from lkstn.warps import Warp

__all__ = ["CORNERS", "Sampler", "Samples"]

_BLOCK = 1 << 14  # samples per block of the sampler: the temporaries stay in cache
CORNERS = np.array([[-1.0, 1, 1, -1], [-1, -1, 1, 1], [1, 1, 1, 1]])
"""The template's corners, homogeneous canonical coordinates ``(3, 4)``: TL, TR, BR, BL."""


Block = tuple[slice, slice, np.ndarray]
"""``(alignments, pixels, I(p)[alignments, pixels])``: one block of samples, ``(na, nq, K)``."""


class Samples(Protocol):
    """What the aligners sample ``I(p)`` with: :class:`Sampler` or the float32
    :class:`~lkstn.classical.torch_sampler.SingleSampler`."""

    def __call__(self, p: np.ndarray, image_index: np.ndarray | None) -> np.ndarray: ...

    def blocks(self, p: np.ndarray, image_index: np.ndarray | None) -> Iterator[Block]: ...


class Sampler:
    """Bilinear, zero-padded sampling of ``(B, H, W, K)`` images at ``W(grid; p)``.

    The arithmetic of :func:`lkstn.sampling.warp_image` (``map_coordinates(order=1,
    mode="grid-constant")``, agreeing to rounding), fused and without re-validation. The
    coordinates are :func:`lkstn.sampling.warped_grid`'s, with the canonical-to-pixel change of
    frame folded into ``M(p)``; the image gets a one-pixel zero
    border, and coordinates are clamped onto that border, which reproduces zero padding exactly.
    A sample is four gathers per channel (through offset views of the channel's plane, no
    index arithmetic) and three lerps. Blocks whose template corners all land inside the image
    skip the clamping (the image of the template frame under an affine warp, or a homography
    positive at the corners, is convex).
    """

    def __init__(self, images: np.ndarray | tuple[np.ndarray, ...], warp: Warp, grid: np.ndarray,
                 *, frame: tuple[int, int] | None = None, offset: tuple[int, int] = (0, 0),
                 homogeneous: np.ndarray | None = None) -> None:  # fmt: skip
        """``images`` ``(B, H, W, K)``, or a tuple of such arrays whose channels follow one
        another (sampled as their concatenation, without forming it).

        ``homogeneous``: the points of ``grid`` as ``(3, h*w)`` homogeneous columns, where the
        caller keeps them (:attr:`Level.grid_h <lkstn.classical._gauss_newton.Level>`): read,
        never copied (forming them costs more than building the rest of a sampler).

        ``frame`` ``(H, W)`` and ``offset`` ``(x0, y0)``: the images are a window of a larger
        frame, whose pixel ``(x0, y0)`` is the window's first, zero everywhere else; ``p`` maps
        into that frame's canonical coordinates. Samples in the window equal those of the
        whole frame bit for bit (the same coordinates, the offset taken from their integer
        parts)."""
        parts = images if isinstance(images, tuple) else (images,)
        B, H, W, _ = parts[0].shape
        K = sum(part.shape[-1] for part in parts)
        padded = np.empty((K, B, H + 2, W + 2))  # a one-pixel zero border: exact zero padding
        padded[:, :, [0, -1]] = 0.0  # the border only: the inside is overwritten below
        padded[:, :, :, [0, -1]] = 0.0
        k = 0
        for part in parts:  # channel planes: 1-D gathers
            padded[k : k + part.shape[-1], :, 1:-1, 1:-1] = np.moveaxis(part, -1, 0)
            k += part.shape[-1]
        Wp = W + 2
        # the four bilinear neighbours of flat index i are i, i + 1, i + Wp, i + Wp + 1: views
        # of one plane (the last rows of the shifted views are never read)
        self._neighbours = [(f, f[1:], f[Wp:], f[Wp + 1 :]) for f in padded.reshape(K, -1)]
        self._size = (H + 2, W + 2)  # padded frame
        self._K = K
        self._warp = warp
        grid_h = homogeneous
        if grid_h is None:  # (3, h*w) homogeneous
            grid_h = np.concatenate([grid, np.ones((len(grid), 1))], 1).T
        hw = grid_h.shape[1]
        self._na, nq = max(1, _BLOCK // hw), min(hw, _BLOCK)  # block: na alignments x nq pixels
        self._grid_blocks = [(slice(q, q + nq), grid_h[:, q : q + nq]) for q in range(0, hw, nq)]
        self._hw = hw
        self._offset = (float(offset[0]), float(offset[1]))
        if frame is not None:  # canonical coordinates of the whole frame
            H, W = frame
        sx, sy = (W - 1) / 2.0, (H - 1) / 2.0  # padded pixel = (x + 1) (W - 1) / 2 + 1
        self._pad_from_canonical = np.array([[sx, 0, sx + 1], [0, sy, sy + 1], [0, 0, 1.0]])
        self._out = np.empty((0, len(grid), K))

    def first(self, k: int) -> Sampler:
        """A sampler of the first ``k`` channels, sharing this one's planes."""
        view = copy.copy(self)
        view._neighbours, view._K = self._neighbours[:k], k
        view._out = np.empty((0, self._hw, k))
        return view

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

    def blocks(self, p: np.ndarray, image_index: np.ndarray | None) -> Iterator[Block]:
        """Yield ``(alignments, pixels, I(p)[alignments, pixels])`` block by block.

        Blocks hold about ``_BLOCK`` samples (whole alignments when the template is small), so
        that the temporaries stay in cache; the values are ``(na, nq, K)`` fresh arrays.
        """
        n = p.shape[0]
        # (n, 3, 3): padded pixel from canonical
        A = self._pad_from_canonical @ self._warp.matrix(p, check=False)
        Hp, Wp = self._size
        ox, oy = self._offset
        corners = A @ CORNERS  # (n, 3, 4)
        w = corners[:, 2]
        x, y = corners[:, 0] / w, corners[:, 1] / w
        if ox or oy:  # the window's padded pixels
            x, y = x - ox, y - oy
        m = 1e-6  # margin against rounding between corners and interior points
        inside = (w > 0) & (x >= m) & (x <= Wp - 1 - m) & (y >= m) & (y <= Hp - 1 - m)
        inside = inside.all(-1)  # convex image of the frame: all samples inside
        base = None if image_index is None else image_index * float(Hp * Wp)
        for a in range(0, n, self._na):  # blocks of samples, not alignments one by one
            s = slice(a, a + self._na)
            b = None if base is None else base[s]
            for t, G in self._grid_blocks:
                yield s, t, self._bilinear(A[s], G, b, bool(inside[s].all()))

    def _bilinear(
        self, A: np.ndarray, G: np.ndarray, base: np.ndarray | None, inside: bool
    ) -> np.ndarray:
        Hp, Wp = self._size
        ox, oy = self._offset
        x, y = warped_grid(A, G, projective=self._warp.projective)  # (na, nq) padded pixels
        if not inside:  # clamp onto the zero border (fmax/fmin also send NaN there)
            np.fmin(np.fmax(x, ox, out=x), ox + Wp - 1.0, out=x)
            np.fmin(np.fmax(y, oy, out=y), oy + Hp - 1.0, out=y)
        x0, y0 = np.floor(x), np.floor(y)
        if not inside:
            np.minimum(x0, ox + Wp - 2.0, out=x0)
            np.minimum(y0, oy + Hp - 2.0, out=y0)
        x -= x0  # fractional parts in [0, 1]
        y -= y0
        if ox or oy:  # the window's pixels: integers, exact
            x0 -= ox
            y0 -= oy
        y0 *= Wp  # flat index of the top-left neighbour, exact in float64
        y0 += x0
        if base is not None:
            y0 += base[:, None]
        i = y0.astype(np.intp)
        out = None if self._K == 1 else np.empty((*i.shape, self._K))  # (na, nq, K)
        for c, plane in enumerate(self._neighbours):  # the indices and weights, once
            # mode="clip" is a no-op here (indices are in range by construction), skips checks
            v00, v01, v10, v11 = (v.take(i, mode="clip") for v in plane)
            v01 -= v00  # top = v00 + x (v01 - v00)
            v01 *= x
            v01 += v00
            v11 -= v10  # bottom = v10 + x (v11 - v10)
            v11 *= x
            v11 += v10
            v11 -= v01  # top + y (bottom - top)
            v11 *= y
            v11 += v01
            if out is None:
                return v11[..., None]
            out[..., c] = v11
        return out
