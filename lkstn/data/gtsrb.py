"""GTSRB (German Traffic Sign Recognition Benchmark) from the official layout or a prepared npz.

Searched in ``root/gtsrb`` then ``root`` (each also under ``GTSRB/``, as the official zips unpack),
``root`` being the argument or the environment variable ``LKSTN_DATA``:

- the official layout (https://benchmark.ini.rub.de/gtsrb_dataset.html):
  ``Final_Training/Images/<5-digit class>/GT-<class>.csv`` with the ``.ppm`` images, and
  ``Final_Test/Images/*.ppm`` with ``GT-final_test.csv`` (shipped separately in
  ``GTSRB_Final_Test_GT.zip``; looked for next to the images, in ``Final_Test/`` and in the search
  directories). CSV columns, ``;``-separated: ``Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;
  ClassId``;
- a prepared copy ``gtsrb*.npz`` with ``X_train`` (N, H, W, 3) uint8, ``y_train`` (N,), ``X_test``,
  ``y_test`` (``root`` may also be the path of such a file).

Decisions:

- ``source="auto"`` prefers the official layout (the original images), else the npz.
- Official images are cropped to ``image[y1:y2, x1:x2]`` (x2, y2 exclusive as in PIL's ``crop``,
  which leaves the documented border of at least 5 pixels on every side) and resized to ``size``
  (default 36, the paper's input). Npz images are returned as stored unless ``size`` is given.
- Resizing is ``skimage.transform.resize(order=1, anti_aliasing=True, preserve_range=True)``,
  rounded to uint8. It is linear and separable, so it is applied as ``R_y @ I @ R_x.T`` with 1-D
  operators made by resizing an identity matrix with scikit-image: the same numbers (to float
  rounding), several times faster than one call per image.
- PPMs and the npz's arrays are read by the strict readers of :mod:`lkstn.data.formats`
  (sizes checked against the bytes present and a cap before anything is read or inflated).
- Every read is capped, so that a crafted file costs bounded memory: one PPM's pixels at most
  ``max_bytes`` (default :data:`MAX_PPM_BYTES`, 16 MiB; the largest official image is 266x232,
  185 KB), a CSV at most :data:`MAX_CSV_BYTES` (16 MiB; the official ones are under 1 MB), an
  npz's arrays together at most ``max_bytes`` (default :data:`MAX_NPZ_BYTES`, 2 GiB: the training
  set at 64x64 is 482 MB), checked in the zip directory and again in each array's header before
  anything is inflated.

Glossary: ``N`` number of images; ROI the sign's box ``(x1, y1, x2, y2)`` in pixels.
"""

from __future__ import annotations

import csv
import os
import re
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from lkstn.data.errors import (
    CorruptDataError,
    DatasetNotFoundError,
    check_max_bytes,
    check_size_cap,
    resolve_root,
)
from lkstn.data.formats import MAX_PPM_BYTES, NPZ_ERRORS, read_npy_member, read_ppm

__all__ = [
    "DEFAULT_SIZE",
    "MAX_CSV_BYTES",
    "MAX_NPZ_BYTES",
    "N_CLASSES",
    "gtsrb_is_official",
    "load_gtsrb",
    "read_ppm",
    "resize_images",
]

N_CLASSES = 43
DEFAULT_SIZE = 36
MAX_CSV_BYTES = 16 << 20  # one annotation CSV; the official ones are under 1 MB
MAX_NPZ_BYTES = 2 << 30  # the arrays of one split in a prepared npz, together
_COLUMNS = ("Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")
_SOURCES = (
    "GTSRB comes from https://benchmark.ini.rub.de/gtsrb_dataset.html (unpack Final_Training, "
    "Final_Test and GT-final_test.csv into <root>/gtsrb); a gtsrb*.npz with X_train, y_train, "
    "X_test, y_test is a prepared copy of it. Pass root=... or set LKSTN_DATA"
)
_INT = re.compile(r"[0-9]{1,9}")
_FILENAME = re.compile(r"[A-Za-z0-9_.-]+\.ppm", re.IGNORECASE)


@lru_cache(maxsize=256)
def _resize_operator(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of skimage's order-1 anti-aliased resize along one axis."""
    from skimage.transform import resize  # deferred: keeps `import lkstn.data` light

    eye = np.eye(n_in)
    return resize(eye, (n_out, n_in), order=1, anti_aliasing=True, preserve_range=True)


def resize_images(images: np.ndarray, size: int, *, chunk: int = 256) -> np.ndarray:
    """Resize RGB images with scikit-image's bilinear, anti-aliased resize, rounded to uint8.

    Parameters
    ----------
    images : numpy.ndarray, shape (N, H, W, 3) or (H, W, 3)
        Images of one size, any real dtype in the 0..255 range.
    size : int
        Side of the square output.
    chunk : int
        Images resized at once (bounds the float64 working memory; small chunks stay in cache).

    Returns
    -------
    numpy.ndarray, uint8, shape (N, size, size, 3) or (size, size, 3)
        Equal, up to float rounding, to ``skimage.transform.resize(image, (size, size),
        order=1, anti_aliasing=True, preserve_range=True)`` rounded and clipped to 0..255.
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3) or (H, W, 3), got {images.shape}")
    size = _check_size(size)
    batch = images.reshape((-1, *images.shape[-3:]))  # (N, H, W, 3)
    r_y = _resize_operator(batch.shape[1], size)  # (size, H)
    r_x = _resize_operator(batch.shape[2], size)  # (size, W)
    out = np.empty((len(batch), size, size, 3), dtype=np.uint8)
    for start in range(0, len(batch), chunk):
        channels = np.moveaxis(batch[start : start + chunk], 3, 1).astype(np.float64)  # (n,3,H,W)
        resized = r_y @ channels @ r_x.T  # (n, 3, size, size)
        out[start : start + chunk] = np.moveaxis(np.clip(np.rint(resized), 0, 255), 1, 3)
    return out.reshape((*images.shape[:-3], size, size, 3))


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    return int(size)


def _read_csv(path: Path) -> list[tuple[str, int, int, int, int, int, int, int]]:
    """Rows (filename, width, height, x1, y1, x2, y2, class_id) of a GTSRB annotation CSV."""
    if not path.is_file():
        raise CorruptDataError(path, "annotation CSV missing from its image directory")
    check_size_cap(path.stat().st_size, MAX_CSV_BYTES, path, "annotation CSV")
    try:
        lines = path.read_bytes().decode("utf-8-sig").splitlines()
        table = [row for row in csv.reader(lines, delimiter=";") if any(f.strip() for f in row)]
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise CorruptDataError(path, f"unreadable CSV ({type(exc).__name__}: {exc})") from exc
    if not table:
        raise CorruptDataError(path, "empty CSV: expected a header " + ";".join(_COLUMNS))
    header = [f.strip() for f in table[0]]
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        raise CorruptDataError(path, f"CSV header lacks the columns {missing}")
    index = [header.index(c) for c in _COLUMNS]
    rows = []
    for line_no, row in enumerate(table[1:], start=2):
        if len(row) != len(header):
            raise CorruptDataError(
                path, f"row {line_no}: {len(row)} fields, expected {len(header)}"
            )
        name, *fields = (row[i].strip() for i in index)
        if not _FILENAME.fullmatch(name) or ".." in name:
            raise CorruptDataError(path, f"row {line_no}: bad image file name {name[:40]!r}")
        if not all(_INT.fullmatch(f) for f in fields):
            raise CorruptDataError(path, f"row {line_no}: non-integer field in {fields!r:.80}")
        w, h, x1, y1, x2, y2, label = map(int, fields)
        if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
            raise CorruptDataError(
                path, f"row {line_no}: ROI {(x1, y1, x2, y2)} empty or outside {w}x{h}"
            )
        if label >= N_CLASSES:
            raise CorruptDataError(path, f"row {line_no}: ClassId {label} not in 0..42")
        rows.append((name, w, h, x1, y1, x2, y2, label))
    if not rows:
        raise CorruptDataError(path, "CSV lists no images")
    return rows


def _load_official(
    entries: list[tuple[Path, Path, int | None]],
    size: int,
    roi: bool = True,
    max_bytes: int = MAX_PPM_BYTES,
) -> tuple:
    """Crop (``roi``) and resize the images listed by (image dir, CSV, class of the dir or
    None)."""
    table = [
        (d, csv_path, want, row) for d, csv_path, want in entries for row in _read_csv(csv_path)
    ]
    images = np.empty((len(table), size, size, 3), dtype=np.uint8)  # N from the CSV rows present
    labels = np.empty(len(table), dtype=np.int64)
    for i, (image_dir, csv_path, want, (name, w, h, x1, y1, x2, y2, label)) in enumerate(table):
        if want is not None and label != want:
            raise CorruptDataError(csv_path, f"{name} has ClassId {label} in class dir {want}")
        if not (image_dir / name).is_file():
            raise CorruptDataError(csv_path, f"lists {name}, missing from {image_dir}")
        image = read_ppm(image_dir / name, max_bytes=max_bytes)
        if image.shape[:2] != (h, w):
            raise CorruptDataError(
                image_dir / name, f"image is {image.shape[1]}x{image.shape[0]}, CSV says {w}x{h}"
            )
        if roi:
            image = image[y1:y2, x1:x2]  # ROI crop, x2 and y2 exclusive
        images[i] = resize_images(image, size)
        labels[i] = label
    return images, labels


def _official_entries(dirs: list[Path], split: str) -> list[tuple[Path, Path, int | None]] | None:
    bases = [b for d in dirs for b in (d, d / "GTSRB")]
    if split == "train":
        for base in bases:
            images_dir = base / "Final_Training" / "Images"
            if images_dir.is_dir():
                class_dirs = sorted(
                    d for d in images_dir.iterdir() if re.fullmatch(r"\d{5}", d.name)
                )
                if not class_dirs:
                    raise CorruptDataError(images_dir, "no 5-digit class directories")
                return [(d, d / f"GT-{d.name}.csv", int(d.name)) for d in class_dirs]
        return None
    for base in bases:
        images_dir = base / "Final_Test" / "Images"
        if images_dir.is_dir():
            places = [images_dir, images_dir.parent, base, *dirs]
            for place in places:
                if (place / "GT-final_test.csv").is_file():
                    return [(images_dir, place / "GT-final_test.csv", None)]
            raise DatasetNotFoundError(
                f"GTSRB test images found in {images_dir} but not their labels GT-final_test.csv "
                f"(searched {', '.join(map(str, dict.fromkeys(places)))}); it ships separately "
                f"as GTSRB_Final_Test_GT.zip. {_SOURCES}"
            )
    return None


def _read_npz(path: Path, split: str, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as zf:
            x = read_npy_member(zf, f"X_{split}", path, max_bytes)
            y = read_npy_member(zf, f"y_{split}", path, max_bytes - x.nbytes)
    except CorruptDataError:
        raise
    except (*NPZ_ERRORS, OSError, ValueError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise CorruptDataError(path, f"unreadable npz ({type(exc).__name__}: {exc})") from exc
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise CorruptDataError(
            path, f"X_{split} must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}"
        )
    if y.shape != (len(x),):
        raise CorruptDataError(path, f"y_{split} has shape {y.shape}, expected ({len(x)},)")
    if len(y) and (y.min() < 0 or y.max() >= N_CLASSES):
        raise CorruptDataError(path, f"y_{split} has labels outside 0..42")
    return x, y.astype(np.int64)


def _find_npz(dirs: list[Path]) -> Path | None:
    for d in dirs:
        found = sorted(d.glob("gtsrb*.npz"))
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ValueError(f"several GTSRB npz files in {d} ({names}): pass root=<one file>")
        if found:
            return found[0]
    return None


def gtsrb_is_official(
    root: str | os.PathLike[str] | None = None, split: Literal["train", "test"] = "train"
) -> bool:
    """Whether :func:`load_gtsrb` would read ``split`` from the official layout in ``root``
    (else from an npz)."""
    if root is not None and Path(root).suffix == ".npz":
        return False
    return _official_entries(resolve_root(root, "gtsrb"), split) is not None


def load_gtsrb(
    root: str | os.PathLike[str] | None = None,
    split: Literal["train", "test"] = "train",
    size: int | None = None,
    *,
    source: Literal["auto", "official", "npz"] = "auto",
    roi: bool = True,
    max_bytes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load the GTSRB images and labels of one split.

    Parameters
    ----------
    root : str, os.PathLike or None
        Directory holding the data, directly or under ``gtsrb/``, or the path of a prepared
        ``.npz``. ``None`` reads the environment variable ``LKSTN_DATA``.
    split : {"train", "test"}
        39,209 training or 12,630 test images in the official release.
    size : int or None
        Side of the square output images. ``None``: 36 for the official layout (ROI crops of
        various sizes), the stored size for an npz.
    source : {"auto", "official", "npz"}
        Which format to read; ``"auto"`` takes the official layout where present, else the npz.
    roi : bool
        Official layout: crop each image to its sign's ROI (default) or keep the whole image
        with its margin (the authors' GTSRB code resizes whole images to 50x50). An npz holds
        what it was made with.
    max_bytes : int or None
        Cap on what one file may declare, checked before it is read or inflated: the pixels of
        one PPM (default :data:`MAX_PPM_BYTES`) or the two arrays of the split in an npz together
        (default :data:`MAX_NPZ_BYTES`).

    Returns
    -------
    images : numpy.ndarray, uint8, shape (N, size, size, 3)
        RGB.
    labels : numpy.ndarray, int64, shape (N,)
        Classes 0..42.

    Raises
    ------
    ValueError
        On a bad ``split``, ``size`` or ``source``, or several ``gtsrb*.npz`` in one directory.
    DatasetNotFoundError
        If no data directory is given or no data of the requested source are in it.
    CorruptDataError
        On malformed CSV rows, missing or malformed PPMs, a bad npz, missing keys or wrong shapes,
        or a file declaring more than ``max_bytes``.

    Examples
    --------
    >>> images, labels = load_gtsrb("/data", split="test", size=36)  # doctest: +SKIP
    >>> images.shape, labels.shape  # doctest: +SKIP
    ((12630, 36, 36, 3), (12630,))
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if source not in ("auto", "official", "npz"):
        raise ValueError(f"source must be 'auto', 'official' or 'npz', got {source!r}")
    if size is not None:
        size = _check_size(size)
    if max_bytes is not None:
        max_bytes = check_max_bytes(max_bytes)
    if root is not None and Path(root).suffix == ".npz":
        if not Path(root).is_file():
            raise DatasetNotFoundError(f"GTSRB npz {root} does not exist. {_SOURCES}")
        if source == "official":
            raise ValueError(f"source='official' but root is an npz file: {root}")
        npz, entries = Path(root), None
    else:
        dirs = resolve_root(root, "gtsrb")
        entries = _official_entries(dirs, split) if source != "npz" else None
        npz = _find_npz(dirs) if source != "official" and entries is None else None
        if entries is None and npz is None:
            where = ", ".join(map(str, dirs)) or "(no existing directory)"
            wanted = {"auto": "official layout or gtsrb*.npz", "official": "official layout"}
            raise DatasetNotFoundError(
                f"GTSRB {split} data ({wanted.get(source, 'gtsrb*.npz')}) not found in {where}. "
                f"{_SOURCES}"
            )
    if entries is not None:
        size = DEFAULT_SIZE if size is None else size
        return _load_official(entries, size, roi, max_bytes or MAX_PPM_BYTES)
    images, labels = _read_npz(npz, split, max_bytes or MAX_NPZ_BYTES)
    if size is not None and images.shape[1:3] != (size, size):
        images = resize_images(images, size)
    return images, labels
