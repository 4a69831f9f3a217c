"""The Gauss-Newton core shared by LK, CompositionalLK and ICLK ([BM04]).

The three aligners minimise the same sum of squared differences
``sum_x || I(W(x; p)) - T(x) ||^2`` ([LL17] eq. (1)) by Gauss-Newton and differ only in where the
linearisation happens and how the update is applied. This module holds what they share: input
checking, the coarse-to-fine pyramid, the iteration loop with per-alignment freezing, and a
guarded batched solve. Each aligner's own file holds its
algorithm box in three methods, in the box's order:

- ``_prepare_level``: what is computed once from the template (for IC-LK, [BM04] Fig. 4 steps
  (3)-(6): gradients, Jacobian, steepest-descent images, Hessian);
- ``_iteration``: one iteration for ``n`` alignments up to the update, steps (1)-(8): warp the
  image, the error image, and ``dp``; it returns ``(cost, dp, ok)``;
- ``_update``: step (9), how ``dp`` enters ``p`` (added, composed, or inverted and composed).

Everything around the box (batching, which alignments are still moving, step rules, the
pyramid, chunking, the final score) is here, written once.

Batch semantics (DESIGN.md Sec. 3): an image with the template's ``ndim`` is one image and
``p_init`` ``(..., P)`` holds any number of starts in it; an image with one more leading dimension
is a batch ``(B, H, W[, C])`` with ``p_init`` ``(B, P)`` (or ``(P,)``, shared). All alignments
advance together: one sampling pass per iteration, batched solves, no Python loop over alignments
(the sampler walks over cache-sized blocks of samples).

Failure is data. An alignment stops updating (its ``p`` is frozen) when its update norm falls
below ``tol`` (converged) or when its step is unusable: a singular system, a NaN from the image,
a warp that is not finite or folds the template (``region.proper``), all not converged. Samples
outside the image are zeros (:mod:`lkstn.sampling`), so a start that leaves the image sees a dark
border and usually fails. Floating-point warnings are silenced inside ``align`` and every
non-finite value is handled explicitly instead.

Coarse to fine: each level starts from the previous level's result, except that an alignment
the coarser levels left worse (a higher cost at this level) than its own start, or that failed
there, restarts from its start; with ``coarse_best``, a coarser level hands on the lowest-cost
point it visited rather than its last. A stage stops where its step falls below tolerance
without taking it; the last one takes it, unless an ICLK ``polish`` stage follows it.
With a pyramid on one image, only the region around the starts is filtered and decimated.

Success: ``converged`` means a small last step with finite parameters and cost AND a final
``score`` (ZNCC of template and warped image under the mask, :func:`lkstn.score.zncc`) of at
least ``min_score``. A template ``mask`` weights every residual (weighted least squares).

Glossary: ``T`` template ``(h, w, C)``; ``I`` image(s) ``(B, H, W, C)``; ``I(p)`` the image sampled
at ``W(x; p)`` over the template frame; ``e = I(p) - T`` the error image; ``sd`` steepest-descent
images ``(..., h*w*C, P)``; ``hessian`` ``sd^T sd``; ``n`` number of alignments; ``K`` sampled
channels (``C``, or ``3C`` when image gradients travel with the image).

References: [LL17] Lin & Lucey, CVPR 2017. [BM04] Baker & Matthews, IJCV 2004.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, partial

import numpy as np
import numpy.typing as npt

from lkstn.chunks import align_in_chunks
from lkstn.classical._sampler import Sampler, Samples
from lkstn.classical._state import State, keep_better, keep_lowest
from lkstn.classical.checks import (
    check_int,
    check_score,
    check_sigma,
    check_template,
    parse_images,
)
from lkstn.classical.pyramid import MIN_SIZE, gaussian_pyramid, level_shape
from lkstn.classical.region import change_frame, check_mask, crop_around, proper, root_weights
from lkstn.classical.systems import (  # noqa: F401 (RCOND, singular, solve imported from here)
    RCOND,
    singular,
    solve,
    steepest_descent,
)
from lkstn.classical.uncertainty import corner_gain, corner_sigma, unit_covariance
from lkstn.filters import gaussian_filter, kernel_radius
from lkstn.result import AlignmentResult
from lkstn.sampling import canonical_grid, homogeneous_grid
from lkstn.score import zncc
from lkstn.warps import Warp, warp_from_name

MIN_SCORE = 0.5
"""Default ``min_score``: the final zero-normalised correlation below which an alignment that
stopped moving is not called converged (``docs/registration.md``: false positive and false
negative rates of ``converged`` against ground truth over six photographs)."""


@dataclass(frozen=True)
class Level:
    """What an aligner precomputes from the template at one pyramid level."""

    template: np.ndarray  # (h, w, C)
    grid: np.ndarray  # (h*w, 2) canonical pixel centres of the template frame
    # sqrt of the mask's weights at this level (h*w, 1), or None: weights every residual row
    root_w: np.ndarray | None = field(default=None, kw_only=True)

    @cached_property
    def grid_h(self) -> np.ndarray:  # (3, h*w) homogeneous, formed once: what the sampler reads
        return homogeneous_grid(self.template.shape[:2])


class GaussNewton:
    """Base of the Gauss-Newton aligners: construction, input checks, pyramid and loop."""

    def __init__(
        self,
        template: npt.ArrayLike,
        warp: Warp | str = "affine",
        n_iter: int = 30,
        tol: float = 1e-4,
        *,
        channel_axis: int | None = None,
        pyramid: int = 1,
        mask: npt.ArrayLike | None = None,
        min_score: float = MIN_SCORE,
        backtrack: bool = False,
        second_look: float = -1.0,
        coarse_best: bool = False,
        max_uncertainty: float = np.inf,
        image_sigma: float = 0.0,
        handoff_tol: float | None = None,
    ) -> None:
        self.warp = warp_from_name(warp)
        self.image_sigma = check_sigma(image_sigma, "image_sigma")
        self.coarse_best = bool(coarse_best)
        self.n_iter = check_int(n_iter, "n_iter", 0)
        self.tol = float(tol)
        if not (np.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        self.handoff_tol = self.tol if handoff_tol is None else float(handoff_tol)
        if not (np.isfinite(self.handoff_tol) and self.handoff_tol >= 0):
            raise ValueError(f"handoff_tol must be a finite number >= 0, got {handoff_tol!r}")
        self.pyramid = check_int(pyramid, "pyramid", 1)
        if channel_axis not in (None, -1):
            raise ValueError(f"channel_axis must be None or -1, got {channel_axis!r}")
        self.channel_axis = channel_axis
        T = check_template(template, channel_axis)  # (h, w, C)
        self.template_shape: tuple[int, int] = T.shape[:2]
        coarsest = level_shape(self.template_shape, self.pyramid - 1)
        if min(coarsest) < MIN_SIZE:
            raise ValueError(
                f"pyramid={pyramid} shrinks the {self.template_shape} template to {coarsest}; "
                f"the coarsest level needs at least {MIN_SIZE} pixels a side"
            )
        self.min_score = check_score(min_score, "min_score")
        self.backtrack = bool(backtrack)
        self.second_look = check_score(second_look, "second_look")
        if not (isinstance(max_uncertainty, int | float) and max_uncertainty > 0):
            raise ValueError(f"max_uncertainty must be a number > 0, got {max_uncertainty!r}")
        self.max_uncertainty = float(max_uncertainty)
        self.mask = check_mask(mask, self.template_shape)  # (h, w) weights or None
        pyr = gaussian_pyramid(T, self.pyramid, channel_axis=-1)
        masks = [None] * self.pyramid
        if self.mask is not None:  # the weights follow the template down the pyramid
            masks = gaussian_pyramid(self.mask, self.pyramid)
        self._T = T
        self._levels = [
            self._prepare_level(Level(t, canonical_grid(t.shape[:2]), root_w=root_weights(m)))
            for t, m in zip(pyr, masks, strict=True)
        ]  # finest first
        finest = self._levels[0]
        self._smoothed = None  # the finest level with both images smoothed: a stage before it
        if self.image_sigma > 0:
            smooth = gaussian_filter(T, (self.image_sigma, self.image_sigma, 0), mode="nearest")
            self._smoothed = self._prepare_level(Level(smooth, finest.grid, root_w=finest.root_w))
        w2 = 1.0 if finest.root_w is None else float((finest.root_w**2).mean())
        self._total = T.size * w2  # the (weighted) number of residuals
        self._gain = corner_gain(self.warp, self.template_shape, self._unit_covariance())

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
    def _stages(self) -> list[tuple[Level, int]]:
        """``(level, pyramid index of the image)`` in the order they iterate: coarse to fine,
        the smoothed finest level (``image_sigma``; its images last in the pyramid) before the
        finest."""
        stages = [(self._levels[j], j) for j in reversed(range(self.pyramid))]
        if self._smoothed is not None:
            stages.insert(-1, (self._smoothed, self.pyramid))
        return stages

    def _prepare_level(self, level: Level) -> Level:
        return level

    def _unit_covariance(self) -> np.ndarray:
        """Covariance of the final ``p`` per unit residual variance: ``(sd^T W sd)^-1`` of the
        template at the identity, finest level (:mod:`lkstn.classical.uncertainty`)."""
        level = self._levels[0]
        sd = steepest_descent(level.template, self.warp, level.grid)
        if level.root_w is not None:
            sd = sd * level.root_w[:, :, None]
        sd = sd.reshape(-1, self.warp.n_params)
        return unit_covariance(sd.T @ sd)

    def _dof(self) -> int:
        """Parameters fitted to the residual: the warp's (ICLK adds the photometric ones)."""
        return self.warp.n_params

    def _sampled(self, images: np.ndarray) -> np.ndarray:
        """What the sampler reads, ``(B, H, W, K)``: the images (LK adds their gradients)."""
        return images

    def _sampler(self, images: np.ndarray, level: Level) -> Samples:
        """What samples ``I(p)`` at this level (ICLK may sample in single precision)."""
        return Sampler(images, self.warp, level.grid, homogeneous=level.grid_h)

    def _iteration(self, level: Level, sampler: Samples, p: np.ndarray, index: np.ndarray | None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """One iteration up to the update for ``n`` alignments at ``p`` ``(n, P)``: ``(cost (n,),
        dp (n, P), ok (n,))``, ``cost`` the mean squared residual at ``p``, ``ok`` False where the
        step is unusable (a singular system)."""
        raise NotImplementedError

    def _update(self, p: np.ndarray, dp: np.ndarray) -> np.ndarray:
        """How ``dp`` enters ``p``, for ``(n, P)`` arrays."""
        raise NotImplementedError

    def _last_stage(self, images: np.ndarray, run: tuple, index, n_iter: int) -> tuple:
        """After the second look, ``run = (history, cost, stopped, score)`` on the finest level
        ``images``: a stage that only the result chosen gets (``ICLK(polish=True)``)."""
        return run

    # -- alignment --------------------------------------------------------------------------------
    def align(self, image: npt.ArrayLike, p_init: npt.ArrayLike, n_iter: int | None = None,
              *, chunk_size: int | None = None) -> AlignmentResult:  # fmt: skip
        """Align ``image`` to the template from ``p_init``; see the module docstring.

        Parameters
        ----------
        image : ndarray (H, W[, C]) or (B, H, W[, C])
            One image, or a batch (one leading dimension more than the template). With a grey
            template, ``(H, W, 3)`` or ``(H, W, 4)`` is refused as a colour image rather than
            read as a batch of images 3 or 4 pixels wide.
        p_init : array (..., P) for one image, (B, P) or (P,) for a batch
        n_iter : int, optional
            Iterations per pyramid level (default: the constructor's).
        chunk_size : int, optional
            Align at most this many starts at a time (:func:`lkstn.chunks.align_in_chunks`):
            memory bounded by the chunk, the same result.

        Returns
        -------
        AlignmentResult
            ``history`` ``(stages * n_iter + 1, ..., P)``, ``cost`` ``(stages * n_iter + 1,
            ...)``, ``converged``, ``score`` ``(...)``; ``stages``: ``pyramid``, one more for each
            of ``image_sigma``, ``ICLK(refine=True)`` and ``ICLK(polish=True)``. Cost row ``j``
            is measured at the resolution (and smoothing) of the stage that iterates from it.
        """
        if chunk_size is not None:  # align_in_chunks calls back here without chunk_size
            return align_in_chunks(self, image, p_init, chunk_size=chunk_size, n_iter=n_iter)
        n_iter = self.n_iter if n_iter is None else check_int(n_iter, "n_iter", 0)
        images, p, index, batch_shape = parse_images(  # (B, H, W, C), (n, P), index per start
            image, p_init, self._T, self.channel_axis, self.pyramid, self.warp
        )
        p_given = p.copy()
        s = self.image_sigma
        reach = kernel_radius(s)  # the smoothing reads this far beyond the region
        crop = crop_around(images, self.warp, p, self.pyramid, reach) if index is None else None
        if crop is not None:  # the pyramid of the region the starts can reach, not the image
            images, to_crop = crop
            p = change_frame(to_crop, p)
        pyr = gaussian_pyramid(images, self.pyramid, channel_axis=-1, batch_ndim=1)
        if s > 0:  # the smoothed stage's images, pyramid index `pyramid`
            pyr.append(gaussian_filter(pyr[0], (0, s, s, 0), mode="nearest"))
        with np.errstate(all="ignore"):
            history, cost, converged, score = self._run(pyr, p, index, n_iter, self.backtrack)
            low = np.flatnonzero(~(score >= self.second_look))  # NaN scores included
            if low.size and self.second_look > -1:  # the other step rule from the same starts
                at = None if index is None else index[low]
                again = self._run(pyr, p[low], at, n_iter, not self.backtrack)
                better = low[again[3] > score[low]]
                keep = again[3] > score[low]
                history[:, better] = again[0][:, keep]
                for old, new in zip((cost, converged, score), again[1:], strict=True):
                    old[..., better] = new[..., keep]
            run = (history, cost, converged, score)
            history, cost, converged, score = self._last_stage(pyr[0], run, index, n_iter)
        rows, n, P = history.shape
        if crop is not None:  # back to the whole image's canonical frame
            history = change_frame(np.linalg.inv(to_crop), history)
            history[0] = p_given
        converged &= score >= self.min_score  # stopped AND good: a wrong place scores low
        uncertainty = corner_sigma(cost[-1], self._gain, self._total, self._dof())
        if self.max_uncertainty < np.inf:  # and determined: not along a line, not by noise
            converged &= uncertainty <= self.max_uncertainty
        return AlignmentResult(
            history=history.reshape(rows, *batch_shape, P),
            cost=cost.reshape(rows, *batch_shape),
            converged=converged.reshape(batch_shape),
            score=score.reshape(batch_shape),
            uncertainty=uncertainty.reshape(batch_shape),
        )

    def _run(self, pyr, p, index, n_iter: int, backtrack: bool):
        """Every stage from starts ``p`` ``(n, P)`` on the pyramid ``pyr``: ``(history, cost,
        stopped, score)``; ``stopped``: a small last step with finite parameters and cost."""
        (n, P), stages = p.shape, self._stages()
        rows = len(stages) * n_iter + 1
        history, cost = np.empty((rows, n, P)), np.empty((rows, n))
        p, p_start = p.copy(), p.copy()
        history[0] = p
        false = np.zeros(n, bool)
        state = State(~false, false.copy(), false.copy(), false.copy(), np.full(n, np.nan))
        samplers: dict[int, Samples] = {}  # per level: a refining stage reuses the finest one's
        at_start: dict[int, np.ndarray] = {}  # per level: the guard's costs at the starts
        for i, (level, j) in enumerate(stages):  # coarse to fine
            if j not in samplers:
                samplers[j] = self._sampler(self._sampled(pyr[j]), level)
            sampler = samplers[j]
            first = None  # the level's first iteration, when the guard has run it
            if i > 0:  # a coarser level must not leave an alignment worse than its start
                known = stages[i - 1][1] == j  # the same pixels: state.cost is the cost at p
                iteration = partial(self._iteration, level, sampler)  # (p, index) -> (cost, dp, ok)
                first = keep_better(iteration, p, p_start, index, state, (at_start, j, known))
                history[i * n_iter] = p
            state.live, state.done = ~state.failed, state.failed.copy()
            state.converged[:] = False
            rows_i, last = slice(i * n_iter, (i + 1) * n_iter + 1), i == len(stages) - 1
            self._iterate(level, sampler, p, index, state, history[rows_i], cost[rows_i],
                          backtrack, first, self.tol if last else self.handoff_tol,
                          hand_on=not last or getattr(self, "polish", False))  # fmt: skip
            if self.coarse_best and j > 0:  # a coarser level hands on its lowest-cost point
                keep_lowest(p, state, history[rows_i], cost[rows_i])
        score = self._score(sampler, p, index, state.cost)  # the finest level's sampler
        stopped = state.converged & ~state.failed & np.isfinite(state.cost)
        return history, cost, stopped, score

    def _score(self, sampler: Samples, p: np.ndarray, index: np.ndarray | None, cost=None):
        """ZNCC of template and image warped at ``p`` under the mask (:func:`lkstn.score.zncc`),
        ``(n,)``, NaN where ``p`` is not finite; ``cost``: the last stage's at ``p`` (ICLK's)."""
        h, w, C = self._T.shape
        finite = np.isfinite(p).all(-1)
        score = np.full(len(p), np.nan)
        if finite.any():
            at = None if index is None else index[finite]
            warped = sampler(p[finite], at)[..., :C].reshape(-1, h, w, C)
            score[finite] = zncc(self._T, warped, self.mask, channel_axis=-1)
        return score

    def _iterate(self, level, sampler, p, index, state, history, cost, backtrack=False,
                 first=None, tol=None, *, hand_on=False) -> None:  # fmt: skip
        """Gauss-Newton at one level ([BM04] Figs. 1, 3, 4); fills ``history[1:]``, ``cost``.

        With ``backtrack``, a step that raised the cost is taken back and halved: the next
        row is ``update(p_before, dp / 2)`` instead of a step from the worse point. ``first``:
        the first iteration's ``(cost, dp, ok)`` at ``p`` for every alignment, if known;
        ``tol``: the stage's (default ``self.tol``). With ``hand_on`` (a later stage refines; no
        ``backtrack``), a step below ``tol`` is left to the next stage and the alignment stops
        at the point just measured: no pass to measure where the step would have led."""
        tol = self.tol if tol is None else tol
        n, P = p.shape
        before, c_before, dp_before = p.copy(), np.full(n, np.nan), np.zeros((n, P))
        for k in range(len(history)):
            live = np.flatnonzero(state.live)
            if live.size == 0:  # every alignment frozen: the remaining rows repeat the last
                cost[k:] = state.cost
                history[k + 1 :] = p
                break
            at = None if index is None else index[live]
            if k == 0 and first is not None:  # measured by the guard at these points
                state.cost[live], dp, ok = (part[live] for part in first)
            else:
                state.cost[live], dp, ok = self._iteration(level, sampler, p[live], at)  # (1)-(8)
            cost[k] = state.cost  # mean squared residual of history[k]
            if k + 1 == len(history):
                break  # the last row only needs its cost
            retire = state.done[live]  # frozen last iteration: that cost was all they needed
            state.live[live[retire]] = False
            live, dp, ok = live[~retire], dp[~retire], ok[~retire]
            if live.size:
                p_from = p[live]
                if backtrack:  # a step that raised the cost: back, half as far
                    back = state.cost[live] > c_before[live]  # False while c_before is NaN
                    dp[back], ok[back] = 0.5 * dp_before[live[back]], True
                    p_from[back] = before[live[back]]
                    keep = live[~back]
                    before[keep], c_before[keep] = p[keep], state.cost[keep]
                    dp_before[live] = dp
                p_new = self._update(p_from, dp)  # (9) update the warp
                ok &= proper(self.warp, p_new) & np.isfinite(state.cost[live])
                small = ok & (np.linalg.norm(dp, axis=-1) <= tol)
                move = ok & ~small if hand_on and not backtrack else ok
                p[live[move]] = p_new[move]
                state.live[live[ok & ~move]] = False  # stopped where its cost is known
                state.failed[live[~ok]] = True  # frozen at the last good p, cost known
                state.live[live[~ok]] = False
                state.converged[live[small]] = True
                state.done[live[~ok | small]] = True
            history[k + 1] = p
