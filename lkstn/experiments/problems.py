"""Planar problems with exact ground truth, and pixel-frame warp matrices: their former import path.

The problems live in :mod:`lkstn.problems` (``planar_problem``, ``PlanarProblem``, ``box_warp``,
``CAT_BOX``), the pixel-frame matrices in :mod:`lkstn.pixels` (``pixel_from_canonical``,
``pixel_matrix``, ``params_from_pixel_matrix``); both are re-exported here so that
``from lkstn.experiments.problems import planar_problem`` keeps working.
"""

from __future__ import annotations

from lkstn.pixels import params_from_pixel_matrix, pixel_from_canonical, pixel_matrix
from lkstn.problems import CAT_BOX, PlanarProblem, box_warp, planar_problem

__all__ = [
    "CAT_BOX",
    "PlanarProblem",
    "box_warp",
    "params_from_pixel_matrix",
    "pixel_from_canonical",
    "pixel_matrix",
    "planar_problem",
]
