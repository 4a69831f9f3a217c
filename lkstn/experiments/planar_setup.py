"""The two setups of the planar experiment ([LL17] Sec. 5.1), and its recipe.

A *setup* fixes the image, the box the 50 x 50 template is sampled from, and the unit in which
the perturbation ``sigma`` of a :class:`Recipe` is stated:

``chelsea`` (the default)
    ``skimage.data.chelsea()``, box ``CAT_BOX`` = (150, 90, 249, 189), sigma in **template**
    pixels. The setup of the project's first Table 1 runs, kept so that they stay reproducible.
``paper``
    The image the paper used, the Caffe example ``cat.jpg`` (shipped as
    :func:`lkstn.data.images.caffe_cat`), box ``PAPER_BOX`` = (177, 100, 297, 220) around the
    kitten's face as in [LL17] Fig. 6, sigma in **image** pixels: "i.i.d. Gaussian noise of
    standard deviation sigma (in pixels) to the four corners of the ground-truth box" -- the box
    lives in the image, so its pixels are the image's.

Unit conversion: both boxes are squares of side ``d`` pixels between the corner pixel centres,
sampled by a ``w x w`` template, so one template pixel is ``s = d / (w - 1)`` image pixels
(isotropically) and

.. math:: \\sigma_{template} = \\sigma_{image} / s, \\qquad e_{image} = s \\, e_{template}
   :label: sigma-units

for a sigma and for a corner error (distances scale by ``s`` under the similarity ``p_true``).
For ``paper``: ``s = 120 / 49 = 2.449``, so sigma = 10 image px is 4.08 template px.

How ``PAPER_BOX`` was chosen: the paper gives no coordinates, only the red box of Fig. 6 around
the kitten's face. The eyes of ``cat.jpg`` are near (212, 138) and (262, 141); the box is the
square centred between them horizontally (x = 237) whose top edge is on the brow (y = 100) and
whose bottom edge is below the chin (y = 220): side 120 px. ``fig6a_boxes.png`` of every run draws
it.

Glossary: ``d`` box side in image pixels (corner centre to corner centre), ``s`` image pixels per
template pixel, ``w`` template side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lkstn.problems import CAT_BOX, PlanarProblem, planar_problem
from lkstn.warps import Affine

__all__ = [
    "PAPER_BOX",
    "PAPER_TABLE1",
    "QUICK",
    "SETUPS",
    "SHAPE",
    "PlanarSetup",
    "Recipe",
    "model_name",
    "setup_of",
]

# Published values, for display only (never used in a computation): [LL17] Table 1, test error of
# the planar experiment; the paper does not state the unit.
PAPER_TABLE1 = {
    "c-STN-1": {2.5: 2.699, 5.0: 5.576, 7.5: 9.491, 10.0: 9.218},
    "IC-STN-2": {2.5: 0.615, 5.0: 2.268, 7.5: 5.283, 10.0: 5.502},
    "IC-STN-3": {2.5: 0.434, 5.0: 1.092, 7.5: 2.877, 10.0: 3.020},
    "IC-STN-4": {2.5: 0.292, 5.0: 0.481, 7.5: 1.476, 10.0: 2.287},
    "IC-STN-6": {2.5: 0.027, 5.0: 0.125, 7.5: 0.245, 10.0: 1.305},
}
SHAPE = (50, 50)
PAPER_BOX = (177.0, 100.0, 297.0, 220.0)
"""120 x 120 pixels of the Caffe ``cat.jpg`` around the kitten's face ([LL17] Fig. 6)."""


@dataclass(frozen=True)
class Recipe:
    """Training and evaluation settings of one run of the experiment (recorded in the JSON).

    ``sigmas`` are in the unit of ``setup`` (:data:`SETUPS`): template pixels for ``chelsea``,
    image pixels for ``paper``.
    """

    sigmas: tuple[float, ...] = (2.5, 5.0, 7.5, 10.0)
    depths: tuple[int, ...] = (1, 2, 3, 4, 6)
    n_steps: int = 4000
    lr: float = 2.4e-5
    phases: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03)
    batch_size: int = 100
    n_stats: int = 1000
    n_test: int = 1000
    n_curve: int = 12
    n_sdm: int = 2000
    seed: int = 0
    setup: str = "chelsea"


QUICK = Recipe(
    sigmas=(5.0,), depths=(1, 2, 4), n_steps=480, lr=4e-5, n_test=300, n_curve=8, n_sdm=500
)


def model_name(depth: int) -> str:
    """``c-STN-1`` for one warp, ``IC-STN-K`` otherwise (the rows of [LL17] Table 1)."""
    return "c-STN-1" if depth == 1 else f"IC-STN-{depth}"


@dataclass(frozen=True)
class PlanarSetup:
    """An image, a square box in it and the unit of sigma (see the module docstring)."""

    name: str
    image: str  # what the image is, for the record
    box: tuple[float, float, float, float]
    sigma_unit: str  # "template px" or "image px"
    load: Callable[[], np.ndarray] | None  # the grey image in [0, 1]; None: chelsea()

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.box
        if not np.isclose(x1 - x0, y1 - y0):
            raise ValueError(f"box must be a square (one pixel scale), got {self.box!r}")
        if self.sigma_unit not in ("template px", "image px"):
            raise ValueError(
                f"sigma_unit must be 'template px' or 'image px', got {self.sigma_unit!r}"
            )

    @property
    def image_px_per_template_px(self) -> float:
        """``s = d / (w - 1)``, eq. :eq:`sigma-units`."""
        return (self.box[2] - self.box[0]) / (SHAPE[1] - 1)

    def template_sigma(self, sigma: float) -> float:
        """``sigma`` in this setup's unit -> template pixels (what :mod:`lkstn.perturb` takes)."""
        if not np.isfinite(sigma) or sigma < 0:
            raise ValueError(
                f"sigma must be a finite number >= 0 ({self.sigma_unit}), got {sigma!r}"
            )
        scale = self.image_px_per_template_px if self.sigma_unit == "image px" else 1.0
        return float(sigma) / scale

    def image_px(self, template_px: float) -> float:
        """A distance in template pixels -> image pixels."""
        return float(template_px) * self.image_px_per_template_px

    def problem(self) -> PlanarProblem:
        """The affine problem: grey image, ``p_true`` onto the box, 50 x 50 template."""
        image = None if self.load is None else self.load()
        return planar_problem(SHAPE, warp=Affine(), box=self.box, image=image)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (``planar.json`` records it)."""
        return {
            "name": self.name,
            "image": self.image,
            "box": list(self.box),
            "sigma_unit": self.sigma_unit,
            "image_px_per_template_px": self.image_px_per_template_px,
        }


def _caffe_cat() -> np.ndarray:
    from lkstn.data.images import caffe_cat

    return caffe_cat()


SETUPS = {
    "chelsea": PlanarSetup("chelsea", "skimage.data.chelsea(), grey", CAT_BOX, "template px", None),
    "paper": PlanarSetup(
        "paper", "Caffe examples/images/cat.jpg, grey", PAPER_BOX, "image px", _caffe_cat
    ),
}


def setup_of(recipe: Recipe) -> PlanarSetup:
    """The :class:`PlanarSetup` a recipe names (``ValueError`` naming ``setup`` otherwise)."""
    try:
        return SETUPS[recipe.setup]
    except KeyError:
        raise ValueError(f"setup must be one of {sorted(SETUPS)}, got {recipe.setup!r}") from None
