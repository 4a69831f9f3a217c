"""Photos shipped inside the package.

``caffe_cat()`` is the example image of the Caffe library (``examples/images/cat.jpg``, 480 x 360
RGB, an orange kitten on grass), the image of [LL17] Sec. 5.1 and Fig. 6. It is redistributed
under Caffe's BSD 2-Clause licence; the notice travels beside it as
``lkstn/data/caffe_cat.LICENSE.txt`` (and in the project's ``NOTICE``).
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

__all__ = ["CAFFE_CAT_SHA256", "caffe_cat", "caffe_cat_path"]

CAFFE_CAT_SHA256 = "59b67bce343d435cb8f79b6abefc6eecc79924abcda6e7c7e39f8173bb932bc1"
"""SHA-256 of the JPEG file as Caffe ships it (commit 9b89154)."""


def caffe_cat_path() -> str:
    """File system path of the packaged ``caffe_cat.jpg``."""
    return str(resources.files("lkstn.data").joinpath("caffe_cat.jpg"))


@functools.cache
def _rgb() -> np.ndarray:
    from skimage import img_as_float, io

    rgb = img_as_float(io.imread(caffe_cat_path()))
    rgb.flags.writeable = False  # cached: callers get copies
    return rgb


def caffe_cat(color: bool = False) -> np.ndarray:
    """The Caffe example image in ``[0, 1]``: grey ``(360, 480)`` or RGB ``(360, 480, 3)``.

    Grey is ``skimage.color.rgb2gray`` (ITU-R 709 luma), as for the other photos of the project.

    Examples
    --------
    >>> from lkstn.data.images import caffe_cat
    >>> caffe_cat().shape, caffe_cat(color=True).shape
    ((360, 480), (360, 480, 3))
    """
    from skimage.color import rgb2gray

    rgb = _rgb()
    return rgb.copy() if color else rgb2gray(rgb)
