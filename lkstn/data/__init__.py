"""Dataset loaders for the official formats of MNIST and GTSRB, and the packaged photo
(``caffe_cat``, the Caffe example image of the planar experiment).

Data are looked for in ``root/<name>`` then ``root``, where ``root`` is the loader's argument or
the environment variable ``LKSTN_DATA``. Missing files raise :class:`DatasetNotFoundError` (a
``FileNotFoundError``) saying where to put them and where they come from; malformed files raise
:class:`CorruptDataError` (a ``ValueError``) with a one-line message naming the file.
"""

from __future__ import annotations

from lkstn.data.errors import CorruptDataError, DatasetNotFoundError, resolve_root
from lkstn.data.gtsrb import gtsrb_is_official, load_gtsrb, read_ppm, resize_images
from lkstn.data.images import caffe_cat
from lkstn.data.mnist import load_mnist, read_idx

__all__ = [
    "CorruptDataError",
    "DatasetNotFoundError",
    "caffe_cat",
    "gtsrb_is_official",
    "load_gtsrb",
    "load_mnist",
    "read_idx",
    "read_ppm",
    "resize_images",
    "resolve_root",
]
