"""Planar alignment problems with exact ground truth: the fixture of tests, benchmarks and examples.

A *planar problem* is an image, a box in it, and a template that **is** ``I(p_true)``: the
template is cut out of the image with :func:`lkstn.sampling.warp_image` at ``p_true``, the warp
that maps the template's canonical frame onto the box. The truth is therefore exact (zero
residual at ``p_true``) and any error an aligner reports is its own. Raw pixels throughout: a
template smaller than its box is a subsampled view of it, as in [LL17] Table 1.

The default image is ``skimage.data.chelsea()`` (the cat, 300 x 451), grey
(``skimage.color.rgb2gray``) or RGB in ``[0, 1]``; the default box is the 100 x 100 pixels
around the cat's left eye and the bridge of its nose, ``CAT_BOX``. This module needs NumPy and
scikit-image only (no torch, nothing of :mod:`lkstn.experiments`, which re-exports it as
``lkstn.experiments.problems``).

Glossary: ``box`` ``(x0, y0, x1, y1)``, pixel centres of the template's top-left and
bottom-right corners in the image; ``p_true`` the canonical warp onto the box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lkstn.sampling import pixel_to_canonical, warp_image
from lkstn.warps import Warp, warp_from_name

__all__ = ["CAT_BOX", "PlanarProblem", "box_warp", "planar_problem"]

CAT_BOX = (150.0, 90.0, 249.0, 189.0)
"""100 x 100 pixels of ``chelsea()``: the left eye, fur and the bridge of the nose."""


@dataclass(frozen=True)
class PlanarProblem:
    """An image, the truth ``p_true`` and the template ``I(p_true)``."""

    image: np.ndarray  # (H, W) or (H, W, 3)
    template: np.ndarray  # (h, w) or (h, w, 3)
    p_true: np.ndarray  # (P,)
    warp: Warp
    box: tuple[float, float, float, float]
    channel_axis: int | None

    @property
    def template_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the template."""
        return tuple(self.template.shape[:2])


def box_warp(
    warp: Warp | str, box: Sequence[float] | np.ndarray, image_shape: tuple[int, int]
) -> np.ndarray:
    """Parameters that map the template's canonical corners onto ``box`` in the image.

    Raises ``ValueError`` when the family cannot express the box (a translation cannot scale).
    """
    warp = warp_from_name(warp)
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {box!r}")
    corners_pix = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    dst = pixel_to_canonical(corners_pix, image_shape)  # (4, 2)
    src = warp.corners()
    p = warp.fit(src, dst)
    if not np.allclose(warp.apply(p, src), dst, atol=1e-9):
        raise ValueError(f"{warp!r} cannot map the template frame onto box {box!r}")
    return p


def _cat(color: bool) -> np.ndarray:
    from skimage import color as skcolor
    from skimage import data, img_as_float

    rgb = img_as_float(data.chelsea())
    return rgb if color else skcolor.rgb2gray(rgb)


def planar_problem(
    template_shape: tuple[int, int] = (50, 50),
    *,
    warp: Warp | str = "affine",
    box: Sequence[float] | np.ndarray = CAT_BOX,
    color: bool = False,
    image: np.ndarray | None = None,
) -> PlanarProblem:
    """The cat (or ``image``) with ``template = warp_image(image, warp, p_true, template_shape)``.

    Parameters
    ----------
    template_shape : (h, w)
    warp : Warp or str
        Affine or Homography (a box needs independent x and y scales).
    box : (x0, y0, x1, y1)
        Pixel centres of the template corners in the image.
    color : bool
        RGB ``(H, W, 3)`` with ``channel_axis=-1`` instead of grey.
    image : ndarray, optional
        Another image ``(H, W)`` or ``(H, W, C)`` (``color`` then says whether it has channels).

    Examples
    --------
    >>> from lkstn.problems import planar_problem
    >>> prob = planar_problem((50, 50))
    >>> prob.image.shape, prob.template.shape, prob.p_true.shape
    ((300, 451), (50, 50), (6,))
    """
    warp = warp_from_name(warp)
    image = _cat(color) if image is None else np.asarray(image, dtype=np.float64)
    channel_axis = -1 if color else None
    p_true = box_warp(warp, box, image.shape[:2])
    template = warp_image(image, warp, p_true, template_shape, channel_axis=channel_axis)
    box = tuple(float(v) for v in box)
    return PlanarProblem(image, template, p_true, warp, box, channel_axis)
