"""Training killed with SIGKILL, resumed, and finished bit for bit like a run never interrupted.

A tiny IC-STN alignment run (``lkstn.learned.train.train``, a checkpoint at every step) runs in a
child interpreter that is killed with ``SIGKILL`` again and again, then resumed with
``resume=True`` each time, until a child finishes. Two kinds of kill:

- **mid-write**: the child's ``torch.save`` writes half of the checkpoint, reports it and blocks;
  the parent kills it there, so the kill lands inside ``save_checkpoint`` with a torn temporary
  file on disk, every time;
- **random**: the parent kills the child a random time (seeded, 0-30 ms) after its first write.

After every kill the checkpoint on disk must load (writes are atomic: the previous checkpoint or the
new one, never a torn file) at a step no later than the child reached. At the end the parameters,
the optimizer's momentum and the evaluation log equal (``torch.equal``, ``==``) those of an
uninterrupted run with the same seed. The default run kills 3 times (~25 s on 2 busy cores: each
child spends ~3 s importing torch); the slow test kills 8 times.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from lkstn.learned.checkpoint import CheckpointError, load_checkpoint
from lkstn.learned.predictors import LinearPredictor
from lkstn.learned.stn import ICSTN
from lkstn.learned.streams import AlignmentData
from lkstn.learned.train import TrainConfig, train

N_STEPS = 40
CONFIG = dict(n_steps=N_STEPS, sigma=1.5, batch_size=8, optimizer="momentum", lr_predictor=1e-3,
              n_test=16, eval_every=8, checkpoint_every=1, progress=False)  # fmt: skip
CHILD_TIMEOUT_S = 120


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def task() -> tuple[ICSTN, AlignmentData]:
    """A 12 x 12 affine IC-STN (one linear layer) and a box in a 40 x 40 smooth image."""
    noise = np.random.default_rng(0).standard_normal((40, 40))
    image = torch.as_tensor(ndimage.gaussian_filter(noise, 2.0), dtype=torch.float32)[None]
    model = ICSTN(LinearPredictor((12, 12), 6), warp="affine", n_warps=2, template_shape=(12, 12))
    return model, AlignmentData(image, torch.tensor([-0.5, 0.0, 0.05, 0.0, -0.5, -0.05]))


CHILD = textwrap.dedent(f"""
    import io, sys, time
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from test_interrupted_training import CONFIG, task
    from lkstn.learned.train import TrainConfig, train

    run_dir, pause_write, pause_step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    real_save, writes = torch.save, []

    def save_in_two_halves(obj, f):  # what save_checkpoint calls; reports where it is
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data, step = buffer.getvalue(), obj["step"]
        writes.append(step)
        f.write(data[: len(data) // 2])
        f.flush()
        print("half", step, flush=True)
        if len(writes) == pause_write or step == pause_step:
            sys.stdin.readline()  # block mid-write: the parent kills us here
        time.sleep(0.005)  # at least 5 ms a step, so that random kills land during training
        f.write(data[len(data) // 2 :])
        print("saved", step, flush=True)

    torch.save = save_in_two_halves
    model, data = task()
    print("ready", flush=True)
    train(model, TrainConfig(**CONFIG), data, run_dir=run_dir, resume=True)
    print("done", flush=True)
""")


def run_child(run_dir: Path, *, pause: tuple[int, int] = (0, -1), kill_after_s: float = -1.0):
    """Run one child; kill it mid-write at its ``pause[0]``-th checkpoint write or at step
    ``pause[1]``, or ``kill_after_s`` after its first write. Returns ``(how it ended, stdout)``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(run_dir), *map(str, pause)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(CHILD_TIMEOUT_S, proc.kill)
    watchdog.start()
    timer = threading.Timer(kill_after_s, proc.kill)  # SIGKILL
    lines: list[str] = []
    ended = "finished"
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            writes = sum(ln.startswith("half") for ln in lines)
            if lines[-1].startswith("half") and (
                writes == pause[0] or lines[-1] == f"half {pause[1]}"
            ):
                proc.kill()  # SIGKILL with half a checkpoint written
                ended = "killed mid-write"
                break
            if writes == 1 and kill_after_s >= 0 and not timer.is_alive():
                timer.start()
                ended = f"killed {1000 * kill_after_s:.0f} ms into training"
        lines += [ln.strip() for ln in proc.stdout.read().splitlines()]
        proc.wait(timeout=CHILD_TIMEOUT_S)
    finally:
        timer.cancel()
        watchdog.cancel()
        proc.stdout.close()
        proc.stdin.close()
    if proc.returncode == 0:
        assert lines[-1] == "done", lines[-3:]
        return "finished", lines
    assert proc.returncode == -9, proc.returncode  # SIGKILL, nothing else
    return ended, lines


def check_after_kill(run_dir: Path, lines: list[str], last_step: int) -> int:
    """The checkpoint on disk loads, at a step the child wrote (or the last one): the newest, or
    the one before it when the kill fell between the write and the rename."""
    path = run_dir / "checkpoint.pt"
    written = [int(m[1]) for ln in lines if (m := re.fullmatch(r"saved (\d+)", ln))]
    if not path.exists():
        assert not written and last_step == 0, lines[-3:]
        return 0
    model, _ = task()
    try:
        step = load_checkpoint(path, model).step
    except CheckpointError as exc:
        pytest.fail(f"the checkpoint left by a SIGKILL does not load: {exc}")
    assert step in {last_step, *written}, (step, last_step, lines[-3:])
    assert step >= max(written, default=last_step) - 1, (step, lines[-3:])
    return step


def uninterrupted() -> tuple[ICSTN, list[dict]]:
    model, data = task()
    result = train(model, TrainConfig(**CONFIG), data)
    return model, [{k: v for k, v in r.items() if k != "time"} for r in result.records]


def kill_and_resume(run_dir: Path, plan: list, seed: int) -> list[str]:
    """Kill children as ``plan`` says, then let one finish; returns a line per child. A plan entry
    is ``k`` (kill in the child's ``k``-th checkpoint write), ``"last"`` (in the write of the final
    step) or ``"random"``."""
    rng = random.Random(seed)
    report, step = [], 0
    for kill in plan:
        if kill == "random":  # at most 6 steps of 5 ms: the run never ends before the plan
            ended, lines = run_child(run_dir, kill_after_s=rng.uniform(0.0, 0.03))
            assert ended != "finished"
            events = [ln for ln in lines if ln.startswith(("half", "saved"))]
            if events and events[-1].startswith("half"):
                ended += " (mid-write)"
        else:
            pause = (0, N_STEPS) if kill == "last" else (kill, -1)
            ended, lines = run_child(run_dir, pause=pause)
            assert ended == "killed mid-write", ended
            torn = list(run_dir.glob(".checkpoint.pt.*.tmp"))
            assert torn, "no torn temporary file: the kill did not land mid-write"
        step = check_after_kill(run_dir, lines, step)
        report.append(f"{ended}: checkpoint at step {step}")
    ended, lines = run_child(run_dir)
    assert ended == "finished"
    report.append(f"resumed from step {step} and finished")
    return report


def assert_same_as_uninterrupted(run_dir: Path) -> None:
    straight, records = uninterrupted()
    model, _ = task()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    ckpt = load_checkpoint(run_dir / "checkpoint.pt", model, optimizer)
    assert ckpt.step == N_STEPS
    for (name, a), b in zip(straight.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b), f"{name} differs from the uninterrupted run"
        assert a.abs().sum() > 0  # it did train: the predictor starts at zero
    for state in optimizer.state.values():
        assert state["momentum_buffer"].abs().sum() > 0
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    logged = [{k: v for k, v in json.loads(ln).items() if k != "time"} for ln in lines]
    assert logged == records  # every evaluation once, the same numbers


def test_killed_3_times_including_mid_write_then_resumed_bit_identical(tmp_path, capsys) -> None:
    report = kill_and_resume(tmp_path, [3, "random", "last"], seed=0)
    assert_same_as_uninterrupted(tmp_path)
    with capsys.disabled():
        print("\n  " + "\n  ".join(report))


@pytest.mark.slow
def test_killed_8_times_including_mid_write_then_resumed_bit_identical(tmp_path, capsys) -> None:
    plan = [1, "random", "random", 2, "random", 3, "random", "last"]
    report = kill_and_resume(tmp_path, plan, seed=1)
    assert_same_as_uninterrupted(tmp_path)
    with capsys.disabled():
        print("\n  " + "\n  ".join(report))


def test_a_torn_last_log_line_does_not_stop_a_resume(tmp_path) -> None:
    """A full disk or a kill inside ``write`` can leave half a line at the end of ``log.jsonl``.
    Resuming must still work, and the log must end up whole and equal to the uninterrupted one."""
    model, data = task()
    train(model, TrainConfig(**{**CONFIG, "n_steps": 16}), data, run_dir=tmp_path)
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 24, "train_loss": 0.0')  # torn: no closing brace, no newline
    model, data = task()
    train(model, TrainConfig(**CONFIG), data, run_dir=tmp_path, resume=True)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    logged = [{k: v for k, v in json.loads(ln).items() if k != "time"} for ln in lines]
    assert logged == uninterrupted()[1]
