"""The run directory: one format for every training and experiment that writes files.

A run directory holds

- ``manifest.json``: what the run *is*, written once when the run starts (atomically) and
  compared field by field by every resume. ``{"format": "lkstn-run-1", "identity": {...},
  "recorded": {...}}``: ``identity`` is compared (the full configuration, the model description:
  class, warp, depth, parameter shapes, the data identity: sizes, counts and SHA-256 of the data,
  ``--quick``, the seed, and ``lkstn.__version__``); ``recorded`` is kept for the reader only (the
  git commit, the time, the machine). A resume whose identity differs is refused with one line
  naming every differing field (:class:`RunMismatch`);
- records (``log.jsonl``, ``progress.jsonl``, ``seconds.jsonl``): appended one whole JSON line at
  a time, flushed and fsync'ed (:func:`append_record`). A kill can only tear the last line; a
  reader ignores a torn line (:func:`read_records`) and a resuming writer cuts it off
  (:func:`truncate_records`), so no complete record is ever lost or rewritten;
- ``checkpoint.pt`` (:mod:`lkstn.learned.checkpoint`), written atomically (a resume removes the
  temporary file that a kill during a write leaves);
- derived files (tables, figures, ``row.json``, ``planar.json``), rebuilt from the checkpoint and
  the records at every run and written atomically (:func:`write_atomic`): never trusted across a
  kill;
- ``lock``: held with ``fcntl.flock`` while a process writes the run (:func:`lock`); a second
  writer is refused in one line (:class:`RunLocked`), and the kernel releases it on any exit.

An existing run is never deleted or overwritten unless asked (``fresh=True``, the command's
``--fresh``): starting a run in a directory that holds one, without resuming, is refused
(:class:`RunExists`). Errors are :class:`lkstn.errors.UsageError` (the command's exit code 2);
mismatches are also ``ValueError``, write failures (read-only or full disk) ``OSError``.

Glossary: ``identity`` the compared part of the manifest; ``record`` one JSON line.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lkstn.errors import UsageError

if TYPE_CHECKING:
    import argparse

__all__ = [
    "FORMAT",
    "NotWritable",
    "RunExists",
    "RunLocked",
    "RunMismatch",
    "add_arguments",
    "append_record",
    "code_version",
    "differences",
    "digest",
    "lock",
    "open_run",
    "read_records",
    "truncate_records",
    "write_atomic",
]

FORMAT = "lkstn-run-1"
MANIFEST = "manifest.json"
LOCK = "lock"


class RunMismatch(UsageError, ValueError):
    """A resume whose configuration, model, data, seed or code differs from the run's."""


class RunExists(UsageError, ValueError):
    """A new run asked for in a directory that holds one (resume it, or start over with fresh)."""


class RunLocked(UsageError, RuntimeError):
    """Another process is writing this run directory."""


class NotWritable(UsageError, OSError):
    """A run file could not be written (read-only or full disk): one line, the file named."""


def not_writable(path: Path, exc: BaseException) -> NotWritable:
    """The one-line error for a failed write of ``path``."""
    # torch reports a failed write as RuntimeError("[enforce fail at inline_container.cc...]")
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "the write failed"
    return NotWritable(f"cannot write {path}: {why} (is the disk full or read-only?)")


# -- records ---------------------------------------------------------------------------------------


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line, flushed and fsync'ed (a kill tears the last line at
    most)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    _durably(Path(path), "ab", lambda f: f.write(line))


def _durably(path: Path, mode: str, action: Callable[[IO[bytes]], object]) -> None:
    """Open ``path``, apply ``action`` to the file, flush and fsync; a failure is one line."""
    try:
        with open(path, mode) as f:
            action(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise not_writable(path, exc) from None


def _scan(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """``(offset of the line's start, record or None if torn)`` for each line of ``path``."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            record = None
            if raw.endswith(b"\n"):
                try:
                    record = json.loads(raw)
                except ValueError:
                    pass
            yield offset, record if isinstance(record, dict) else None
            offset += len(raw)


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The whole records of a record file, in order (a torn or foreign line and everything after
    it are ignored); ``[]`` when it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for _, record in _scan(path):
        if record is None:
            break
        records.append(record)
    return records


def truncate_records(
    path: str | os.PathLike, keep: Callable[[dict[str, Any]], bool] = lambda r: True
) -> list[dict[str, Any]]:
    """Cut ``path`` before its first torn line or first record that ``keep`` rejects (one
    ``truncate`` call: whole records are never rewritten); returns the records kept."""
    path = Path(path)
    if not path.exists():
        return []
    kept, cut = [], None
    for offset, record in _scan(path):
        if record is None or not keep(record):
            cut = offset
            break
        kept.append(record)
    if cut is not None:
        _durably(path, "r+b", lambda f: f.truncate(cut))
    return kept


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (old or new, never
    torn)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise not_writable(path, exc) from None


# -- lock ------------------------------------------------------------------------------------------

_held: dict[Path, int] = {}  # run directories this process holds: path -> depth


LOCK_WAIT_S = 2.0
"""How long :func:`lock` waits for a held lock before refusing: a process being killed, or a child
it forked a moment before (which holds the lock until it execs), lets go within milliseconds."""


def _flock_soon(fd: int) -> bool:
    """Take ``fd``'s exclusive lock, polling for up to ``LOCK_WAIT_S``; whether it was taken."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


@contextlib.contextmanager
def lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``run_dir/lock`` (``fcntl.flock``) for the block; re-entrant within one process.
    Raises :class:`RunLocked` when another process still holds it after ``LOCK_WAIT_S``."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        _held[run_dir] += 1
        try:
            yield
        finally:
            _held[run_dir] -= 1
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise not_writable(run_dir / LOCK, exc) from None
    if not _flock_soon(fd):
        os.close(fd)
        raise RunLocked(
            f"{run_dir} is being written by another process (it holds {run_dir / LOCK}); "
            "wait for it to finish or use another output folder"
        ) from None
    _held[run_dir] = 1
    try:
        yield
    finally:
        del _held[run_dir]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def add_arguments(parser: argparse.ArgumentParser, what: str = "the run in --out") -> None:
    """The command-line options of a run directory: ``--resume`` and ``--fresh``."""
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"continue {what} (refused if made with other settings)",
    )
    parser.add_argument("--fresh", action="store_true",
                        help=f"delete {what} and start over (without --resume or --fresh an "
                        "existing run is refused)")  # fmt: skip


# -- manifest --------------------------------------------------------------------------------------


def digest(*chunks: bytes | memoryview) -> str:
    """SHA-256 (hex) of the concatenated bytes: the identity of a data set."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def code_version() -> dict[str, Any]:
    """``{"version": lkstn.__version__, "commit": git commit or None}``."""
    from lkstn import __version__

    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5,
        )  # fmt: skip
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    return {"version": __version__, "commit": commit}


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, v in value.items():
            out.update(_flatten(v, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: value}


def differences(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"field: run X, now Y"`` for every dotted field that differs (JSON values compared)."""
    a, b = _flatten(json.loads(json.dumps(stored))), _flatten(json.loads(json.dumps(now)))

    def short(value: object) -> str:
        text = "(none)" if value is _NONE else json.dumps(value)
        return text if len(text) <= 40 else text[:16] + "..." + text[-8:]

    return [f"{k}: run {short(a.get(k, _NONE))}, now {short(b.get(k, _NONE))}"
            for k in sorted(a.keys() | b.keys()) if a.get(k, _NONE) != b.get(k, _NONE)]  # fmt: skip


_NONE = object()


def _holds_run(run_dir: Path, names: tuple[str, ...]) -> bool:
    return any((run_dir / name).exists() for name in (MANIFEST, *names))


def open_run(
    run_dir: str | os.PathLike,
    identity: dict[str, Any],
    *,
    resume: bool,
    fresh: bool = False,
    files: tuple[str, ...] = ("checkpoint.pt", "log.jsonl"),
    recorded: dict[str, Any] | None = None,
) -> bool:
    """Start or resume the run in ``run_dir``; returns whether an existing run is resumed.

    ``identity`` is what must match (plus ``code.version``, added here). ``files``: the names
    (files or folders) that belong to the run; ``fresh=True`` deletes them and the manifest first.
    Without ``resume`` and ``fresh`` a directory holding any of them is refused
    (:class:`RunExists`); a resume compares the manifest field by field (:class:`RunMismatch`).
    Call it while holding :func:`lock`.
    """
    run_dir = Path(run_dir)
    identity = {**identity, "code": {"version": code_version()["version"]}}
    if fresh:
        import shutil

        for name in (MANIFEST, *files):
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    if _holds_run(run_dir, files):
        if not resume:
            raise RunExists(
                f"{run_dir} holds a run; pass --resume to continue it or --fresh to delete it and "
                "start over"
            )
        manifest = run_dir / MANIFEST
        if not manifest.exists():
            raise RunMismatch(
                f"--resume: {run_dir} has no {MANIFEST} (an older or foreign run): it cannot be "
                "checked, so it is not continued; pass --fresh to start over"
            )
        try:
            stored = json.loads(manifest.read_text())
            assert stored["format"] == FORMAT and isinstance(stored["identity"], dict)
        except (ValueError, KeyError, TypeError, AssertionError, OSError):
            raise RunMismatch(f"--resume: {manifest} is not an {FORMAT} manifest") from None
        diff = differences(stored["identity"], identity)
        if diff:
            raise RunMismatch(
                f"--resume: {run_dir} was made with other settings ({'; '.join(diff)}); pass the "
                "run's settings, or --fresh to start over"
            )
        for stale in run_dir.glob(".*.tmp"):  # a killed atomic write's temporary file
            stale.unlink(missing_ok=True)
        return True
    recorded = {**(recorded or {}), "code": code_version(), "created": time.time()}
    record = {"format": FORMAT, "identity": identity, "recorded": recorded}
    write_atomic(run_dir / MANIFEST, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return False
