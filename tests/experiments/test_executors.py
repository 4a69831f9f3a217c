"""Tests for lkstn.experiments.executors: local jobs, processes, Ray tasks, a Ray worker killed
mid-row."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lkstn.errors import UsageError
from lkstn.experiments.executors import resolve_auto, run_jobs
from lkstn.experiments.planar import QUICK
from lkstn.experiments.planar_sweep import add_sweep_arguments, sweep_options, train_cells

# one row (sigma = 5 px, depths 1 and 2), 4 phases of 60 steps, a checkpoint at each phase's end
ROW = [(5.0, 1), (5.0, 2)]
RECIPE = replace(QUICK, sigmas=(5.0,), depths=(1, 2), n_steps=240)


def add(a: int, b: int) -> int:
    return a + b


def test_local_jobs_run_in_order_without_ray() -> None:
    assert run_jobs(add, [(1, 2), (3, 4)]) == [3, 7]
    with pytest.raises(UsageError, match="--executor"):
        run_jobs(add, [(1, 2)], executor="spark")


def test_ray_executor_without_ray_is_a_usage_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(UsageError, match="lkstn\\[distributed\\]"):
        run_jobs(add, [(1, 2)], executor="ray")


def dies_once(cells, recipe, out, marker):
    """``train_cells`` that SIGKILLs its own worker at its first checkpoint, on the first try."""
    if not Path(marker).exists():
        Path(marker).touch()

        def kill_at_first_checkpoint():
            while not any(Path(out).rglob("checkpoint.pt")):
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=kill_at_first_checkpoint, daemon=True).start()
    return train_cells(cells, recipe, out), os.getpid()


def assert_same_rows(a_row: dict, b_row: dict) -> None:
    """Every cell of ``ROW`` has the same state dict, bit for bit, in both results."""
    for cell in ROW:
        (a, _), (b, _) = a_row[cell], b_row[cell]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (cell, key)


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)  # fmt: skip
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.mark.usefixtures("one_torch_thread")
def test_a_row_whose_ray_worker_is_killed_finishes_with_the_same_result(local_ray, tmp_path):
    marker = tmp_path / "first_try"
    ((result, pid),) = run_jobs(
        dies_once, [(ROW, RECIPE, str(tmp_path / "ray"), str(marker))], executor="ray"
    )
    assert marker.exists() and pid != os.getpid()  # it ran in a Ray worker, and was retried
    logs = [p.read_text().splitlines() for p in (tmp_path / "ray").rglob("log.jsonl")]
    assert len(logs) == 2 * len(RECIPE.phases)  # every phase of both cells
    # the retry resumed from the dead worker's checkpoint: same result as an uninterrupted row
    straight = train_cells(ROW, RECIPE, tmp_path / "local")
    assert_same_rows(result, straight)


@pytest.mark.parametrize("executor", ["processes", "ray"])
def test_reproduce_planar_quick_on_an_executor(executor, tmp_path) -> None:
    if executor == "ray":
        pytest.importorskip("ray")
    out = tmp_path / "planar"
    proc = subprocess.run(
        [sys.executable, "-m", "lkstn", "reproduce", "planar", "--quick", "--executor", executor,
         "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (out / "table1.md").read_text()
    for name in ("c-STN-1", "IC-STN-2", "IC-STN-4"):
        assert f"| {name} |" in table
    assert (out / "fig7_sigma5.png").exists()


def test_ray_executor_with_separate_training_is_a_usage_error(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lkstn", "reproduce", "planar", "--quick", "--executor", "ray",
         "--sweep", "separate", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--sweep batched" in proc.stderr


@pytest.mark.parametrize(
    ("cpus", "n_jobs", "expected"),
    [
        (2, 4, "processes"),
        (16, 2, "processes"),
        (1, 4, "local"),
        (2, 1, "local"),
        (None, 4, "local"),
    ],
)
def test_auto_runs_jobs_in_processes_only_where_two_can_run_at_once(
    monkeypatch, cpus, n_jobs, expected
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert resolve_auto(n_jobs) == expected
    assert resolve_auto(n_jobs, cpus_per_job=8) == ("processes" if cpus == 16 else "local")


def test_auto_is_the_default_and_separate_training_stays_in_this_process() -> None:
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    args = parser.parse_args([])
    assert args.executor == "auto"
    assert sweep_options(args)["executor"] == "auto"
    args = parser.parse_args(["--sweep", "separate"])
    assert sweep_options(args)["executor"] == "local"


def pid_of(a: int) -> tuple[int, int, int]:
    import torch as t

    return a, os.getpid(), t.get_num_threads()


def test_processes_run_each_job_in_a_fresh_process_on_one_thread() -> None:
    out = run_jobs(pid_of, [(1,), (2,), (3,)], executor="processes")
    assert [a for a, _, _ in out] == [1, 2, 3]  # the order of the jobs, whatever finished first
    assert all(pid != os.getpid() and threads == 1 for _, pid, threads in out)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_row_in_a_process_equals_the_row_here(tmp_path) -> None:
    (there,) = run_jobs(train_cells, [(ROW, RECIPE, str(tmp_path / "p"))], executor="processes")
    here = train_cells(ROW, RECIPE, tmp_path / "here")
    assert_same_rows(there, here)
