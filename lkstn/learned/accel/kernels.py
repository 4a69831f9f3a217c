"""Kernel choice by measurement: at first use, time the candidate kernels and keep the fastest.

Several CPU kernels compute the same layer (NNPACK or oneDNN for a convolution, elementwise
maxima or ``max_pool2d`` for a pooling); which is fastest depends on the CPU (AVX2 or AVX-512),
the layer's shapes, the batch (one shard or the whole batch) and the thread count, not on a rule
that can be written down once. :func:`choose` decides at the first call of each ``key`` in a
process: it runs every candidate once (warm-up, and a candidate that raises ``RuntimeError`` is
dropped), then ``repeats`` timed rounds in alternating order, and keeps the candidate with the
smallest median time (ties: the first listed). Later calls with the same key reuse that choice,
so a process computes with fixed kernels and its results are deterministic given the choice.

The candidates of one key compute the same function and differ only in floating-point rounding,
so the choice changes results in the last bits only. To keep two identical runs identical, a
choice is measured once per machine and kept in a JSON file (:func:`cache_path`: by default
``~/.cache/lkstn/kernels.json``, or the file named by the environment variable
``LKSTN_KERNEL_CACHE``; ``off`` measures in every process), under the CPU model, family, model
number, vector flags and torch version; later processes on that machine read it instead of
timing again. :func:`kernel_choices` lists what was chosen (a run records it);
:func:`pin_kernels` imposes choices, to repeat a run bit for bit with the kernels it used.

Glossary: ``key`` what a choice depends on, as a readable string (operation, shapes, dtype,
intra-op threads); ``candidates`` name -> function of no arguments running one kernel.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "cache_path",
    "choose",
    "clear_kernel_choices",
    "fastest",
    "kernel_choices",
    "pin_kernels",
    "thread_key",
]

CACHE_ENV = "LKSTN_KERNEL_CACHE"
"""Environment variable naming the choices file; ``off`` keeps no file."""

_CHOICES: dict[str, str] = {}
_LOCK = threading.RLock()  # shard threads reaching the same key: one measures, the others wait
_STORED: dict[str, str] | None = None  # this machine's choices in the file, read once


def cache_path() -> Path | None:
    """The file of this machine's choices (``None``: ``LKSTN_KERNEL_CACHE=off``)."""
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() == "off":
        return None
    if value:
        return Path(value)
    return (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lkstn" / "kernels.json"
    )


def _machine() -> str:
    """What a choice depends on beyond its key: the CPU and the torch build."""
    from lkstn.machine import cpu_info

    cpu = cpu_info()
    flags = ",".join(cpu["flags"])
    where = f"family {cpu['family']} model {cpu['model']}"
    return f"{cpu['model_name']} | {where} | {flags} | torch {torch.__version__}"


def _read_file(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, unreadable or torn: measure again
        return {}
    return data if isinstance(data, dict) else {}


def _stored() -> dict[str, str]:
    global _STORED
    if _STORED is None:
        path = cache_path()
        mine = _read_file(path).get(_machine(), {}) if path else {}
        _STORED = {str(k): str(v) for k, v in mine.items()} if isinstance(mine, dict) else {}
    return _STORED


def _store(key: str, name: str) -> None:
    """Add one choice to the file (merged with what other processes wrote; atomic replace).
    A file that cannot be written only costs the next process a measurement."""
    path = cache_path()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_file(path)
        machine = data.setdefault(_machine(), {})
        if not isinstance(machine, dict):
            machine = data[_machine()] = {}
        machine[key] = name
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kernels-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def fastest(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    repeats: int = 5,
    timer: Callable[[], float] = time.perf_counter,
    warm: int = 0,
) -> str:
    """The name of the candidate with the smallest median time over ``repeats`` timed rounds.

    Each candidate first runs once untimed (a candidate that raises ``RuntimeError`` there is
    left out); the rounds then alternate the order of the candidates, so that a change of load
    or a warm cache favours none. ``timer`` is a clock in seconds (tests pass a fake one).
    ``warm`` untimed runs of the same candidate precede each timed run, for candidates whose
    cost depends on what ran just before (a training step in threads or processes: the previous
    candidate's OpenMP workers spin for milliseconds on the cores the next one needs, and
    threads woken after a pause may share a core until the scheduler spreads them), so that
    each is timed in the steady state of a loop that runs it alone.

    >>> clock = [0.0]
    >>> def cost(s):
    ...     return lambda: clock.__setitem__(0, clock[0] + s)
    >>> fastest({"slow": cost(2.0), "quick": cost(1.0)}, timer=lambda: clock[0])
    'quick'
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    usable = []
    for name, run in candidates.items():
        try:
            run()
        except RuntimeError:  # e.g. an NNPACK limit: not a candidate for these shapes
            continue
        usable.append(name)
    if not usable:
        raise ValueError(f"no candidate ran: {list(candidates)}")
    times: dict[str, list[float]] = {name: [] for name in usable}
    for r in range(repeats):
        for name in usable if r % 2 == 0 else usable[::-1]:
            for _ in range(warm):
                candidates[name]()
            start = timer()
            candidates[name]()
            times[name].append(timer() - start)
    return min(usable, key=lambda name: statistics.median(times[name]))  # ties: first listed


def choose(
    key: str,
    candidates: Mapping[str, Callable[[], Any]],
    *,
    repeats: int = 5,
    timer: Callable[[], float] = time.perf_counter,
    composite: bool = False,
    warm: int = 0,
) -> str:
    """The candidate chosen for ``key``: :func:`fastest` at its first call, then the same name.

    A choice pinned by :func:`pin_kernels` is taken as it is if it is among ``candidates``;
    otherwise one stored for this machine (:func:`cache_path`); otherwise it is measured and
    stored.
    Thread-safe: concurrent first calls with one key measure once. Timing runs without autograd
    recording unless the candidates enable it themselves.

    ``composite=True`` is for candidates that make choices of their own in other threads (a
    training step in shards: its threads choose their layers' kernels, and would wait forever
    on the lock held here while measuring). The measurement then runs without the lock and with
    autograd as the candidates leave it; two concurrent first calls with one key may both
    measure, and the first to finish is kept.
    """
    with _LOCK:
        name = _known(key, candidates)
        if name is None and not composite:
            with torch.no_grad():
                name = fastest(candidates, repeats=repeats, timer=timer, warm=warm)
            _store(key, name)
        if name is not None:
            _CHOICES[key] = name
            return name
    name = fastest(candidates, repeats=repeats, timer=timer, warm=warm)
    with _LOCK:
        name = _CHOICES.setdefault(key, name)
        _store(key, name)
    return name


def _known(key: str, candidates: Mapping[str, Callable[[], Any]]) -> str | None:
    """The choice for ``key`` pinned or made in this process, else the one stored for this
    machine, if it names one of ``candidates``; ``None`` if it must be measured. Hold _LOCK."""
    name = _CHOICES.get(key)
    if name is None or name not in candidates:
        name = _stored().get(key)
    return name if name in candidates else None


def kernel_choices() -> dict[str, str]:
    """Every choice made (or pinned) in this process: key -> candidate name."""
    with _LOCK:
        return dict(sorted(_CHOICES.items()))


def pin_kernels(choices: Mapping[str, str]) -> None:
    """Impose ``choices`` (as :func:`kernel_choices` returned them) on the keys they name."""
    with _LOCK:
        _CHOICES.update({str(k): str(v) for k, v in choices.items()})


def clear_kernel_choices() -> None:
    """Forget this process's choices (the stored file is read again at the next call)."""
    global _STORED
    with _LOCK:
        _CHOICES.clear()
        _STORED = None


def thread_key(*parts: object) -> str:
    """A key from ``parts`` and the caller's intra-op thread count (choices depend on it)."""
    return " ".join(str(p) for p in parts) + f" threads={torch.get_num_threads()}"
