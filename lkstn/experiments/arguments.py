"""Argument types of ``lkstn reproduce``: numbers in range, seeds, devices, checked at parse time.

Each function returns an ``argparse`` type: a callable from the command-line text to the value,
raising :class:`argparse.ArgumentTypeError` with a short reason, which ``argparse`` prefixes with
the argument's name (``argument --threads: must be an integer >= 1, got 0``). The ``lkstn``
command prints that as one line and exits with code 2, so a bad number never reaches the run (no
silent default for ``--iters 0``, no training that stops at once for ``--time-limit nan``, no
``OverflowError`` from a 71-bit ``--seed``).

Glossary: ``minimum``/``maximum`` inclusive bounds; ``MAX_SEED`` the largest seed every generator
of a run accepts (NumPy's ``default_rng`` and ``torch.Generator.manual_seed``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_THREADS",
    "device",
    "existing_path",
    "integer",
    "output_dir",
    "positive_real",
    "seed",
]

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes at most 64 bits; one less keeps it signed
MAX_THREADS = 1024  # torch.set_num_threads beyond this only creates idle threads
MAX_STEPS = 10**9  # training steps: 5000 times the paper's 200,000, far inside int64 counters


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An integer in ``[minimum, maximum]`` (``maximum=None``: no upper bound)."""
    bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in "invalid integer value" messages
    return parse


def positive_real(text: str) -> float:
    """A finite number > 0 (``nan``, ``inf``, zero and negatives refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


seed = integer(0, MAX_SEED)


def output_dir(text: str) -> str:
    """A folder to write into: refused if empty or if it exists and is not a directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    if Path(text).expanduser().exists() and not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    return text


def existing_path(text: str) -> str:
    """A file or directory that exists (an empty string, which would mean the current
    directory, is refused)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    if not Path(text).expanduser().exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return text


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` with a CUDA device ``N`` present on this machine."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if dev.type not in ("cpu", "cuda") or text != text.strip().lower():
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise argparse.ArgumentTypeError(f"{text}: this machine has {n} CUDA device(s)")
    return text
