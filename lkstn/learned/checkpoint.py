"""Training checkpoints: written atomically, read with ``torch.load(..., weights_only=True)``.

A checkpoint is one file holding plain data only: the model's ``state_dict``, the optimizer's
``state_dict``, the step, the global torch RNG state, and the training config and model
description as JSON strings. It is written to a temporary file in the same directory, flushed
and fsync'ed, then renamed over the old one (``os.replace``), so a run killed at any instant
leaves either the previous checkpoint or the new one, never a torn file. Reading checks the zip's
CRC-32s (a flipped bit is refused, never loaded as other weights), loads with
``weights_only=True`` (a file that would need arbitrary unpickling, i.e. code execution, is
refused) and checks every field's type; every failure is a :class:`CheckpointError` with a
one-line message. Memory stays bounded: before any member is read, each must be stored
uncompressed, as ``torch.save`` writes them, so that the sizes its zip directory declares add up
to no more than the file (a small crafted file cannot make the reader allocate gigabytes). The
type checks include the size of ``rng_state`` (the CPU generator's state) and, when an optimizer
is given, the shape of every per-parameter state tensor (momentum, Adam's moments). A checkpoint
whose model description differs from the model's (a c-STN-1 into an STN, an IC-STN-2 into an
IC-STN-4) is refused. A write that fails (read-only or full disk) is one line
(:class:`lkstn.runs.NotWritable`).

Glossary: ``state`` the dictionary stored in the file; ``step`` the number of optimizer steps
taken when it was written.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lkstn.runs import not_writable

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "restore_checkpoint",
    "save_checkpoint",
]

FORMAT = "lkstn-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, unsafe to load, or does not fit the model."""


@dataclass(frozen=True)
class Checkpoint:
    """The contents of a checkpoint file.

    Attributes
    ----------
    step : int
        Optimizer steps taken.
    model_state, optimizer_state : dict
        ``state_dict()`` of the model and optimizer (``optimizer_state`` may be ``None``).
    rng_state : Tensor or None
        ``torch.get_rng_state()`` when saved (always on the CPU, whatever ``map_location``).
    config : dict
        Training configuration (JSON-decoded).
    model_config : dict
        The model's description (``model.config``), JSON-decoded.
    """

    step: int
    model_state: dict[str, Any]
    optimizer_state: dict[str, Any] | None
    rng_state: torch.Tensor | None
    config: dict[str, Any]
    model_config: dict[str, Any]


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file, fsync, ``os.replace``); returns its path."""
    path = Path(path)
    state = {
        "format": FORMAT,
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "rng_state": torch.get_rng_state(),
        "config": json.dumps(config or {}, sort_keys=True),
        "model_config": json.dumps(getattr(model, "config", {}), sort_keys=True),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise not_writable(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as a RuntimeError
        Path(tmp).unlink(missing_ok=True)
        raise not_writable(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    map_location: torch.serialization.MAP_LOCATION = None,
) -> Checkpoint:
    """Read a checkpoint safely and, if given, load it into ``model`` and ``optimizer``.

    The file is checked before anything is loaded: the CRC-32 of every zip member (so flipped
    bits in the tensors are refused, not loaded), then ``torch.load(weights_only=True)`` (no code
    runs), then the type of every field. ``model`` and ``optimizer`` are only modified when all of
    it loads: a failure leaves them as they were. Tensors go to ``map_location`` (default: the
    device of ``model``'s parameters, else where they were saved, or the CPU on a machine without
    CUDA).

    Raises
    ------
    CheckpointError
        With a one-line message, for any file that is missing, damaged, unsafe (it would need
        arbitrary unpickling), malformed, or does not fit ``model``/``optimizer``.
    """
    path = Path(path)
    if map_location is None and model is not None:
        first = next(model.parameters(), None)
        map_location = None if first is None else first.device
    if map_location is None and not torch.cuda.is_available():
        map_location = "cpu"  # a checkpoint written on a GPU, read on a machine without one
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            _check_sizes(path, archive)
            bad = archive.testzip()  # reads every member and checks its CRC-32
    except Exception as exc:  # BadZipFile, OSError, a damaged header: all the same to the user
        raise CheckpointError(f"cannot read checkpoint {path}: {_one_line(exc)}") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: CRC mismatch in {bad}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load {path}: it is not a plain-data checkpoint and loading it would run "
            f"arbitrary code (torch.load weights_only=True said: {_one_line(exc)})"
        ) from None
    except Exception as exc:  # a damaged pickle fails in many ways (IndexError, KeyError, ...)
        raise CheckpointError(f"cannot read checkpoint {path}: {_one_line(exc)}") from None
    ckpt = _parse(path, state)
    restore_checkpoint(path, ckpt, model, optimizer)
    return ckpt


def restore_checkpoint(
    path: str | os.PathLike,
    ckpt: Checkpoint,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Load ``ckpt`` (read from ``path``) into ``model`` and ``optimizer`` as
    :func:`load_checkpoint` does: all or nothing, :class:`CheckpointError` on any misfit."""
    path = Path(path)
    wanted = getattr(model, "config", None)
    if (
        wanted is not None
        and ckpt.model_config
        and ckpt.model_config != json.loads(json.dumps(wanted))
    ):
        raise CheckpointError(
            f"{path} does not fit the model: saved for {ckpt.model_config}, the model is {wanted}"
        )
    _check_optimizer_shapes(path, ckpt, optimizer)
    _load_into(path, ckpt, model, optimizer)


def _check_sizes(path: Path, archive: zipfile.ZipFile) -> None:
    """Every member stored uncompressed, the declared sizes within the file's size."""
    total, limit = 0, path.stat().st_size
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"checkpoint {path} is not as torch.save writes it: member {info.filename} is "
                "compressed (refused: its size cannot be bounded before it is inflated)"
            )
        total += info.file_size
        if total > limit:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its members declare more bytes ({total}) than "
                f"the file holds ({limit})"
            )


def _check_optimizer_shapes(path: Path, ckpt: Checkpoint, optimizer) -> None:
    """Each saved per-parameter state tensor has its parameter's shape (or is a scalar)."""
    if optimizer is None or ckpt.optimizer_state is None:
        return
    saved = ckpt.optimizer_state
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or not isinstance(saved.get("state"), dict):
        raise CheckpointError(f"{path} is not a valid lkstn checkpoint: malformed optimizer state")
    ids = [i for g in groups if isinstance(g, dict) for i in g.get("params", [])]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    shape_of = dict(zip(ids, (p.shape for p in params), strict=False))
    for key, state in saved["state"].items():
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} is not a valid lkstn checkpoint: optimizer state {key}")
        for name, value in state.items():
            if not isinstance(value, torch.Tensor) or value.ndim == 0:
                continue
            if key in shape_of and value.shape != shape_of[key]:
                raise CheckpointError(
                    f"{path} is not a valid lkstn checkpoint: optimizer {name} of parameter {key} "
                    f"has shape {list(value.shape)}, the parameter {list(shape_of[key])}"
                )


def _parse(path: Path, state: object) -> Checkpoint:
    """The fields of ``state``, each of the type :func:`save_checkpoint` writes."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a valid lkstn checkpoint: {what}")

    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an lkstn checkpoint (format {FORMAT!r})")
    missing = {"step", "model", "optimizer", "config", "model_config"} - state.keys()
    if missing:
        raise bad(f"missing {sorted(missing)}")
    step, model_state, opt_state = state["step"], state["model"], state["optimizer"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise bad(f"step must be an integer >= 0, got {type(step).__name__}")
    if not isinstance(model_state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model_state.items()
    ):
        raise bad("model must map parameter names to tensors")
    if opt_state is not None and not (
        isinstance(opt_state, dict) and {"state", "param_groups"} <= opt_state.keys()
    ):
        raise bad("optimizer must be an optimizer state_dict or None")
    rng = state.get("rng_state")
    rng_size = torch.get_rng_state().shape
    if rng is not None and not (
        isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.shape == rng_size
    ):
        raise bad(f"rng_state must be a uint8 tensor of shape {list(rng_size)}")
    if rng is not None:
        rng = rng.cpu()  # the CPU generator's state, whatever map_location moved it to
    configs = []
    for key in ("config", "model_config"):
        try:
            value = json.loads(state[key])
        except (TypeError, ValueError) as exc:
            raise bad(f"{key} is not JSON ({_one_line(exc)})") from None
        if not isinstance(value, dict):
            raise bad(f"{key} must be a JSON object")
        configs.append(value)
    return Checkpoint(step, model_state, opt_state, rng, configs[0], configs[1])


def _load_into(path: Path, ckpt: Checkpoint, model, optimizer) -> None:
    """Load into ``model`` then ``optimizer``; on any failure restore ``model`` and raise."""
    if optimizer is not None and ckpt.optimizer_state is None:
        raise CheckpointError(f"{path} holds no optimizer state")
    backup = None if model is None else copy.deepcopy(model.state_dict())
    try:
        if model is not None:
            model.load_state_dict(ckpt.model_state)
        if optimizer is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
    except Exception as exc:
        if backup is not None:
            model.load_state_dict(backup)
        what = "model" if optimizer is None or "state_dict for" in str(exc) else "optimizer"
        raise CheckpointError(
            f"{path} does not fit the {what} (saved for {ckpt.model_config}): {_one_line(exc)}"
        ) from None


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """``exc`` as one line of at most ``limit`` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
