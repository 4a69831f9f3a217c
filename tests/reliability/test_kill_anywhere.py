"""``lkstn reproduce mnist`` killed with SIGKILL at any instant, then resumed: nothing lost, nothing
changed.

The run: one row (IC-STN-2(b)) of ``--quick`` MNIST on small synthetic IDX files, 6 steps in
three chunks of 2, no figures. Every write of the run goes through one of four functions:
``runs.write_atomic`` (manifest, ``run.json``, ``row.json``, tables), ``runs.append_record``
(``log.jsonl``, ``progress.jsonl``), ``runs.truncate_records`` and ``save_checkpoint``. A forked
child runs the command with those functions wrapped so that it sends itself SIGKILL at one chosen
instant: before a write, after it, or in the middle (half a record line written, or half of the
checkpoint's temporary file). Another forked child then runs the same command with ``--resume``.
Its result must equal an uninterrupted run's: the checkpoint (model, optimizer and RNG state:
the same bytes), every log and progress record (wall times aside) and the table (wall time and
load average aside). Random kills (SIGKILL from the parent at a random time during the run) do
the same. Forking (the children share the parent's imported torch) keeps a case under a second.

The fast run kills at 6 chosen instants and 3 random ones; the slow run at every instant the
uninterrupted run has and at 30 random ones.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from lkstn import runs
from lkstn.learned import train as train_module
from lkstn.learned.checkpoint import load_checkpoint

from .test_run_directory import write_mnist

ROW = "ic-stn-2b"


def command(data: Path, out: Path, resume: bool) -> list[str]:
    return ["reproduce", "mnist", "--data", str(data), "--quick", "--rows", "IC-STN-2(b)",
            "--iters", "6", "--eval-every", "2", "--no-figures", "--out", str(out),
            *(["--resume"] if resume else [])]  # fmt: skip


def instrumented(kill_at: int, events: list[str]) -> None:
    """Wrap the run's writers: record each instant in ``events``; SIGKILL at the ``kill_at``-th."""

    def instant(name: str) -> None:
        events.append(name)
        if len(events) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(module, attr: str, label: str, half=None) -> None:
        real = getattr(module, attr)

        def wrapper(path, *args, **kwargs):
            where = f"{label} {Path(path).name}"
            instant(f"before {where}")
            if half is not None and len(events) + 1 == kill_at:
                events.append(f"mid {where}")
                half(path, *args)
                os.kill(os.getpid(), signal.SIGKILL)
            elif half is not None:
                events.append(f"mid {where}")
            result = real(path, *args, **kwargs)
            instant(f"after {where}")
            return result

        setattr(module, attr, wrapper)

    def half_record(path, record):  # a torn line: what a kill inside write() leaves
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        with open(path, "ab") as f:
            f.write(line[: len(line) // 2])

    def half_temporary(path, *args):  # a torn temporary file beside the target
        Path(path).with_name(f".{Path(path).name}.killed.tmp").write_bytes(b"PK\x03\x04 torn")

    wrap(runs, "write_atomic", "write", half=half_temporary)
    wrap(runs, "append_record", "append", half=half_record)
    wrap(runs, "truncate_records", "truncate")
    wrap(train_module, "save_checkpoint", "checkpoint", half=half_temporary)


def fork_run(data: Path, out: Path, resume: bool, kill_at: int = 0, events_to: Path | None = None):
    """Run the command in a forked child; returns ``(pid, None)`` or, when waited, the status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 3
        try:
            torch.set_num_threads(1)
            events: list[str] = []
            instrumented(kill_at, events)
            from lkstn.cli import main

            code = main(command(data, out, resume))
            if events_to is not None:
                events_to.write_text("\n".join(events))
        finally:
            os._exit(code)
    return pid


def wait(pid: int) -> str:
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return "killed"
    assert os.WEXITSTATUS(status) == 0, os.WEXITSTATUS(status)
    return "finished"


WALL_TIME = re.compile(r"\d+\.\d+ (min|h)|load average \[[^]]*\]")


def outcome(out: Path) -> dict:
    """What must not depend on kills: checkpoint bytes, records (times aside), table."""
    row = out / ROW
    ckpt = load_checkpoint(row / "checkpoint.pt")
    log = [
        {k: v for k, v in r.items() if k != "time"} for r in runs.read_records(row / "log.jsonl")
    ]
    progress = [{k: v for k, v in r.items() if k != "elapsed_s"}
                for r in runs.read_records(row / "progress.jsonl")]  # fmt: skip
    return {
        "checkpoint": (row / "checkpoint.pt").read_bytes(),
        "step": ckpt.step,
        "log": log,
        "progress": progress,
        "log_lines": len((row / "log.jsonl").read_text().splitlines()),
        "progress_lines": len((row / "progress.jsonl").read_text().splitlines()),
        "table": WALL_TIME.sub("T", (out / "table.md").read_text()),
        "temporaries": sorted(p.name for p in row.glob(".*.tmp")),  # removed by the resume
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The synthetic data, the uninterrupted run's outcome and its list of write instants."""
    root = tmp_path_factory.mktemp("kill")
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo (2 s) once, here
    import matplotlib.pyplot  # noqa: F401  (the report's imports, likewise)

    import lkstn.experiments.mnist  # noqa: F401  (what the command imports: once, in the parent)

    data = write_mnist(root / "data", 0)
    events = root / "events.txt"
    assert wait(fork_run(data, root / "straight", False, events_to=events)) == "finished"
    result = outcome(root / "straight")
    assert result["step"] == 6 and [r["step"] for r in result["progress"]] == [2, 4, 6]
    assert result["log_lines"] == result["progress_lines"] == 3
    return data, result, events.read_text().splitlines()


def kill_then_resume(data: Path, out: Path, expected: dict, kill_at: int = 0,
                     after_s: float | None = None) -> str:  # fmt: skip
    """Kill a run (at an instant, or ``after_s`` seconds), resume it, compare; returns what
    happened."""
    pid = fork_run(data, out, False, kill_at=kill_at)
    if after_s is not None:
        time.sleep(after_s)
        os.kill(pid, signal.SIGKILL)  # a no-op on a child that already finished (a zombie)
    ended = wait(pid) if after_s is None else ("killed" if _killed(pid) else "finished")
    resumed = wait(fork_run(data, out, True))
    assert resumed == "finished"
    got = outcome(out)
    for key in expected:
        assert got[key] == expected[key], f"{key} differs after a kill ({ended})"
    return ended


def _killed(pid: int) -> bool:
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


FAST_INSTANTS = (
    "before write manifest.json",
    "mid append log.jsonl",
    "after checkpoint checkpoint.pt",  # the chunk's record not yet in progress.jsonl
    "mid append progress.jsonl",
    "mid checkpoint checkpoint.pt",
    "before write table.md",
)


def test_killed_at_chosen_instants_and_randomly_then_resumed_identical(reference, tmp_path):
    data, expected, events = reference
    picks = [events.index(name) + 1 for name in FAST_INSTANTS]
    picks.append(len(events) - events[::-1].index("after checkpoint checkpoint.pt"))  # last one
    for i, kill_at in enumerate(picks):
        ended = kill_then_resume(data, tmp_path / f"i{i}", expected, kill_at=kill_at)
        assert ended == "killed", events[kill_at - 1]
    rng = random.Random(0)
    for i in range(3):
        kill_then_resume(data, tmp_path / f"r{i}", expected, after_s=rng.uniform(0.0, 0.6))


@pytest.mark.slow
def test_killed_at_every_write_instant_then_resumed_identical(reference, tmp_path, capsys):
    data, expected, events = reference
    for kill_at in range(1, len(events) + 1):
        ended = kill_then_resume(data, tmp_path / f"i{kill_at}", expected, kill_at=kill_at)
        assert ended == "killed", events[kill_at - 1]
    with capsys.disabled():
        print(f"\n  killed at each of {len(events)} write instants, all resumed")


@pytest.mark.slow
def test_30_random_sigkills_then_resumed_identical(reference, tmp_path, capsys):
    data, expected, _ = reference
    rng, killed, tries = random.Random(1), 0, 0
    start = time.perf_counter()
    assert wait(fork_run(data, tmp_path / "timing", False)) == "finished"
    duration = time.perf_counter() - start
    while killed < 30:
        tries += 1
        assert tries < 90, "the kills keep missing the run"
        ended = kill_then_resume(data, tmp_path / f"r{tries}", expected,
                                 after_s=rng.uniform(0.0, duration))  # fmt: skip
        killed += ended == "killed"
    with capsys.disabled():
        print(f"\n  {killed} random SIGKILLs in {tries} runs of {duration:.2f} s, all resumed")
