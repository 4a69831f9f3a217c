"""Inverse compositional Lucas-Kanade ([BM04] Sec. 3.2, Fig. 4; [LL17] eqs. (3)-(6)).

IC-LK swaps the roles of image and template in the linearisation ([LL17] eq. (3)):

    min_dp || I(p) - T(dp) ||^2  ~  || I(p) - T - sd dp ||^2,   sd = dT(0)/dp = grad T . dW/dp(x; 0)

so the steepest-descent images ``sd`` and the Gauss-Newton ``hessian = sd^T sd`` depend on the
template alone and are computed once, at construction. Each iteration is then a warp and a fixed
linear map ([LL17] eqs. (5)-(6)):

    dp = H^-1 sd^T (I(p) - T) = R I(p) + b,       p <- compose(p, inverse(dp)).

With ``photometric="bias"`` or ``"gain-bias"`` the image may also differ from the template by an
offset (and a gain) per channel, as ECC allows (:mod:`lkstn.classical.photometric`): still
computed once from the template, at the same cost per iteration.

With ``gradient_sigma`` the error is projected on the steepest-descent images ``sd_G`` of a
blurred template, and the step inverts the template's own linearisation, ``dp = (sd_G^T sd)^-1
sd_G^T (I(p) - T)``: Newton's method on ``sd_G^T (I(p) - T) = 0``, a wider basin of convergence
with the same fixed point and the same cost per iteration (``benchmarks/README.md``).

Glossary: ``T`` template; ``I(p)`` image sampled at ``W(x; p)``; ``sd_images`` steepest-descent
images; ``hessian`` ``sd^T sd``; ``R, b`` the linear regressor of [LL17] eq. (6).
Frames: ``p`` maps the template's canonical frame into the image's canonical frame; gradients are
per canonical unit (:func:`lkstn.sampling.image_gradients`) so that they pair with
:meth:`lkstn.warps.Warp.jacobian`.

References: [LL17] Lin & Lucey, CVPR 2017. [BM04] Baker & Matthews, IJCV 2004.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lkstn.classical._gauss_newton import MIN_SCORE, RCOND, GaussNewton, Level, singular
from lkstn.classical._sampler import Samples
from lkstn.classical.checks import check_dtype, check_sigma
from lkstn.classical.photometric import Photometric
from lkstn.classical.polish import Polishing
from lkstn.classical.robust import built, clear_built
from lkstn.classical.single import SinglePrecision
from lkstn.classical.systems import steepest_descent
from lkstn.classical.uncertainty import unit_covariance
from lkstn.filters import gaussian_filter
from lkstn.warps import Warp

__all__ = ["ICLK", "clear_built"]


@dataclass(frozen=True)
class _ICLevel(Level):
    sd: np.ndarray  # (h*w*C, P) steepest-descent images, flattened like T.ravel()
    hessian: np.ndarray  # (P, P) = sd_G^T sd (sd^T sd without gradient_sigma)
    R: np.ndarray  # (P, h*w*C) = hessian^-1 sd_G^T
    photometric: Photometric  # the offsets (and gains) it is blind to
    # what each iteration multiplies, in the sampler's precision (the aligner's dtype):
    products: np.ndarray  # rows applied to the error image: R (per channel), Q (photometric)
    flat: np.ndarray  # (1, h*w, C) the template
    root_w_s: np.ndarray | None  # (h*w, 1) square roots of the mask's weights, or None
    total: float  # the number of (weighted) residuals: cost = sum of squares / total


class ICLK(Polishing, SinglePrecision, GaussNewton):
    """Inverse compositional Lucas-Kanade: a fixed regressor applied to ``I(p)``, repeatedly.

    Objective ``min_dp ||I(p) - T(dp)||^2`` ([LL17] eq. (3)); update
    ``dp = H^-1 sd^T (I(p) - T)`` ([LL17] eq. (5)) and ``p <- compose(p, inverse(dp))`` ([BM04]).

    Parameters
    ----------
    template : ndarray (h, w) or (h, w, C)
        The template ``T``; its own ``(h, w)`` canonical frame is the template frame.
    warp : Warp or str
        Translation, Similarity, Affine (default) or Homography.
    n_iter : int
        Iterations (per pyramid level).
    tol : float
        An alignment converges (and stops) when ``||dp||`` (canonical units) falls below ``tol``.
    handoff_tol : float, optional
        ``tol`` of the stages that a later one refines (coarser levels, ``image_sigma``'s, and
        with ``refine`` the smoothed finest level). Default: ``tol``.
    channel_axis : None or -1
        ``-1`` for a multi-channel template (and images).
    pyramid : int
        Number of coarse-to-fine levels (1: no pyramid); see :mod:`lkstn.classical.pyramid`.
    photometric : None, "bias" or "gain-bias"
        Photometric changes between template and image to be blind to, per channel: none (the
        classical IC-LK: sum of squared differences), an offset (projected out), or an offset
        and a gain (zero-mean channels compared at equal contrast: the invariance of OpenCV's
        ECC). The cost is then what the offset (and gain) cannot explain; see
        :mod:`lkstn.classical.photometric`. Same cost per iteration.
    dtype : float64 (default) or float32
        Precision of sampling and of the fixed linear map. ``float32`` samples through
        PyTorch's compiled bilinear ``grid_sample`` (:mod:`lkstn.classical.torch_sampler`;
        about twice as fast on a batch of starts); the warp update and the convergence test
        stay float64.
    gradient_sigma : float
        Standard deviation, in template pixels, of a Gaussian applied to the template for a
        second, smoothed set of steepest-descent images ``sd_G`` (0: none, the classical IC-LK
        of [BM04] and [LL17]); each pyramid level uses it in proportion to its size. The error
        is then projected on ``sd_G`` and the step solves ``sd_G^T (I(p) - T - sd dp) = 0``
        with the template's own ``sd``:
        ``dp = (sd_G^T sd)^-1 sd_G^T (I(p) - T)``, Newton's method on ``sd_G^T (I(p) - T) = 0``
        (with ``sd_G ~ G sd``, Gauss-Newton on the error seen through the Gaussian,
        ``e^T G e``). An exact alignment stays a fixed point and the last iterations converge as
        fast as IC-LK's; the smoothed images see farther, which widens the basin of convergence
        at large displacements (``benchmarks/README.md``: 3 pixels on 50x50 and 100x100
        templates; much wider smoothing stops converging on small templates).
        Still computed once, one fixed linear map per level: :meth:`regressor` and
        ``ICSTN.from_iclk`` apply.
    gradient_sigma_max : float, optional
        Most smoothing of any level (its pixels), not its share (``ICLK.robust``: over 128 px).
    mask : ndarray (h, w), optional
        Template weights (0 ignores a pixel): weighted least squares, ``H = sd^T W sd`` and
        ``sd^T W e``, also through the photometric projection and at every pyramid level.
    min_score : float
        ``converged`` also requires the final score (ZNCC of the template and the warped image
        under the mask, ``AlignmentResult.score``) at or above this (default 0.5).
    refine : bool
        With ``gradient_sigma``: after the smoothed levels, iterate the finest level once more
        (``n_iter`` more rows of history) with the template's own steepest-descent images,
        plain Gauss-Newton. The smoothed step solves ``sd_G^T (I(p) - T) = 0``, whose zeros
        include points where ``I(p) - T`` is not at a minimum (on photographs: a few pixels
        off with a correlation of 0.9, ``docs/registration.md``); the plain step starts from
        there, inside its own basin, and ends at the minimum.
    backtrack : bool
        Take back a step that raised the cost (at that level) and try half of it instead: the
        cost of the accepted iterates never rises. Off by default: on photographs an uphill
        step sometimes crosses a ridge into the right basin (``docs/registration.md``).
    second_look : float
        Alignments whose final score is below this are run again from their start with the other
        step rule (``backtrack`` flipped), keeping the result with the higher score (its whole
        history). ``-1`` (default): never.
    polish : bool
        End with a forwards additive stage at the finest level (:mod:`lkstn.classical.polish`;
        ``n_iter`` more rows of history): it stops only where the cost is stationary, not at
        IC-LK's other fixed points (on photographs a pixel or more off, ``docs/registration.md``).
    coarse_best : bool
        Each level coarser than the finest hands the next the lowest-cost point it visited
        (at its own resolution), not its last: the smoothed step is not a descent step, and on
        a coarse level it can walk uphill far from the start (``docs/registration.md``).
    max_uncertainty : float
        ``converged`` also requires ``AlignmentResult.uncertainty`` (the predicted RMS spread
        of the corners, template pixels, :mod:`lkstn.classical.uncertainty`) at or below this
        (default ``inf``: not checked).
    image_sigma : float
        Standard deviation, in pixels, of a Gaussian applied to both the template and the
        image for one more stage at the finest resolution, before the finest level's (0, the
        default: none): a level of the scale space between the pyramid's first coarse level
        and the images, as ECC's ``gaussFiltSize`` smooths both images. It widens the basin at
        the finest level (``docs/registration.md``); the stages after it, and the score, see
        the images as given, so the alignment still ends at their cost's minimum.

    Attributes
    ----------
    sd_images : ndarray (h, w, P) or (h, w, C, P)
        ``dT(0)/dp`` at the finest level.
    hessian : ndarray (P, P)
        ``sd^T sd``, or ``sd_G^T sd`` with ``gradient_sigma``.

    Raises
    ------
    ValueError
        For a template whose Hessian is singular (flat or one-dimensional texture).

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn import ICLK, Affine, warp_image
    >>> yy, xx = np.mgrid[0:60, 0:80]
    >>> image = np.sin(xx / 5.0) * np.cos(yy / 7.0)
    >>> p_true = np.array([-0.5, 0.0, 0.1, 0.0, -0.5, 0.0])  # the central half of the image
    >>> template = warp_image(image, Affine(), p_true, (30, 40))
    >>> p_init = p_true + np.array([0.0, 0.0, 0.03, 0.0, 0.0, -0.02])
    >>> result = ICLK(template, Affine(), n_iter=30, tol=1e-8).align(image, p_init)
    >>> bool(result.converged), bool(np.allclose(result.p, p_true, atol=1e-6))
    (True, True)

    The same image at half the contrast and brighter: blind to offset and gain.

    >>> relit = 0.5 * image + 0.3
    >>> aligner = ICLK(template, Affine(), n_iter=30, tol=1e-8, photometric="gain-bias")
    >>> result = aligner.align(relit, p_init)
    >>> bool(result.converged), bool(np.allclose(result.p, p_true, atol=1e-6))
    (True, True)
    """

    def __init__(
        self,
        template: npt.ArrayLike,
        warp: Warp | str = "affine",
        n_iter: int = 30,
        tol: float = 1e-4,
        *,
        channel_axis: int | None = None,
        pyramid: int = 1,
        gradient_sigma: float = 0.0,
        gradient_sigma_max: float | None = None,
        photometric: str | None = None,
        dtype: npt.DTypeLike = np.float64,
        mask: npt.ArrayLike | None = None,
        min_score: float = MIN_SCORE,
        refine: bool = False,
        backtrack: bool = False,
        second_look: float = -1.0,
        polish: bool = False,
        coarse_best: bool = False,
        max_uncertainty: float = np.inf,
        image_sigma: float = 0.0,
        handoff_tol: float | None = None,
    ) -> None:
        self.dtype = check_dtype(dtype)  # float64 or float32
        self.photometric = photometric  # checked by Photometric.of, in _prepare_level
        self.gradient_sigma = check_sigma(gradient_sigma, "gradient_sigma")  # for _prepare_level
        cap = gradient_sigma_max  # None: no limit
        self.gradient_sigma_max = None if cap is None else check_sigma(cap, "gradient_sigma_max")
        self.refine, self.polish = bool(refine) and self.gradient_sigma > 0, bool(polish)
        super().__init__(
            template, warp, n_iter, tol, channel_axis=channel_axis, pyramid=pyramid, mask=mask,
            min_score=min_score, backtrack=backtrack, second_look=second_look,
            coarse_best=coarse_best, max_uncertainty=max_uncertainty, image_sigma=image_sigma,
            handoff_tol=handoff_tol,
        )  # fmt: skip
        self._refined = None  # the finest level without smoothing: plain Gauss-Newton
        if self.refine:
            finest = self._levels[0]
            self._refined = self._prepare_level(
                Level(finest.template, finest.grid, root_w=finest.root_w), sd=finest.sd
            )

    # -- [BM04] Fig. 4: precompute once, then iterate and update ---------------------------------
    def _prepare_level(self, level: Level, sd: np.ndarray | None = None) -> _ICLevel:
        """Precompute, [BM04] Fig. 4 steps (3)-(6): the steepest-descent images and Hessian
        of the template at this level, and the fixed linear map ``R`` of [LL17] eq. (5).
        Given ``sd`` (the finest level's, for the refining stage): plain, no smoothing."""
        J = (self.warp, level.grid) if sd is None else None  # the Jacobian dW/dp(x; 0) of step 4
        T = level.template
        C = T.shape[-1]
        # weighted least squares: rows scaled by sqrt(w), so that H = sd^T W sd, sd^T W e
        r = 1.0 if level.root_w is None else np.repeat(level.root_w, C, axis=0)  # (h*w*C, 1)
        photometric = Photometric.of(T, self.photometric, level.root_w)
        if J is not None:  # blind to offsets (and gains); unchanged for None
            sd = photometric.project(r * steepest_descent(T, *J).reshape(-1, self.warp.n_params))
        sd_G = sd  # the images the error is projected on
        if J is not None and self.gradient_sigma > 0:  # template pixels: narrower when coarser
            s = self.gradient_sigma * (T.shape[1] - 1) / max(self.template_shape[1] - 1, 1)
            s = s if self.gradient_sigma_max is None else min(s, self.gradient_sigma_max)
            T_G = gaussian_filter(T, (s, s, 0), mode="reflect")
            sd_G = photometric.project(r * steepest_descent(T_G, *J).reshape(sd.shape))
        hessian = sd_G.T @ sd  # [BM04] Fig. 4 step 6; d(sd_G^T (I(p) - T(dp)))/d dp
        if singular(sd.T @ sd) or singular(sd_G.T @ sd_G) or np.linalg.cond(hessian) > 1 / RCOND:
            raise ValueError(
                f"template of shape {self.template.shape} has a singular Gauss-Newton Hessian at "
                f"{level.template.shape[:2]} pixels (flat or one-dimensional texture): it cannot "
                f"be aligned with {self.warp!r}"
            )
        R = np.linalg.solve(hessian, sd_G.T)  # (P, h*w*C), [LL17] eq. (5)
        h, w, C = T.shape
        r = None if level.root_w is None else level.root_w.astype(self.dtype)
        total = h * w * C if r is None else float((r.astype(np.float64) ** 2).sum()) * C
        return _ICLevel(
            level.template, level.grid, sd, hessian, R, photometric,
            photometric.products(R).astype(self.dtype, copy=False),
            T.reshape(1, h * w, C).astype(self.dtype),
            r, total, root_w=level.root_w,
        )  # fmt: skip

    def _unit_covariance(self) -> np.ndarray:
        level = self._levels[0]  # sd: weighted, blind to offsets (and gains)
        if self.gradient_sigma > 0 and not (self.refine or self.polish):
            return level.R @ level.R.T  # it stops where dp = R e vanishes: not least squares
        return unit_covariance(level.sd.T @ level.sd)

    def _dof(self) -> int:
        fitted = {None: 0, "bias": 1, "gain-bias": 2}[self.photometric]  # per channel
        return self.warp.n_params + fitted * self._T.shape[-1]

    def _iteration(self, level: _ICLevel, sampler: Samples, p: np.ndarray, index: np.ndarray | None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """Iterate, [BM04] Fig. 4 steps (1), (2), (7) and (8), block by block of pixels (``I(p)``
        is never stored whole): ``(cost, dp, ok)`` for ``n`` alignments."""
        T, r, fixed = level.flat, level.root_w_s, level.products
        C = T.shape[-1]
        sq, proj = np.zeros((len(p), C)), np.zeros((len(p), len(fixed)))
        for s, t, Ip in sampler.blocks(p, index):  # (1) I(W(x; p)), (n, pixels of block t, C)
            Ip -= T[:, t]  # (2) the error image I(p) - T
            if r is not None:
                Ip *= r[t]  # weighted: sqrt(w) (I(p) - T)
            if C == 1:  # the 2-D form is a fast dot product per row
                sq[s, 0] += np.einsum("nq,nq->n", Ip[..., 0], Ip[..., 0])
            else:
                sq[s] += np.einsum("nqc,nqc->nc", Ip, Ip)
            rows = fixed[:, t.start * C : t.stop * C]  # columns of these pixels
            proj[s] += (rows @ Ip.reshape(len(Ip), -1).T).T  # (7)-(8) H^-1 sd^T (I(p) - T)
        ssd, dp = level.photometric.finish(proj, sq)  # offsets (and gains) taken out
        return ssd / level.total, dp, np.isfinite(dp).all(-1)

    def _score(self, sampler: Samples, p: np.ndarray, index: np.ndarray | None, cost=None):
        """The final score, read from the last stage's ``cost`` at ``p`` where the photometric
        model gives it (float64, no mask: :meth:`Photometric.correlation`), else measured; also
        measured where it is within 1e-6 of 0 (a flat warped image: the cost's rounding)."""
        finest, rho = self._levels[0], None
        if cost is not None and self.mask is None and self.dtype == np.float64:
            rho = finest.photometric.correlation(cost * finest.total)  # None: it cannot
        with np.errstate(invalid="ignore"):  # a flat warped image: rho is rounding, or NaN
            sure = rho is not None and np.isfinite(rho + p.sum(-1)) & (np.abs(rho) > 1e-6)
        again = np.flatnonzero(~sure) if rho is not None else np.arange(len(p))
        score = np.full(len(p), np.nan) if rho is None else rho
        if again.size:  # a flat or non-finite warped image, a non-finite p
            score[again] = super()._score(
                sampler, p[again], None if index is None else index[again]
            )
        return score

    def _update(self, p: np.ndarray, dp: np.ndarray) -> np.ndarray:
        """Update, [BM04] Fig. 4 step (9): ``p <- p o dp^-1``."""
        return compose_inverse(self.warp, p, dp)  # p <- p o dp^-1, [BM04] Fig. 4 step 9

    # -- around the box ---------------------------------------------------------------------------
    def _stages(self) -> list[tuple[Level, int]]:
        stages = super()._stages()
        return stages + [(self._refined, 0)] if self.refine else stages

    @classmethod
    def robust(cls, template: npt.ArrayLike, *, warp: Warp | str = "affine",
               mask: npt.ArrayLike | None = None, **overrides: object) -> ICLK:  # fmt: skip
        """ICLK configured for real photographs: see :mod:`lkstn.classical.robust`.

        Coarse to fine as deep as the template allows, smoothing scaled to the template, blind
        to gain and offset; ``overrides`` replace any of these settings (or add others, e.g.
        ``channel_axis=-1``). The paper's IC-LK stays ``ICLK``'s default.

        The last ``BUILT_SIZE`` aligners built here are kept: the same template (same pixels),
        warp, mask and overrides again returns a shallow copy of the one built, sharing its
        precomputed levels (which ``align`` only reads), without building it again.

        Examples
        --------
        >>> import numpy as np
        >>> from lkstn import ICLK, Affine, warp_image
        >>> yy, xx = np.mgrid[0:120, 0:160]
        >>> image = np.sin(xx / 5.0) * np.cos(yy / 7.0) + 0.2 * np.sin(xx * yy / 900.0)
        >>> p_true = np.array([-0.5, 0.0, 0.1, 0.0, -0.5, 0.0])
        >>> template = warp_image(image, Affine(), p_true, (64, 64))
        >>> aligner = ICLK.robust(template)
        >>> result = aligner.align(2.0 * image + 1.0, p_true + [0, 0, 0.05, 0, 0, -0.04])
        >>> bool(result.converged), bool(np.allclose(result.p, p_true, atol=1e-4))
        (True, True)
        """
        return built(cls, template, warp, mask, overrides)

    def __repr__(self) -> str:
        extra = [f"gradient_sigma={self.gradient_sigma}"] if self.gradient_sigma else []
        extra += [f"gradient_sigma_max={m}" for m in [self.gradient_sigma_max] if m is not None]
        extra += [f"photometric={self.photometric!r}"] if self.photometric else []
        extra += ["dtype='float32'"] if self.dtype == np.float32 else []
        extra += [f"{k}=True" for k in ("refine", "polish", "coarse_best") if getattr(self, k)]
        extra += [f"handoff_tol={self.handoff_tol}"] if self.handoff_tol != self.tol else []
        extra += ["mask=..."] if self.mask is not None else []
        return super().__repr__()[:-1] + "".join(", " + e for e in extra) + ")"

    @property
    def sd_images(self) -> np.ndarray:
        """Steepest-descent images ``dT(0)/dp``, ``(h, w, P)`` or ``(h, w, C, P)`` (with
        ``photometric``, projected: orthogonal to the offset and gain images)."""
        sd = self._levels[0].sd.reshape(*self._T.shape, -1)
        return sd[..., 0, :] if self.channel_axis is None else sd.copy()

    @property
    def hessian(self) -> np.ndarray:
        """Gauss-Newton Hessian ``sd^T sd`` (``sd_G^T sd`` with ``gradient_sigma``), ``(P, P)``,
        at the finest level."""
        return self._levels[0].hessian.copy()

    def regressor(self) -> tuple[np.ndarray, np.ndarray]:
        """``(R, b)`` with ``dp = R @ I(p).ravel() + b`` ([LL17] eq. (6)), finest level.

        ``R = H^-1 sd^T`` is ``(P, h*w*C)`` and ``b = -R @ T.ravel()`` is ``(P,)``; ``I(p)`` is
        ``warp_image(image, warp, p, template_shape, channel_axis=channel_axis)``. With
        ``photometric="bias"`` ``b`` is zero (``R`` is blind to offsets); with ``"gain-bias"``
        the step is not linear in ``I(p)`` and this raises ``ValueError``.
        """
        if self.photometric == "gain-bias":
            raise ValueError(
                'with photometric="gain-bias" the step is not linear in I(p): each channel is '
                "scaled to the template's contrast first (lkstn.classical.photometric)"
            )
        R = self._levels[0].R  # applies to sqrt(w) (I(p) - T) with a mask
        if self.mask is not None:
            R = R * np.repeat(self._levels[0].root_w[:, 0], self._T.shape[-1])
        return R.copy(), -R @ self._T.ravel()  # [LL17] eq. (6)


def compose_inverse(warp: Warp, p: np.ndarray, dp: np.ndarray) -> np.ndarray:
    """``compose(p, inverse(dp))`` for ``(n, P)`` arrays; NaN rows where ``M(dp)`` is singular."""
    dp_inv = warp.inverse_matrix(dp, check=False)  # (n, 3, 3), NaN where singular
    return warp.params(warp.matrix(p, check=False) @ dp_inv, check=False)
