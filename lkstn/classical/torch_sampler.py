"""ICLK's sampler in single precision, through PyTorch's compiled bilinear ``grid_sample``.

:class:`~lkstn.classical._sampler.Sampler` computes ``I(W(x; p))`` in float64 NumPy at about
10 ns a sample (four gathers and some fifteen array passes); ``torch.nn.functional.grid_sample``
does the same interpolation in float32 in one vectorised C++ loop, about 2.5 ns a sample on the
dev machine. IC-LK spends most of its time sampling, so ``ICLK(dtype="float32")`` samples here
and multiplies the float32 error image by float32 copies of its fixed rows; the warp update,
costs and convergence tests stay float64. Float32 coordinates resolve 1e-7 of the image width
(3e-5 px on a 450-pixel image): far below the 1e-4 canonical units of the default ``tol``.

Same convention as :func:`lkstn.sampling.warp_image`: canonical coordinates with the corner
pixels' centres at +-1 are ``grid_sample``'s ``align_corners=True`` frame, and its
``padding_mode="zeros"`` is warp_image's zero padding (both tested against the float64 sampler,
borders included). Coordinates that are not finite, or far outside, are clamped to a point two
pixels outside the image, which samples as zero, as the float64 sampler does.

The coordinates are :func:`lkstn.sampling.warped_grid`'s separable form: the template grid is
regular, so the coordinates of a linear warp are sums of a per-column and a per-row term
(``x_ij = m00 u_j + m01 v_i + m02``), formed in float64 and summed in float32 straight into the
interleaved grid that ``grid_sample`` reads: two small products and one broadcast sum per
coordinate instead of a ``(3, h*w)`` product.

This is the one module of :mod:`lkstn.classical` that imports ``torch``
(``tests/test_architecture.py`` checks it), and :class:`~lkstn.classical.iclk.ICLK` imports it
only for ``dtype="float32"``: float64 alignment never loads torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from lkstn.classical._sampler import Block
from lkstn.sampling import homogeneous_grid, warped_grid
from lkstn.warps import Warp

__all__ = ["SingleSampler", "one_thread"]

_BLOCK = 1 << 18  # samples per grid_sample call (fewer calls; ~2 MB of float32 grid)
_YIELD = 1 << 16  # samples per block yielded: what the caller does with them stays in cache


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside, restoring the caller's setting after (``ICLK.align``
    with ``dtype="float32"`` runs in it, switching once per call).

    A ``grid_sample`` call here samples at most ``_BLOCK`` points (a few milliseconds), too
    little to share between threads; with torch's default of one thread per core, a machine
    whose cores are busy with other work makes every call wait for the slowest core
    (``docs/registration.md``, "Threads of the float32 path", and
    ``benchmarks/float32_threads.py``). Switching threads around every ``grid_sample`` call
    instead cost more than it saved.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class SingleSampler:
    """``I(p)`` in float32 for ``n`` alignments: the interface of ``_sampler.Sampler``.

    Parameters
    ----------
    images : ndarray (B, H, W, K)
    warp : Warp
    shape : (h, w)
        The template frame (its canonical grid: ``lkstn.sampling.canonical_grid(shape)``).
    """

    def __init__(self, images: np.ndarray, warp: Warp, shape: tuple[int, int]) -> None:
        B, H, W, K = images.shape
        chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
        self._images = torch.from_numpy(chw)  # (B, K, H, W)
        self._warp, self._shape, self._K = warp, (int(shape[0]), int(shape[1])), K
        h, w = self._shape
        self._grid_h = torch.from_numpy(homogeneous_grid(self._shape))  # (3, h*w) float64
        self._bound = 1.0 + 4.0 / max(min(H, W) - 1, 1)  # two pixels outside: samples zero
        self._na = max(1, _BLOCK // (h * w))  # alignments per grid_sample call
        self._nb = max(1, _YIELD // (h * w))  # alignments per block handed to the caller

    def __call__(self, p: np.ndarray, image_index: np.ndarray | None) -> np.ndarray:
        """``I(p)`` ``(n, h*w, K)`` float32 for ``p`` ``(n, P)`` in ``image_index[i]`` (or 0)."""
        h, w = self._shape
        out = np.empty((len(p), h * w, self._K), dtype=np.float32)
        for s, _, values in self.blocks(p, image_index):
            out[s] = values
        return out

    def blocks(self, p: np.ndarray, image_index: np.ndarray | None) -> Iterator[Block]:
        """Yield ``(alignments, pixels, I(p)[alignments, pixels])``: ``(nb, h*w, K)`` float32
        arrays, whole alignments at a time (views of one ``grid_sample`` output; the caller may
        write into them)."""
        h, w = self._shape
        every = slice(0, h * w)
        M = torch.from_numpy(np.ascontiguousarray(self._warp.matrix(p, check=False)))  # (n, 3, 3)
        inside = self._inside(M)
        for a in range(0, len(p), self._na):
            s = slice(a, a + self._na)
            grid = self._grid(M[s], inside)
            # output "images" of one row per alignment: the kernel vectorises along rows
            if image_index is None:  # one image: all alignments in one call
                images, grid = self._images[:1], grid.reshape(1, -1, h * w, 2)
            else:  # a batch of images: one alignment each
                images = self._images_of(np.asarray(image_index[s]))
                grid = grid.reshape(-1, 1, h * w, 2)
            out = F.grid_sample(
                images, grid, mode="bilinear", padding_mode="zeros", align_corners=True
            )  # (1, K, na, h*w) or (na, K, 1, h*w)
            values = (out[0].permute(1, 2, 0) if image_index is None else out[:, :, 0].mT).numpy()
            for b in range(0, len(values), self._nb):  # (nb, h*w, K): the caller's work in cache
                block = values[b : b + self._nb]  # fewer at the end of a grid_sample call
                yield slice(a + b, a + b + len(block)), every, block

    def _images_of(self, index: np.ndarray) -> torch.Tensor:
        """The images of these alignments: a view when they are consecutive (every alignment
        of a batch still iterating), else a copy."""
        if len(index) and (np.diff(index) == 1).all():
            return self._images[index[0] : index[-1] + 1]
        return self._images[torch.from_numpy(index)]

    def _grid(self, M: torch.Tensor, inside: bool) -> torch.Tensor:
        """``W(x; p)`` over the template grid in canonical units, ``(n, h, w, 2)`` float32."""
        grid = torch.empty(len(M), *self._shape, 2, dtype=torch.float32)
        planes = grid.permute(3, 0, 1, 2).flatten(2)  # (2, n, h*w): a view of the grid
        warped_grid(  # float64 terms, float32 sums, written into the grid
            M, self._grid_h, projective=self._warp.projective, shape=self._shape, out=planes
        )
        if not inside:
            torch.nan_to_num_(grid, nan=self._bound, posinf=self._bound, neginf=-self._bound)
            grid.clamp_(-self._bound, self._bound)
        return grid

    def _inside(self, M: torch.Tensor) -> bool:
        """Whether every template corner of every alignment lands inside the image (so every
        sample does: the frame's image is convex) with a positive homogeneous coordinate."""
        corners = M @ torch.tensor(
            [[-1.0, 1, 1, -1], [-1, -1, 1, 1], [1, 1, 1, 1]], dtype=torch.float64
        )  # (n, 3, 4)
        z = corners[:, 2]
        xy = corners[:, :2] / z[:, None]
        return bool(((z > 0) & (xy.abs() <= 1.0).all(1)).all())
