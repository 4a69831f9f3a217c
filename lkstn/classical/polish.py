"""The last stage of ``ICLK(polish=True)``: forwards additive Gauss-Newton at the finest level.

IC-LK linearises the template ([BM04] Sec. 3.2, [LL17] eq. (3)), so it stops where
``sd^T (I(p) - T) = 0`` with the *template's* steepest-descent images ``sd``: at the minimum
when ``I(p) = T`` there, but also at points where the error is not at a minimum. On small or
low-contrast photographs these are a pixel or more off (``docs/registration.md``: every start
on one photo's 16 px homography ending 1.06 px off on a clean image, where ECC ends 0.01-0.04 px
off). The forwards additive step ([BM04] Fig. 1) linearises the image at ``p`` instead, so that
it stops only at stationary points of the cost itself; started from IC-LK's result it takes a
few iterations, each step that raised the cost taken back and halved. Each iteration samples
the image and its gradients at ``W(x; p)`` and solves a ``P x P`` system per alignment (what LK
does; IC-LK's fixed regressor does not apply here).

With ``photometric="gain-bias"`` the step is OpenCV ECC's (Evangelidis & Psarakis 2008): per
channel the zero-mean warped image ``i_c`` is scaled to the template's contrast,
``s_c = ||t_c|| / ||i_c||``, and its steepest-descent images are made orthogonal to the constant
and to ``i_c`` (a change of gain is not a motion); the cost is ``sum_c ||s_c i_c - t_c||^2``,
as in :mod:`lkstn.classical.photometric`. ``"bias"`` removes the means only; ``None`` neither.
A template mask weights every row by ``sqrt(w)``, as everywhere in the aligners.

Glossary: ``T`` template ``(h, w, C)``; ``I(p)`` image sampled at ``W(x; p)``; ``m = h*w``;
``G`` steepest-descent images of the image ``(n, m, C, P)``; ``i``, ``t`` weighted (zero-mean)
image and template ``(n, m, C)``; ``s`` gains ``(n, C)``; ``e = s i - t`` the residual.

References: [BM04] Baker & Matthews, IJCV 2004. [LL17] Lin & Lucey, CVPR 2017. Evangelidis &
Psarakis, Parametric image alignment using enhanced correlation coefficient maximization,
TPAMI 2008.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from lkstn.classical._gauss_newton import GaussNewton
from lkstn.classical._sampler import CORNERS, Sampler
from lkstn.classical.region import proper, root_weights
from lkstn.classical.systems import solve
from lkstn.sampling import canonical_grid, homogeneous_grid, image_gradients

__all__ = ["Polishing", "polish_stage"]

_CHUNK = 1 << 22  # numbers in the Gram rows Y per chunk of alignments: its memory stays bounded


class Polishing:
    """ICLK's part: with ``self.polish``, :func:`polish_stage` is the last stage, after the
    second look has chosen (polished, a wrong place can score above the second look's
    threshold: 16 px templates walked off by the first pass then escaped a second look)."""

    polish = False

    def _last_stage(
        self, images: np.ndarray, run: tuple, index: np.ndarray | None, n_iter: int
    ) -> tuple:
        if not self.polish:
            return run
        return polish_stage(self, self._T, images, run, index, n_iter, score=self._score)


def polish_stage(
    aligner: GaussNewton,
    T: np.ndarray,
    images: np.ndarray,
    run: tuple,
    index: np.ndarray | None,
    n_iter: int,
    *,
    score: Callable[..., np.ndarray],
) -> tuple:
    """Append ``n_iter`` forwards additive rows to ``run = (history, cost, stopped, score)``, the
    alignments chosen by ``GaussNewton.align`` on ``images`` ``(B, H, W, C)``, its finest level;
    ``T`` the template ``(h, w, C)``; ``score(sampler, p, index)`` the aligner's final score.

    Returns the same four: ``history`` and ``cost`` with ``n_iter`` more rows (the cost of the
    former last row re-measured by this stage), ``stopped`` where this stage's next step fell
    below ``tol`` (not taken: the alignment ends at the point it measured) with finite
    parameters and cost, ``score`` at the new final ``p`` (from its cost where ``score`` can
    read it so, :meth:`lkstn.ICLK._score`). A step that raised the
    cost is taken back and halved (the stage refines: it never ends worse than it started by
    its own cost; undamped, a step from 1.6 px off on a half-flat template reached 62 px and
    stayed 20 px off). An unusable step (singular system, a warp that is not proper) freezes
    the alignment, not stopped."""
    history, cost, _, _ = run
    h, w, C = T.shape
    grid, xt = _grids(h, w)  # (m, 2) canonical and (3, m) homogeneous template points
    region = _Region(aligner.warp, images, (grid, xt), margin=max(2, min(h, w) // 8))
    p = history[-1].copy()
    n, P = p.shape
    rows, costs = np.empty((n_iter + 1, n, P)), np.empty((n_iter + 1, n))
    rows[0] = p
    live = np.isfinite(p).all(-1)
    stopped, c_now = np.zeros(n, bool), cost[-1].copy()
    c_here = c_now.copy()  # the cost at p (c_now: at the last point measured)
    p_from, c_from, dp_from = p.copy(), np.full(n, np.inf), np.zeros((n, P))  # last accepted
    for k in range(n_iter + 1):
        idx = np.flatnonzero(live)
        if idx.size:
            at = None if index is None else index[idx]
            sampler = region.sampler(p[idx])
            c, dp, ok = _step(aligner, T, sampler, xt, p[idx], at)
            c_now[idx] = c  # the cost of rows[k]
            back = c > c_from[idx]  # uphill: back to the last accepted p, half its step
            dp[back], ok[back], p[idx[back]] = 0.5 * dp_from[idx[back]], True, p_from[idx[back]]
            c_here[idx] = np.where(back, c_from[idx], c)
            keep = idx[~back]
            p_from[keep], c_from[keep], dp_from[idx] = p[keep], c[~back], dp
        costs[k] = c_now
        if k == n_iter or idx.size == 0:
            break
        p_new = p[idx] + dp  # p <- p + dp, [BM04] Fig. 1 step 9
        ok &= proper(aligner.warp, p_new) & np.isfinite(c)
        small = ok & (np.linalg.norm(dp, axis=-1) <= aligner.tol)
        move = ok & ~small  # a step below tol is not taken: p stays where its cost is known
        p[idx[move]] = p_new[move]
        stopped[idx[small]] = True
        live[idx[~ok | small]] = False
        rows[k + 1] = p
    worse = live & (c_now > c_from)  # measured last and uphill: the last accepted p
    p[worse], c_now[worse] = p_from[worse], c_from[worse]
    last = min(k + 1, n_iter)  # after the last iteration, its row is the final p too
    rows[last:], costs[last:] = p, c_here
    # every p is a point this stage (or the one before) measured: its cost may give the score
    final = score(region.sampler(p).first(C), p, index, c_here)  # else I(p) alone is sampled
    history = np.concatenate([history, rows[1:]])
    cost = np.concatenate([cost[:-1], costs])
    return history, cost, stopped & np.isfinite(c_here), final


@lru_cache(maxsize=8)
def _grids(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The template frame's canonical pixel centres and their homogeneous coordinates, made
    once per template shape (read-only: shared between calls)."""
    grid, xt = canonical_grid((h, w)), homogeneous_grid((h, w))
    grid.flags.writeable = xt.flags.writeable = False
    return grid, xt


class _Region:
    """The image and its gradients where the stage samples: a window around the alignments'
    footprints (``margin`` pixels wider, for the steps), or the whole level once a footprint
    leaves it. A window gives the whole level's samples bit for bit: its gradients are the
    same central differences, read only where both neighbours lie in the window (or at an edge
    of the level, where the window's edge is the level's)."""

    def __init__(self, warp, images: np.ndarray, grids: tuple, margin: int) -> None:
        """``grids``: the template's canonical points ``(m, 2)`` and homogeneous ``(3, m)``."""
        self.warp, self.images, self.margin = warp, images, margin
        self.grid, self.xt = grids
        self.box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1; None: whole
        self._sampler: Sampler | None = None

    def sampler(self, p: np.ndarray) -> Sampler:
        """A sampler whose samples at ``p`` ``(n, P)`` are the whole level's."""
        if self._sampler is not None and (self.box is None or self._holds(p)):
            return self._sampler
        _, H, W, _ = self.images.shape
        box = self._around(p, self.margin) if self._sampler is None else None
        small = box is not None and min(box[2] - box[0], box[3] - box[1]) >= 3
        if not small or (box[2] - box[0]) * (box[3] - box[1]) > 0.5 * H * W:
            gx, gy = image_gradients(self.images, channel_axis=-1)  # per canonical unit
            whole = Sampler((self.images, gx, gy), self.warp, self.grid, homogeneous=self.xt)
            self.box, self._sampler = None, whole
            return self._sampler
        x0, y0, x1, y1 = box
        window = self.images[:, y0:y1, x0:x1]
        gy, gx = np.gradient(window, axis=(1, 2))  # image_gradients' arithmetic, whole frame's
        gx *= (W - 1) / 2.0  # scale: per canonical unit of the level
        gy *= (H - 1) / 2.0
        sampler = Sampler((window, gx, gy), self.warp, self.grid, frame=(H, W), offset=(x0, y0),
                          homogeneous=self.xt)  # fmt: skip
        self.box, self._sampler = box, sampler
        return sampler

    def _around(self, p: np.ndarray, margin: int) -> tuple[int, int, int, int] | None:
        """The window of pixels ``[x0, x1) x [y0, y1)`` read at ``p``, ``margin`` wider on each
        side (clipped to the level), or None where a footprint is not finite."""
        _, H, W, _ = self.images.shape
        corners = self.warp.matrix(p, check=False) @ CORNERS  # (n, 3, 4)
        with np.errstate(all="ignore"):
            x = (corners[:, 0] / corners[:, 2] + 1.0) * ((W - 1) / 2.0)  # pixels
            y = (corners[:, 1] / corners[:, 2] + 1.0) * ((H - 1) / 2.0)
        if not (np.isfinite(x).all() and np.isfinite(y).all() and (corners[:, 2] > 0).all()):
            return None
        # reads columns floor(x) and floor(x) + 1, whose gradients read one more each side;
        # one more against rounding between these coordinates and the sampler's
        x0, y0 = int(np.floor(x.min())) - 2 - margin, int(np.floor(y.min())) - 2 - margin
        x1, y1 = int(np.floor(x.max())) + 4 + margin, int(np.floor(y.max())) + 4 + margin
        return max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)

    def _holds(self, p: np.ndarray) -> bool:
        """Whether every sample at ``p`` (and its gradients) lies in the window."""
        need = self._around(p, 0)
        if need is None:
            return False
        _, H, W, _ = self.images.shape
        x0, y0, x1, y1 = self.box
        return (
            (need[0] >= x0 or x0 == 0) and (need[1] >= y0 or y0 == 0)
            and (need[2] <= x1 or x1 == W) and (need[3] <= y1 or y1 == H)
        )  # fmt: skip


def _step(aligner, T: np.ndarray, sampler: Sampler, xt: np.ndarray, p: np.ndarray, index,
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """``(cost (n,), dp (n, P), ok (n,))`` at ``p`` ``(n, P)``, in chunks of alignments;
    ``xt`` ``(3, m)`` the homogeneous template points (:func:`lkstn.sampling.homogeneous_grid`)."""
    h, w, C = T.shape
    size = max(1, _CHUNK // (h * w * C * 12))
    chunks = [slice(a, a + size) for a in range(0, len(p), size)]
    out = [
        _chunk(aligner, T, sampler, xt, p[c], None if index is None else index[c]) for c in chunks
    ]
    return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))


def _chunk(aligner, T, sampler, xt, p, index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One forwards additive step for ``n`` alignments ``p`` ``(n, P)``.

    The steepest-descent images are never formed. The warp's derivative is linear in the
    warp's basis ``B`` (``lkstn.warps``): ``grad I . dW/dp_k = v^T B_k xh`` with ``v = (gx, gy,
    -(gx x' + gy y')) / w'`` the image's gradients at the warped point ``(x', y', w')`` of the
    template point ``xh`` (a column of ``xt``; [BM04] Sec. 2.1), so ``G = Z B^T`` with
    ``Z = v (x) xh`` (``R = 2`` rows of ``v`` for an affine warp, 3 for a homography: ``3 R``
    columns) and ``B`` the ``(P, 3 R)`` basis. One product ``Y^T wt Y`` of ``Y = [Z, e, u,
    1]`` per channel then gives every sum the normal equations need: with weights ``wt = r^2``
    (1 without a mask) summing to ``W``, the zero-mean images have ``G_c^T wt G_c = G^T wt G -
    W g g^T`` (``g`` the weighted mean of ``G``); the image, the residual and ``u`` are
    zero-mean, so ``G_c^T wt e = G^T wt e``; and ECC's projection out of the image's unit
    direction ``u`` subtracts ``a a^T`` and ``a (u^T wt e)`` with ``a = G^T wt u``."""
    h, w, C = T.shape
    n, m, warp = len(p), h * w, aligner.warp
    samples = sampler(p, index).transpose(0, 2, 1)  # (n, 3C, m): I, dI/dx, dI/dy at W(x; p)
    Ip, gx, gy = samples[:, :C], samples[:, C : 2 * C], samples[:, 2 * C :]  # [BM04] Fig. 1 (1)
    R = 3 if warp.projective else 2  # an affine warp's basis has a zero last row
    B = warp.basis[:, :R].reshape(len(warp.basis), 3 * R)  # (P, 3R)
    centred = aligner.photometric in ("bias", "gain-bias")
    gain = aligner.photometric == "gain-bias"
    ie, iu, i1 = 3 * R, 3 * R + 1, 3 * R + 1 + gain  # rows of Y after Z
    Y = np.empty((n, C, i1 + centred, m))  # pixels last: every row is one contiguous product
    Z = Y[:, :, : 3 * R].reshape(n, C, R, 3, m)  # a view: row 3 i + j is v_i xh_j
    if warp.projective:
        uvw = warp.matrix(p, check=False) @ xt  # (n, 3, m)
        inv_w = 1.0 / uvw[:, 2:]  # (n, 1, m)
        gx, gy = gx * inv_w, gy * inv_w
        v2 = gx * (uvw[:, :1] * inv_w) + gy * (uvw[:, 1:2] * inv_w)
        np.multiply(v2[:, :, None], -xt, out=Z[:, :, 2])
    np.multiply(gx[:, :, None], xt, out=Z[:, :, 0])  # [BM04] Fig. 1 (3)-(4)
    np.multiply(gy[:, :, None], xt, out=Z[:, :, 1])
    r = root_weights(aligner.mask)
    wt = None if r is None else (r * r)[:, 0]  # (m,) weights, None: all 1

    def wsum(a: np.ndarray) -> np.ndarray:  # weighted sum over the pixels, the last axis
        return a.sum(-1) if wt is None else a @ wt

    W = float(m) if wt is None else float(wt.sum())
    t = T.reshape(m, C).T  # (C, m)
    if centred:  # zero-mean (weighted) channels
        Ip, t = Ip - wsum(Ip)[..., None] / W, t - wsum(t)[..., None] / W
        Y[:, :, i1] = 1.0
    s = np.ones((n, C))
    if gain:  # ECC: the gain is fitted, not a motion
        t_norm = np.sqrt(wsum(t * t))  # (C,)
        i_norm = np.sqrt(wsum(Ip * Ip))  # (n, C)
        np.divide(Ip, i_norm[..., None], out=Y[:, :, iu])  # unit image direction
        s = np.where(t_norm > 0, t_norm / i_norm, 0.0)  # a flat template channel: no say
    np.subtract(s[..., None] * Ip, t, out=Y[:, :, ie])  # the residual e at equal contrast
    M = (Y if wt is None else Y * wt) @ Y.swapaxes(-1, -2)  # (n, C, K, K): Y^T wt Y
    Z_ = M[..., : 3 * R, :]
    gram = B @ Z_[..., : 3 * R] @ B.T  # (n, C, P, P): G^T wt G
    b = Z_[..., ie] @ B.T  # (n, C, P): G^T wt e
    if centred:
        g = Z_[..., i1] @ B.T / W  # (n, C, P)
        gram -= W * g[..., :, None] * g[..., None, :]
    if gain:
        a = Z_[..., iu] @ B.T  # (n, C, P)
        gram -= a[..., :, None] * a[..., None, :]
        b -= a * M[..., iu, ie][..., None]
    hessian = np.einsum("nc,ncpq->npq", s * s, gram)  # [BM04] Fig. 1 step 6
    rhs = -np.einsum("nc,ncp->np", s, b)  # step 7
    dp, ok = solve(hessian, rhs)  # step 8
    return M[..., ie, ie].sum(-1) / (W * C), dp, ok
