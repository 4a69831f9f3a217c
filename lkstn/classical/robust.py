"""``ICLK.robust``: one configuration of IC-LK for real photographs, chosen by measurement.

The paper's IC-LK ([LL17], [BM04]) compares raw pixels at one resolution. On photographs a user
brings, three things break it: the lighting differs (plain IC-LK converges on 0-50 % of relit
starts of 16-64 px templates), the start is farther than the basin of one linearisation, and the
template size varies from 16 to 256 pixels, so that any setting in pixels suits one size only
(``gradient_sigma=3`` is a fifth of a 16 px template and blurs away its texture).
``robust_settings`` therefore scales everything with the template:

* ``photometric="gain-bias"``: blind to a gain and an offset, as ECC is.
* ``pyramid``: coarse to fine, as many levels as keep the coarsest template at least
  ``COARSEST`` = 24 pixels a side (16 and 32 px templates: one level; 64 px: two; 128 px:
  three). The aligners restart an alignment from its start when a coarser level left it worse
  there (:mod:`lkstn.classical._gauss_newton`); without that, 16 px coarsest levels let
  homographies walk off. With the guard and the second look, 16 px met the target in 2 cells
  more on the tuning seed but in 7 fewer on the fresh one (``docs/registration.md``): 24 kept.
* ``gradient_sigma``: the steepest-descent images are smoothed by a Gaussian of
  ``SMOOTHING`` = 0.04 times the template's side minus one (0.6 px at 16 px, 5 px at 128 px),
  in proportion at every level: 3 points more converged on average than none. No level is
  smoothed by more than the 128 px value (``SMOOTHING_SIDE``, the largest size it was tuned on;
  ``gradient_sigma_max``): on 256 px templates the finest level's 10 px smoothing led most
  starts on one photo into a false minimum 7-10 px off (score 0.97 on a clean image). With
  the limit, 256 px templates met the target in 54 of 54 cells on three seeds instead of 50,
  8-9 points more often on average on two, no cell lower (``docs/registration.md``). An
  explicit ``gradient_sigma`` is not limited.
* ``image_sigma``: a template with no coarse level (24 to 47 px) first aligns on both images
  smoothed by a Gaussian of ``PREFILTER`` = 0.035 times its side minus one, at most
  ``PREFILTER_MAX`` = 1.1 px (ECC's default 5x5 kernel), a scale-space level in place of the
  coarse one; the finest level and the stages after it see the images as given
  (:func:`smoothed_stage`). 32 px cells meeting the target: 9 to 14 of 18 on seed 0 (eight
  photos), 15 to 18 on seed 3, the same on seeds 5 and 7; none lost. Not at 16 px (mixed, and a
  start walked to a look-alike 49 px away), nor where a coarse level exists (no cell crossed
  its target, 20-30 % more time per pair).
* ``refine=True``: a last plain Gauss-Newton stage at the finest level, since the smoothed step
  also stops at spurious zeros a few pixels off.
* ``polish``: after the second look, a forwards additive stage at the finest level
  (ECC's step, :mod:`lkstn.classical.polish`). IC-LK, smoothed or plain, also stops where
  the template's steepest-descent images are orthogonal to the error without a minimum there:
  on 16 px homographies every start of a photo ended 1.06 px off on a clean image where ECC
  ended 0.01-0.04 px off; on a low-contrast 128 px patch the IC iterates walked uphill to 9 px off.
  The forwards step stops only where the cost is stationary (tuning seed: 6 cells more).
  It is also 19-28 % of the time per pair at 64-256 px, mostly confirming a minimum already
  reached; ``polish=False`` (``lkstn align --no-polish``) gives that time back for up to 8.4
  points fewer far starts converged at 64-128 px, every cell still at or above ECC on four seeds.
  Only for templates up to ``POLISH_SIDE`` = 128 px: at 256 px (three seeds) and 192 px (one)
  it changed no cell's verdict and no cell by more than one start in 60, for 23-30 % of a pair.
* ``coarse_best=True``: each level coarser than the finest hands on the lowest-cost point it
  visited, not its last; the smoothed step is not a descent step, and on a 128 px noisy patch
  the coarsest level walked uphill from 6 to 45 px off at every step (seed 3: one cell more,
  none fewer on seeds 0 and 5). Not at the finest level, where it lost noisy cells.
* ``second_look``: an alignment whose final score (ZNCC) is below ``SECOND_LOOK`` = 0.8 is run
  again from its start with the other step rule (backtracking: a step that raised the cost is
  taken back and halved), and the result with the higher score is kept. On a template of low
  contrast (``rocket``, 128 px, sigma 1) the first full-resolution step from a start a few
  pixels off raised the cost and walked 26 px away (score 0.70) where ECC converged; backtracking
  alone converges there but loses starts at sigma 5 that cross a ridge on the way (seed 0: 4
  cells fewer). Right alignments score >= 0.8 (``docs/registration.md``), so one pair that
  aligns costs nothing more.
* ``min_score=0.8`` (the same line: ``converged`` needs a score of at least ``SECOND_LOOK``):
  on the tuning seed it halves the false positives of ``converged`` against 0.5 (13 % of the
  wrong alignments against 28 %) with the same false negatives (2 of 3148 right ones).
* ``max_uncertainty=0.5``: ``converged`` also needs the predicted spread of the corners
  (``AlignmentResult.uncertainty``, :mod:`lkstn.classical.uncertainty`) at or below half a
  template pixel. The score cannot tell a place far along a line (an edge, a vessel) from the
  truth, nor a nearly flat template on a noisy image; on the tuning seed the rule cuts the
  false positives of ``converged`` from 21.4 % to 13.0 % of the wrong alignments with no more
  false negatives (none of 3194), where 0.3 px would leave none but lose 3.3 % of the right ones.
* ``n_iter=50`` per stage, ``tol=1e-4`` (canonical units) at every stage. A looser
  ``handoff_tol=1e-3`` for the stages that a later one refines saved 2-11 % of the time per
  pair (``--timing`` with and without ``--robust handoff_tol=0.001``, 2026-12-06 18:27 UTC, the
  2-core AMD EPYC family 26), but on a low-contrast photo (``rocket``, 64 px homographies,
  seed 3) 6-9 of its 12 starts per cell then ended 10 px off with a score of 0.91 (at sigma
  1: 9, against none with ``tol`` throughout; ``--robust handoff_tol=0.001``; seed 0 gained a
  little at 16 px homographies): not used.

The measurements behind each (``benchmarks/registration.py``, per cell against plain IC-LK and
OpenCV's ECC) are in ``docs/registration.md``.
They were tuned on four photographs (astronaut, camera, coffee, chelsea) with seed 0 (seeds 1
and 2 served in diagnoses), and confirmed with seed 3 on those and four held-out ones (rocket,
brick, coins, text).

References: [LL17] Lin & Lucey, CVPR 2017. [BM04] Baker & Matthews, IJCV 2004.
"""

from __future__ import annotations

import copy
import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from lkstn.warps import Warp

__all__ = [
    "BUILT_SIZE",
    "COARSEST",
    "MAX_UNCERTAINTY",
    "PREFILTER",
    "POLISH_SIDE",
    "PREFILTER_MAX",
    "SECOND_LOOK",
    "SMOOTHING",
    "SMOOTHING_SIDE",
    "built",
    "built_key",
    "clear_built",
    "robust_settings",
    "smoothed_stage",
]

_BUILT: dict[tuple[type, tuple], Any] = {}  # (class, built_key) -> aligner, oldest first

COARSEST = 24
"""Smallest side (pixels) of the template at the coarsest pyramid level."""

SMOOTHING = 0.04
"""``gradient_sigma`` as a fraction of the template's smaller side minus one."""

SMOOTHING_SIDE = 128
"""Level side (pixels) whose smoothing no level exceeds (``gradient_sigma_max``)."""

POLISH_SIDE = 128
"""Largest template side (pixels) that gets the forwards stage (``polish``) by default."""

PREFILTER = 0.035
"""``image_sigma`` as a fraction of the template's smaller side minus one, at most
``PREFILTER_MAX``, for templates of one pyramid level only (:func:`smoothed_stage`)."""

PREFILTER_MAX = 1.1
"""Largest ``image_sigma`` (pixels): the standard deviation of ECC's default 5x5 Gaussian."""

BUILT_SIZE = 16
"""How many aligners ``ICLK.robust`` keeps, to return again for the same template."""

SECOND_LOOK = 0.8
"""Final score below which an alignment is run again with the other step rule (``ICLK``'s
``second_look``)."""

MAX_UNCERTAINTY = 0.5
"""Predicted corner spread (template pixels) above which an alignment is not ``converged``."""


def robust_settings(
    template_shape: tuple[int, int], *, coarsest: int = COARSEST, smoothing: float = SMOOTHING
) -> dict[str, Any]:
    """Keyword arguments of :class:`lkstn.ICLK` for a template of ``template_shape``.

    ``coarsest`` and ``smoothing`` default to the module's constants (the benchmark varies
    them to measure their effect).

    Examples
    --------
    >>> robust_settings((64, 64))["pyramid"], robust_settings((16, 16))["pyramid"]
    (2, 1)
    >>> [robust_settings((s, s))["gradient_sigma_max"] for s in (16, 128, 256)]
    [None, None, 5.08]
    >>> [robust_settings((s, s))["polish"] for s in (16, 128, 256)]
    [True, True, False]
    """
    from lkstn.classical.pyramid import level_shape

    side = min(int(template_shape[0]), int(template_shape[1]))
    levels = 1
    while min(level_shape(template_shape, levels)) >= coarsest:
        levels += 1
    return {
        "pyramid": levels,
        "gradient_sigma": smoothing * max(side - 1, 1),
        # None where no level can exceed it: those templates' levels are smoothed as before
        "gradient_sigma_max": smoothing * (SMOOTHING_SIDE - 1) if side > SMOOTHING_SIDE else None,
        "image_sigma": smoothed_stage(side, levels, coarsest),
        "photometric": "gain-bias",
        "refine": True,
        "polish": side <= POLISH_SIDE,
        "coarse_best": True,
        "second_look": SECOND_LOOK,
        "min_score": SECOND_LOOK,
        "max_uncertainty": MAX_UNCERTAINTY,
        "n_iter": 50,
        "tol": 1e-4,
    }


def smoothed_stage(side: int, levels: int, coarsest: int = COARSEST) -> float:
    """``image_sigma`` for a template of ``side`` pixels with ``levels`` pyramid levels: the
    smoothed stage stands in for the coarse level that a template of ``coarsest`` to twice
    that cannot have (none below, none where a coarse level exists)."""
    return min(PREFILTER * (side - 1), PREFILTER_MAX) if levels == 1 and side >= coarsest else 0.0


def built_key(
    template: npt.ArrayLike,
    warp: Warp | str,
    mask: npt.ArrayLike | None,
    overrides: dict[str, object],
) -> tuple | None:
    """What makes two ``ICLK.robust`` aligners the same: a digest of the template's and the
    mask's pixels, the warp and the overrides; None when something is not hashable."""

    def digest(a: npt.ArrayLike | None) -> tuple | None:
        if a is None:
            return None
        a = np.ascontiguousarray(a)
        return a.shape, a.dtype.str, hashlib.blake2b(a.view(np.uint8), digest_size=16).digest()

    try:
        key = (digest(template), repr(warp), digest(mask), tuple(sorted(overrides.items())))
        hash(key)
    except (TypeError, ValueError):  # an unhashable override, or an array that is not numbers
        return None
    return key


def built(cls: type, template: npt.ArrayLike, warp: Warp | str, mask: npt.ArrayLike | None,
          overrides: dict[str, object]):  # fmt: skip
    """``cls(template, warp, mask=mask, **robust_settings(...) | overrides)``, or a shallow copy
    of the one built for the same :func:`built_key` among the last ``BUILT_SIZE`` (sharing its
    precomputed levels, which ``align`` only reads)."""
    key = built_key(template, warp, mask, overrides)
    if key is not None and (cls, key) in _BUILT:
        return copy.copy(_BUILT[cls, key])
    settings = robust_settings(np.shape(template)[:2])
    if "gradient_sigma" in overrides:  # the caller's smoothing, as given
        settings["gradient_sigma_max"] = None
    settings.update(overrides)
    aligner = cls(template, warp, mask=mask, **settings)
    if key is not None:
        _BUILT.pop(next(iter(_BUILT))) if len(_BUILT) >= BUILT_SIZE else None
        _BUILT[cls, key] = aligner
    return copy.copy(aligner)


def clear_built() -> None:
    """Forget the aligners ``ICLK.robust`` keeps (the next call for any template builds anew)."""
    _BUILT.clear()
