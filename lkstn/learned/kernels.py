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
so the choice changes results in the last bits only. :func:`kernel_choices` lists what was
chosen (a run records it); :func:`pin_kernels` imposes choices, to repeat a run bit for bit
with the kernels it used.

Glossary: ``key`` what a choice depends on, as a readable string (operation, shapes, dtype,
intra-op threads); ``candidates`` name -> function of no arguments running one kernel.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = [
    "choose",
    "clear_kernel_choices",
    "fastest",
    "kernel_choices",
    "pin_kernels",
    "thread_key",
]

_CHOICES: dict[str, str] = {}
_LOCK = threading.RLock()  # shard threads reaching the same key: one measures, the others wait


def fastest(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    repeats: int = 5,
    timer: Callable[[], float] = time.perf_counter,
) -> str:
    """The name of the candidate with the smallest median time over ``repeats`` timed rounds.

    Each candidate first runs once untimed (a candidate that raises ``RuntimeError`` there is
    left out); the rounds then alternate the order of the candidates, so that a change of load
    or a warm cache favours none. ``timer`` is a clock in seconds (tests pass a fake one).

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
) -> str:
    """The candidate chosen for ``key``: :func:`fastest` at its first call, then the same name.

    A choice pinned by :func:`pin_kernels` is taken as it is if it is among ``candidates``.
    Thread-safe: concurrent first calls with one key measure once. Timing runs without autograd
    recording unless the candidates enable it themselves.
    """
    with _LOCK:
        name = _CHOICES.get(key)
        if name is None or name not in candidates:
            with torch.no_grad():
                name = fastest(candidates, repeats=repeats, timer=timer)
            _CHOICES[key] = name
    return name


def kernel_choices() -> dict[str, str]:
    """Every choice made (or pinned) in this process: key -> candidate name."""
    with _LOCK:
        return dict(sorted(_CHOICES.items()))


def pin_kernels(choices: Mapping[str, str]) -> None:
    """Impose ``choices`` (as :func:`kernel_choices` returned them) on the keys they name."""
    with _LOCK:
        _CHOICES.update({str(k): str(v) for k, v in choices.items()})


def clear_kernel_choices() -> None:
    """Forget every choice: the next call of each key measures again."""
    with _LOCK:
        _CHOICES.clear()


def thread_key(*parts: object) -> str:
    """A key from ``parts`` and the caller's intra-op thread count (choices depend on it)."""
    return " ".join(str(p) for p in parts) + f" threads={torch.get_num_threads()}"
