"""Builders of hostile dataset files for the bad-input table: wrong content, bombs, sparse files.

Each builder writes into a fresh directory and returns what to pass as ``--data``. The bombs are
honest where it matters: their headers declare the size they really inflate to (4 GiB), built
cheaply by repeating one compressed block of zeros (about 1000:1), as a hostile file would be.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

BLOCK = 64 << 20  # zeros compressed once and repeated to make a bomb


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file of ``array``."""
    array = np.asarray(array, dtype=np.uint8)
    return idx_header(*array.shape) + array.tobytes()


def idx_header(*dims: int) -> bytes:
    return struct.pack(">HBB", 0, 8, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def mnist_dir(root: Path, *, images=None, labels=None, gz: bool = False) -> Path:
    """Four IDX files (train and test alike) of 20 valid digits, unless replaced."""
    rng = np.random.default_rng(0)
    images = idx_bytes(rng.integers(0, 256, (20, 28, 28))) if images is None else images
    labels = idx_bytes(rng.integers(0, 10, 20)) if labels is None else labels
    root.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        for kind, payload, ndim in (("images", images, 3), ("labels", labels, 1)):
            name = f"{prefix}-{kind}-idx{ndim}-ubyte" + (".gz" if gz else "")
            (root / name).write_bytes(gzip.compress(payload) if gz else payload)
    return root


def sparse_file(path: Path, n_bytes: int, head: bytes = b"") -> Path:
    """A file of ``n_bytes`` that costs no disk: ``head`` then a hole (what ``truncate`` makes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(n_bytes)
    return path


def gzip_bomb(path: Path, header: bytes, n_zero_bytes: int) -> Path:
    """A gzip file inflating to ``header`` then ``n_zero_bytes`` zeros: repeated gzip members
    (``gzip`` reads concatenated members as one stream), each with its own valid CRC."""
    assert n_zero_bytes % BLOCK == 0
    member = gzip.compress(bytes(BLOCK), compresslevel=6)  # 64 MiB -> about 65 KB
    with open(path, "wb") as f:
        f.write(gzip.compress(header))
        for _ in range(n_zero_bytes // BLOCK):
            f.write(member)
    return path


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...], dtype: str = "|u1") -> bytes:
    buffer = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def npz_bomb(path: Path, shape: tuple[int, ...]) -> Path:
    """An npz whose ``X_train.npy`` (uint8, ``shape``, under 4 GiB) inflates to its declared size
    from about a thousandth of it: one deflate stream of full-flushed blocks of zeros (each block
    independent of what precedes it, so one compressed block is repeated). The zip directory
    declares the true size; its CRC is left 0, as it is checked only after the whole member has
    been inflated."""
    header = npy_header(shape)
    n_zeros = int(np.prod(shape))
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(BLOCK)) + c.flush(zlib.Z_FULL_FLUSH)
    tail_c = zlib.compressobj(6, zlib.DEFLATED, -15)
    tail = tail_c.compress(bytes(n_zeros % BLOCK)) + tail_c.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(6, zlib.DEFLATED, -15).flush()  # an empty final block
    n_blocks = n_zeros // BLOCK
    size = len(header) + n_zeros
    compressed = len(head) + n_blocks * len(block) + len(tail) + len(end)
    assert size < 2**32, "no zip64 here"
    name = b"X_train.npy"
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, 0, compressed, size,
                        len(name), 0)  # fmt: skip
    with open(path, "wb") as f:
        f.write(local + name + head)
        for _ in range(n_blocks):
            f.write(block)
        f.write(tail + end)
        offset = f.tell()
        central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, 0, compressed,
                              size, len(name), 0, 0, 0, 0, 0, 0)  # fmt: skip
        f.write(central + name)
        f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(name),
                            offset, 0))  # fmt: skip
    return path


def object_npz(path: Path) -> Path:
    """An npz whose arrays are object arrays (loading them would unpickle)."""
    x = np.empty(2, dtype=object)
    x[:] = [{"a": 1}, [2]]
    np.savez(path, X_train=x, y_train=x, X_test=x, y_test=x)
    return path


def gtsrb_official(root: Path, ppm: bytes | None = None, n_sparse: int | None = None) -> Path:
    """The official training layout with one image; ``ppm`` replaces its content, ``n_sparse``
    makes it a sparse file of that size after the content."""
    class_dir = root / "gtsrb" / "Final_Training" / "Images" / "00000"
    class_dir.mkdir(parents=True, exist_ok=True)
    image = ppm if ppm is not None else b"P6\n30 30\n255\n" + bytes(2700)
    if n_sparse is None:
        (class_dir / "00000_00000.ppm").write_bytes(image)
    else:
        sparse_file(class_dir / "00000_00000.ppm", n_sparse, image)
    columns = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
    (class_dir / "GT-00000.csv").write_text(f"{columns}\n00000_00000.ppm;30;30;5;5;25;25;0\n")
    return root


def random_bytes(path: Path, n_bytes: int = 4096) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(n_bytes))
    return path


def zip_member_sizes(path: Path) -> dict[str, int]:
    """What the zip directory of ``path`` declares (a check of :func:`npz_bomb`)."""
    with zipfile.ZipFile(path) as zf:
        return {i.filename: i.file_size for i in zf.infolist()}
