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
from typing import Any

from lkstn import perturb
from lkstn.result import Aligner, AlignmentResult, corner_error, param_error
from lkstn.warps import Affine, Homography, Similarity, Translation, Warp, warp_from_name

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lkstn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
