"""lkstn: the Lucas-Kanade family beside spatial transformer networks.

Classical aligners (NumPy/SciPy): :class:`LK`, :class:`CompositionalLK`, :class:`ICLK`,
:class:`SDM`.
Learned aligners (PyTorch): :class:`STN`, :class:`CSTN`, :class:`ICSTN`.
All follow the :class:`Aligner` contract and the conventions of :mod:`lkstn.warps`.
A user's own files: :func:`read_image`, warps in pixels (:func:`pixel_matrix`,
:func:`params_from_pixel_matrix`, :func:`box_matrix`), :func:`align_pixels`, and
:func:`lkstn.track.track` for sequences.

``import lkstn`` stays fast: torch and the aligners are imported on first use.

``lkstn.perturb`` is the module :mod:`lkstn.perturb` (the paper's noise model) in every import
order; it is callable as its function :func:`lkstn.perturb.perturb`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lkstn import perturb
from lkstn.result import Aligner, AlignmentResult, corner_error, param_error
from lkstn.warps import Affine, Homography, Similarity, Translation, Warp, warp_from_name

if TYPE_CHECKING:  # the names of _LAZY below, for type checkers (explicit re-exports)
    from lkstn.classical.iclk import ICLK as ICLK
    from lkstn.classical.lk import LK as LK
    from lkstn.classical.lk import CompositionalLK as CompositionalLK
    from lkstn.classical.sdm import SDM as SDM
    from lkstn.io import read_image as read_image
    from lkstn.learned.stn import CSTN as CSTN
    from lkstn.learned.stn import ICSTN as ICSTN
    from lkstn.learned.stn import STN as STN
    from lkstn.pixels import box_matrix as box_matrix
    from lkstn.pixels import params_from_pixel_matrix as params_from_pixel_matrix
    from lkstn.pixels import pixel_matrix as pixel_matrix
    from lkstn.register import align_pixels as align_pixels
    from lkstn.sampling import warp_image as warp_image

__version__ = "0.1.0"

_LAZY = {
    "warp_image": "lkstn.sampling",
    "read_image": "lkstn.io",
    "box_matrix": "lkstn.pixels",
    "params_from_pixel_matrix": "lkstn.pixels",
    "pixel_matrix": "lkstn.pixels",
    "align_pixels": "lkstn.register",
    "LK": "lkstn.classical.lk",
    "CompositionalLK": "lkstn.classical.lk",
    "ICLK": "lkstn.classical.iclk",
    "SDM": "lkstn.classical.sdm",
    "STN": "lkstn.learned.stn",
    "CSTN": "lkstn.learned.stn",
    "ICSTN": "lkstn.learned.stn",
}

__all__ = [
    "Affine",
    "AlignmentResult",
    "Aligner",
    "Homography",
    "Similarity",
    "Translation",
    "Warp",
    "corner_error",
    "param_error",
    "perturb",
    "warp_from_name",
    *_LAZY,
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lkstn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
