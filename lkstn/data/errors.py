"""Errors of the dataset loaders, and the two shared checks that raise them.

Every loader in :mod:`lkstn.data` fails in one of two ways:

- :class:`DatasetNotFoundError` (a :class:`FileNotFoundError`): the files are not where we looked.
  The message lists the places searched, where to put the files and where they come from.
- :class:`CorruptDataError` (a :class:`ValueError`): a file is there but cannot be what it claims
  to be (bad header, truncated, inconsistent sizes). The message is one line naming the file and
  what was wrong, so that it reads well in a log and in a test report.

Glossary: ``root`` the data directory given by the caller or by the environment variable
``LKSTN_DATA``; ``name`` the dataset's sub-directory (``"mnist"``, ``"gtsrb"``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "CHUNK_BYTES",
    "CorruptDataError",
    "DatasetNotFoundError",
    "ENV_VAR",
    "check_max_bytes",
    "check_size_cap",
    "read_bounded",
    "resolve_root",
]

ENV_VAR = "LKSTN_DATA"
CHUNK_BYTES = 1 << 20  # read streams 1 MiB at a time: memory follows the bytes actually present


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not in any of the searched directories.

    Parameters
    ----------
    message : str
        What was looked for, where, and where the data come from. Folded onto one line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class CorruptDataError(ValueError):
    """A dataset file exists but its content is malformed, truncated or inconsistent.

    Parameters
    ----------
    path : str or os.PathLike
        The offending file.
    reason : str
        What was wrong with it. The message ``"<path>: <reason>"`` is folded onto one line.

    Attributes
    ----------
    path : pathlib.Path
    reason : str
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = _one_line(reason)
        super().__init__(_one_line(f"{self.path}: {self.reason}"))


def resolve_root(root: str | os.PathLike[str] | None, name: str) -> list[Path]:
    """Directories in which to look for the dataset ``name``, most specific first.

    Parameters
    ----------
    root : str, os.PathLike or None
        The data directory. ``None`` reads the environment variable ``LKSTN_DATA``.
    name : str
        Sub-directory of ``root`` that holds this dataset (e.g. ``"mnist"``).

    Returns
    -------
    list of pathlib.Path
        ``[root / name, root]``, keeping only existing directories.

    Raises
    ------
    DatasetNotFoundError
        If ``root`` is ``None`` and ``LKSTN_DATA`` is unset or empty, or if ``root`` does not exist.
    """
    if root is None:
        env = os.environ.get(ENV_VAR, "")
        if not env:
            raise DatasetNotFoundError(
                f"no data directory for {name}: pass root=... or set the environment variable "
                f"{ENV_VAR} to a directory holding the files (directly or under {name}/)"
            )
        root, origin = env, f"{ENV_VAR}={env!r}"
    else:
        origin = f"root={os.fspath(root)!r}"
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetNotFoundError(f"data directory for {name} does not exist ({origin})")
    return [d for d in (base / name, base) if d.is_dir()]


def check_max_bytes(max_bytes: object) -> int:
    """``max_bytes`` as a positive int, else a ``ValueError`` naming it."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
    return int(max_bytes)


def check_size_cap(n_bytes: int, max_bytes: int, path: str | os.PathLike[str], what: str) -> None:
    """Refuse a declared size above the loader's cap, before anything of that size is read.

    Raises
    ------
    CorruptDataError
        If ``n_bytes > max_bytes``; the message names the file, the size and the keyword that
        raises the cap.
    """
    if n_bytes > max_bytes:
        raise CorruptDataError(
            path,
            f"{what} declares {n_bytes} bytes, above the cap of {max_bytes} bytes (the official "
            f"files are far smaller; the loader's max_bytes raises the cap)",
        )


def read_bounded(
    stream: BinaryIO, n_bytes: int, path: str | os.PathLike[str], what: str
) -> bytearray:
    """Read exactly ``n_bytes`` from ``stream`` and check that nothing follows.

    The stream is read in chunks of at most :data:`CHUNK_BYTES` until ``n_bytes + 1`` bytes
    have come or it ends, so memory grows with the bytes actually present, never with the
    size a (possibly forged) header declares.

    Parameters
    ----------
    stream : binary file object
        Positioned at the start of the payload (a raw file, a ``gzip.GzipFile``, ...).
    n_bytes : int
        Size of the payload that the header declares.
    path : str or os.PathLike
        File named in the error.
    what : str
        What the payload is, for the error message (e.g. ``"pixel data"``).

    Returns
    -------
    bytearray
        The ``n_bytes`` bytes of the payload (writable, so ``np.frombuffer`` needs no copy).

    Raises
    ------
    CorruptDataError
        If the stream ends early or holds more than ``n_bytes`` bytes.
    """
    buffer = bytearray()  # grows with the data read, never pre-sized from the header
    while len(buffer) <= n_bytes:
        chunk = stream.read(min(CHUNK_BYTES, n_bytes + 1 - len(buffer)))
        if not chunk:
            break
        buffer += chunk
    n_read = len(buffer)
    if n_read < n_bytes:
        raise CorruptDataError(
            path, f"truncated {what}: header declares {n_bytes} bytes, got {n_read}"
        )
    if n_read > n_bytes:
        raise CorruptDataError(path, f"trailing bytes after the {n_bytes} bytes of {what}")
    return buffer
