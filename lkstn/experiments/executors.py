"""Where the rows of an experiment train: in this process, in processes, or as Ray tasks.

An experiment cuts its work into *jobs* (a row, a group of cells), each a call ``fn(*args)`` of
a module-level function that trains into its own run directories and returns plain data (state
dicts, seconds). :func:`run_jobs` runs them:

- ``"auto"`` (default): ``"processes"`` when this machine can run two jobs or more at once
  (``os.cpu_count() // cpus_per_job >= 2``) and there are two jobs or more, else ``"local"``.
  Either gives the same results (a job trained in a process equals the job trained here, bit for
  bit: ``tests/experiments/test_executors.py``); only the wall time differs.
- ``"local"``: one after the other in this process; Ray is not imported.
- ``"processes"``: on this machine's cores, as many jobs at once as it has CPUs (each job's
  torch on ``cpus_per_job`` threads), in fresh Python processes (``spawn``); no Ray. A job
  whose process dies is not retried: the command fails, and ``--resume`` continues every job
  from its checkpoints.
- ``"ray"``: one Ray task per job (``pip install 'lkstn[distributed]'``), on the cluster at
  ``address`` or on a local instance started with this machine's CPUs. A job whose worker dies
  (killed, out of memory, node lost) is run again by Ray, up to ``max_retries`` times; since
  every lkstn training resumes from its own checkpoint (:func:`lkstn.learned.train.train`,
  :func:`lkstn.learned.sweep.train_sweep`), the retry continues where the worker died and gives
  the result an uninterrupted job gives. The run directories must be on a filesystem every
  worker sees (one machine, or a shared mount).

The results come back in the order of the jobs, so the caller builds the same tables and figures
from them whichever executor ran them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from lkstn.errors import UsageError

__all__ = ["EXECUTORS", "add_executor_arguments", "resolve_auto", "run_jobs"]

EXECUTORS = ("auto", "local", "processes", "ray")

T = TypeVar("T")


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor auto|local|processes|ray`` and ``--address``, for ``lkstn reproduce``."""
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="auto",
        help="run the rows one after the other in this process (local), at once in one process "
        "per CPU of this machine (processes), or as Ray tasks (ray, needs lkstn[distributed]); "
        "auto (default): processes when this machine has two CPUs or more, else local",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: start a local Ray instance on this machine's CPUs)",
    )


def run_jobs(
    fn: Callable[..., T],
    jobs: Sequence[tuple],
    *,
    executor: str = "auto",
    address: str | None = None,
    max_retries: int = 3,
    cpus_per_job: float = 1,
) -> list[T]:
    """``[fn(*args) for args in jobs]``, here or as Ray tasks; see the module docstring.

    Raises
    ------
    UsageError
        For an unknown ``executor``, or ``"ray"`` without Ray installed.
    """
    if executor not in EXECUTORS:
        raise UsageError(f"--executor must be one of {EXECUTORS}, got {executor!r}")
    if executor == "auto":
        executor = resolve_auto(len(jobs), cpus_per_job)
    if executor == "local":
        return [fn(*args) for args in jobs]
    if executor == "processes":
        return _in_processes(fn, jobs, int(max(1, cpus_per_job)))
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'lkstn[distributed]'") from None
    started = not ray.is_initialized()
    if started:
        if address is None:  # a local instance: workers inherit this environment (PYTHONPATH)
            ray.init(
                num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                _node_ip_address="127.0.0.1",
            )  # fmt: skip
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=cpus_per_job, max_retries=max_retries)(fn)
        return ray.get([task.remote(*args) for args in jobs])
    finally:
        if started:
            ray.shutdown()


def resolve_auto(n_jobs: int, cpus_per_job: float = 1) -> str:
    """What ``"auto"`` runs: ``"processes"`` if two jobs or more can run at once here.

    >>> resolve_auto(1)
    'local'
    """
    at_once = (os.cpu_count() or 1) // int(max(1, cpus_per_job))
    return "processes" if n_jobs >= 2 and at_once >= 2 else "local"


def _in_processes(fn: Callable[..., T], jobs: Sequence[tuple], threads: int) -> list[T]:
    """``[fn(*args) for args in jobs]``, at most one job per ``threads`` CPUs at a time."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = max(1, min(len(jobs), (os.cpu_count() or 1) // threads))
    context = multiprocessing.get_context("spawn")  # no forked torch or BLAS thread state
    with ProcessPoolExecutor(
        workers, context, initializer=_torch_threads, initargs=(threads,)
    ) as pool:
        futures = [pool.submit(fn, *args) for args in jobs]
        return [f.result() for f in futures]


def _torch_threads(n: int) -> None:
    """Each worker's torch on ``n`` threads (what Ray's ``num_cpus`` gives a task)."""
    import torch

    torch.set_num_threads(n)
