"""Strict readers of the two binary formats behind GTSRB: binary PPM images and arrays in an npz.

- PPMs are read by a strict binary P6 parser written here rather than imageio (no plugin
  dependency, sizes checked against the bytes present before any array exists, one-line errors):
  ``P6``, width, height, maxval in 1..255 (rescaled to 0..255), ``#`` comments, one whitespace
  byte, then exactly ``3 * width * height`` bytes. The header is read alone first (at most
  :data:`PPM_HEADER_BYTES`), and the declared size is checked against the file's size and the
  cap ``max_bytes`` before the pixels are read: a 5 GB sparse file costs a 4 KB read.
- An npz is read member by member with ``zipfile`` and ``numpy.lib.format``: the member's size in
  the zip directory and the array header's shape are checked against ``max_bytes`` before
  anything is inflated, object dtypes are refused (nothing is unpickled), and the bytes are read
  in bounded chunks. ``numpy.load`` would allocate whatever shape a forged header declares.

Glossary: ``W``, ``H`` image width and height; ``maxval`` the PPM's largest sample value.
"""

from __future__ import annotations

import math
import os
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from lkstn.data.errors import CorruptDataError, check_max_bytes, check_size_cap, read_bounded

__all__ = ["MAX_PPM_BYTES", "NPZ_ERRORS", "PPM_HEADER_BYTES", "read_npy_member", "read_ppm"]

MAX_PPM_BYTES = 16 << 20  # one image's pixels; the official GTSRB images are under 200 KB
PPM_HEADER_BYTES = 4096  # "P6 W H maxval" with comments: longer is not a PPM we read
NPZ_ERRORS = (zipfile.BadZipFile, zlib.error, struct.error, OverflowError, SyntaxError, KeyError)
_PPM_FIELD = re.compile(rb"(?:\s|#[^\n\r]*[\n\r])+([0-9]{1,9})(?![0-9])")  # separator, number


def read_ppm(path: str | os.PathLike[str], *, max_bytes: int = MAX_PPM_BYTES) -> np.ndarray:
    """Read a binary (P6) 8-bit PPM image.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.ppm`` file.
    max_bytes : int
        Largest pixel payload (``3 * W * H``) accepted, checked on the header before the pixels
        are read (default :data:`MAX_PPM_BYTES`).

    Returns
    -------
    numpy.ndarray, uint8, shape (H, W, 3)
        RGB, rescaled to 0..255 when the file's maxval is below 255.

    Raises
    ------
    CorruptDataError
        On a header that is not ``P6 W H maxval`` with ``1 <= maxval <= 255`` within the first
        :data:`PPM_HEADER_BYTES` bytes, a declared size above ``max_bytes``, a sample above
        maxval, or pixel data shorter or longer than ``3 * W * H`` bytes.
    """
    path = Path(path)
    max_bytes = check_max_bytes(max_bytes)
    try:
        f = open(path, "rb")  # closed by the with below
    except OSError as exc:
        raise CorruptDataError(path, f"unreadable ({type(exc).__name__})") from exc
    with f:
        head = f.read(PPM_HEADER_BYTES)
        file_bytes = os.fstat(f.fileno()).st_size
        if not head.startswith(b"P6"):
            raise CorruptDataError(
                path, f"not a binary PPM: starts with {head[:2]!r}, expected b'P6'"
            )
        values, pos = [], 2
        for field in ("width", "height", "maxval"):
            match = _PPM_FIELD.match(head, pos)
            if match is None:
                raise CorruptDataError(path, f"bad PPM header: no {field} after byte {pos}")
            values.append(int(match.group(1)))
            pos = match.end()
        width, height, maxval = values
        if head[pos : pos + 1] not in (b" ", b"\t", b"\n", b"\r"):
            raise CorruptDataError(path, "bad PPM header: no whitespace byte after maxval")
        if width < 1 or height < 1 or not 1 <= maxval <= 255:
            raise CorruptDataError(
                path, f"bad PPM header: width {width}, height {height}, maxval {maxval}"
            )
        n_bytes, n_have = 3 * width * height, file_bytes - pos - 1
        check_size_cap(n_bytes, max_bytes, path, f"PPM header ({width}x{height})")
        if n_have != n_bytes:  # checked before any array of the declared size exists
            raise CorruptDataError(
                path, f"PPM header declares {width}x{height} ({n_bytes} bytes), file has {n_have}"
            )
        f.seek(pos + 1)
        data = read_bounded(f, n_bytes, path, "PPM pixel data")
    image = np.frombuffer(data, dtype=np.uint8)
    if maxval < 255:
        if image.max() > maxval:
            raise CorruptDataError(path, f"PPM sample {image.max()} above maxval {maxval}")
        image = np.rint(image * (255.0 / maxval)).astype(np.uint8)
    return image.reshape(height, width, 3)


def read_npy_member(zf: zipfile.ZipFile, key: str, path: Path, max_bytes: int) -> np.ndarray:
    """One array of an npz, its sizes (zip directory, then array header) checked against
    ``max_bytes`` and its header validated before its bytes are inflated."""
    try:
        info = zf.getinfo(f"{key}.npy")
    except KeyError:
        raise CorruptDataError(
            path, f"npz has no array {key!r} (has {zf.namelist()[:8]})"
        ) from None
    check_size_cap(info.file_size, max_bytes, path, f"zip directory entry {key}.npy")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise CorruptDataError(path, f"{key}: unsupported .npy format version {version}")
        if dtype.hasobject or dtype.kind not in "biu":
            raise CorruptDataError(path, f"{key}: dtype {dtype} is not an integer type")
        n_bytes = math.prod(shape) * dtype.itemsize
        check_size_cap(n_bytes, max_bytes, path, f"array header of {key}")
        payload = read_bounded(f, n_bytes, path, f"array {key}")
    return np.frombuffer(payload, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
