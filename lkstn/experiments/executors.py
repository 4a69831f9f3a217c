"""Where the rows of an experiment train: in this process, or as Ray tasks on a cluster.

An experiment cuts its work into *jobs* (a row, a group of cells), each a call ``fn(*args)`` of
a module-level function that trains into its own run directories and returns plain data (state
dicts, seconds). :func:`run_jobs` runs them:

- ``"local"`` (default): one after the other in this process; Ray is not imported.
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

__all__ = ["EXECUTORS", "add_executor_arguments", "run_jobs"]

EXECUTORS = ("local", "ray")

T = TypeVar("T")


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor local|ray`` and ``--address``, for any ``lkstn reproduce`` experiment."""
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="run the rows in this process, or as Ray tasks (needs lkstn[distributed])",
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
    executor: str = "local",
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
    if executor == "local":
        return [fn(*args) for args in jobs]
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
