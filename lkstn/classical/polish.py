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

import numpy as np

from lkstn.classical._gauss_newton import GaussNewton
from lkstn.classical._sampler import Sampler
from lkstn.classical.region import proper, root_weights
from lkstn.classical.systems import solve
from lkstn.sampling import canonical_grid, image_gradients

__all__ = ["Polishing", "polish_stage"]

_CHUNK = 1 << 22  # numbers in G per chunk of alignments: its memory stays bounded


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
    former last row re-measured by this stage), ``stopped`` a small last step of this stage
    with finite parameters and cost, ``score`` at the new final ``p``. A step that raised the
    cost is taken back and halved (the stage refines: it never ends worse than it started by
    its own cost; undamped, a step from 1.6 px off on a half-flat template reached 62 px and
    stayed 20 px off). An unusable step (singular system, a warp that is not proper) freezes
    the alignment, not stopped."""
    history, cost, _, _ = run
    h, w, C = T.shape
    grid = canonical_grid((h, w))
    gx, gy = image_gradients(images, channel_axis=-1)  # per image canonical unit
    sampler = Sampler(np.concatenate([images, gx, gy], -1), aligner.warp, grid)  # K = 3C
    p = history[-1].copy()
    n, P = p.shape
    rows, costs = np.empty((n_iter + 1, n, P)), np.empty((n_iter + 1, n))
    rows[0] = p
    live = np.isfinite(p).all(-1)
    stopped, c_now = np.zeros(n, bool), cost[-1].copy()
    p_from, c_from, dp_from = p.copy(), np.full(n, np.inf), np.zeros((n, P))  # last accepted
    for k in range(n_iter + 1):
        idx = np.flatnonzero(live)
        if idx.size:
            at = None if index is None else index[idx]
            c, dp, ok = _step(aligner, T, sampler, grid, p[idx], at)
            c_now[idx] = c  # the cost of rows[k]
            back = c > c_from[idx]  # uphill: back to the last accepted p, half its step
            dp[back], ok[back], p[idx[back]] = 0.5 * dp_from[idx[back]], True, p_from[idx[back]]
            keep = idx[~back]
            p_from[keep], c_from[keep], dp_from[idx] = p[keep], c[~back], dp
        costs[k] = c_now
        if k == n_iter or idx.size == 0:
            break
        p_new = p[idx] + dp  # p <- p + dp, [BM04] Fig. 1 step 9
        ok &= proper(aligner.warp, p_new) & np.isfinite(c)
        small = ok & (np.linalg.norm(dp, axis=-1) <= aligner.tol)
        p[idx[ok]] = p_new[ok]
        stopped[idx[small]] = True
        live[idx[~ok | small]] = False
        rows[k + 1] = p
    worse = live & (c_now > c_from)  # measured last and uphill: the last accepted p
    p[worse], c_now[worse] = p_from[worse], c_from[worse]
    rows[k + 1 :], costs[k + 1 :] = p, c_now
    final = score(sampler, p, index)  # the sampler's first C channels are I(p)
    history = np.concatenate([history, rows[1:]])
    cost = np.concatenate([cost[:-1], costs])
    return history, cost, stopped & np.isfinite(c_now), final


def _step(aligner, T: np.ndarray, sampler: Sampler, grid: np.ndarray, p: np.ndarray, index):
    """``(cost (n,), dp (n, P), ok (n,))`` at ``p`` ``(n, P)``, in chunks of alignments."""
    h, w, C = T.shape
    P = p.shape[-1]
    size = max(1, _CHUNK // (h * w * C * P))
    chunks = [slice(a, a + size) for a in range(0, len(p), size)]
    out = [
        _chunk(aligner, T, sampler, grid, p[c], None if index is None else index[c]) for c in chunks
    ]
    return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))


def _chunk(aligner, T: np.ndarray, sampler: Sampler, grid: np.ndarray, p: np.ndarray, index):
    h, w, C = T.shape
    m, warp = h * w, aligner.warp
    samples = sampler(p, index)  # (n, m, 3C): I, dI/dx, dI/dy at W(x; p), [BM04] Fig. 1 (1), (3)
    Ip, gx, gy = samples[..., :C], samples[..., C : 2 * C], samples[..., 2 * C :]
    # grad I . dW/dp_k = v^T B_k xh with v = (gx, gy, -grad I . W) / w ([BM04] Sec. 2.1, the
    # Jacobian of lkstn.warps written for its basis B): one product with the basis, any warp
    xh = np.concatenate([grid, np.ones((m, 1))], 1)  # (m, 3) homogeneous template points
    uvw = xh @ warp.matrix(p, check=False).swapaxes(-1, -2)  # (n, m, 3)
    W = uvw[..., :2] / uvw[..., 2:]  # (n, m, 2) the warped points
    v = np.stack([gx, gy, -(gx * W[..., :1] + gy * W[..., 1:])], -1) / uvw[..., 2:, None]
    outer = (v[..., :, None] * xh[:, None, None, :]).reshape(len(p), m, C, 9)  # v_i xh_j
    G = outer @ warp.basis.reshape(-1, 9).T  # (n, m, C, P) steepest-descent images, step 4-5
    r = root_weights(aligner.mask)
    r = np.ones((m, 1)) if r is None else r  # (m, 1)
    t = T.reshape(m, C)
    if aligner.photometric in ("bias", "gain-bias"):  # zero-mean (weighted) channels
        r2 = r * r / (r * r).sum()
        Ip = Ip - np.einsum("mk,nmc->nc", r2, Ip)[:, None]
        G = G - np.einsum("mk,nmcp->ncp", r2, G)[:, None]
        t = t - (r2 * t).sum(0)
    i, t, G = r * Ip, r * t, r[..., None] * G  # weighted rows, (n, m, C), (m, C), (n, m, C, P)
    s = np.ones((len(p), C))
    if aligner.photometric == "gain-bias":  # ECC: the gain is fitted, not a motion
        t_norm = np.sqrt((t * t).sum(0))  # (C,)
        i_norm = np.sqrt(np.einsum("nmc,nmc->nc", i, i))  # (n, C)
        i_hat = i / i_norm[:, None]
        G = G - i_hat[..., None] * np.einsum("nmc,nmcp->ncp", i_hat, G)[:, None]
        s = np.where(t_norm > 0, t_norm / i_norm, 0.0)  # a flat template channel: no say
    e = s[:, None] * i - t  # (n, m, C) residual at equal contrast
    sG = (s[:, None, :, None] * G).reshape(len(p), m * C, -1)  # (n, m*C, P)
    hessian = sG.swapaxes(1, 2) @ sG  # [BM04] Fig. 1 step 6
    rhs = -(sG.swapaxes(1, 2) @ e.reshape(len(p), m * C, 1))[..., 0]  # step 7
    dp, ok = solve(hessian, rhs)  # step 8
    total = m * C if aligner.mask is None else float((r * r).sum()) * C
    return np.einsum("nmc,nmc->n", e, e) / total, dp, ok
