"""``ICLK.robust``: one configuration of IC-LK for real photographs, chosen by measurement.

The paper's IC-LK ([LL17], [BM04]) compares raw pixels at one resolution. On photographs a user
brings, three things break it: the start is farther than its basin (the basin of a linearisation
is about the size of the template's finest texture), the lighting differs, and the template
size varies from 16 to 256 pixels, so that any setting in pixels is right for one size only.
``robust_settings`` therefore scales everything with the template:

* ``pyramid``: coarse to fine, as many levels as keep the coarsest template at least
  ``COARSEST`` pixels a side (a 16 px template gets one level, 128 px four).
* ``gradient_sigma``: the steepest-descent images are smoothed by a Gaussian of
  ``SMOOTHING`` times the template's side (applied in proportion at every level).
* ``photometric="gain-bias"``: blind to a gain and an offset, as ECC is.

The evidence behind each constant (convergence per cell of ``benchmarks/registration.py``,
pooled over photographs, against plain IC-LK and OpenCV's ECC) is in ``docs/registration.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["COARSEST", "SMOOTHING", "robust_settings"]

COARSEST = 16
"""Smallest side (pixels) of the template at the coarsest pyramid level."""

SMOOTHING = 0.04
"""``gradient_sigma`` as a fraction of the template's smaller side minus one."""


def robust_settings(template_shape: tuple[int, int]) -> dict[str, Any]:
    """Keyword arguments of :class:`lkstn.ICLK` for a template of ``template_shape``.

    Examples
    --------
    >>> robust_settings((64, 64))["pyramid"], robust_settings((16, 16))["pyramid"]
    (3, 1)
    """
    from lkstn.classical.pyramid import level_shape

    side = min(int(template_shape[0]), int(template_shape[1]))
    levels = 1
    while min(level_shape(template_shape, levels)) >= COARSEST:
        levels += 1
    return {
        "pyramid": levels,
        "gradient_sigma": SMOOTHING * max(side - 1, 1),
        "photometric": "gain-bias",
        "n_iter": 50,
        "tol": 1e-4,
    }
