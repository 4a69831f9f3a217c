"""Run directories (``lkstn.runs``): every hostile case gets its documented outcome.

Each case below ends in one of: refused with one line naming the argument, file or differing
fields (``RunMismatch``/``RunExists``/``RunLocked``/``NotWritable``/``CheckpointError`` in the
library, exit code 2 in the command, never a traceback), or resumed/reported correctly. After a
refusal the run on disk is unchanged (its files compare equal byte for byte): no record lost, no
mismatch accepted. The cases are the table of docs/reliability.md ("Run directories").
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from lkstn import runs
from lkstn.cli import main
from lkstn.experiments import planar
from lkstn.experiments.problems import planar_problem
from lkstn.learned.checkpoint import CheckpointError, load_checkpoint
from lkstn.learned.predictors import LinearPredictor
from lkstn.learned.stn import CSTN, ICSTN, STN
from lkstn.learned.streams import AlignmentData
from lkstn.learned.train import TrainConfig, train
from lkstn.warps import Affine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = TrainConfig(n_steps=4, sigma=1.5, batch_size=8, optimizer="momentum", lr_predictor=1e-3,
                     n_test=8, eval_every=2, checkpoint_every=2, progress=False)  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but the lock), by relative path: to show nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != runs.LOCK}  # fmt: skip


def alignment_data() -> AlignmentData:
    noise = np.random.default_rng(0).standard_normal((40, 40))
    image = torch.as_tensor(ndimage.gaussian_filter(noise, 2.0), dtype=torch.float32)[None]
    return AlignmentData(image, torch.tensor([-0.5, 0.0, 0.05, 0.0, -0.5, -0.05]))


def icstn(n_warps: int = 2, update: str = "eq10", dropout: float = 0.0) -> ICSTN:
    layers = [nn.Dropout(dropout)] if dropout else []
    predictor = nn.Sequential(*layers, LinearPredictor((12, 12), 6))
    return ICSTN(predictor, warp="affine", n_warps=n_warps, template_shape=(12, 12), update=update)


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# -- train(resume=True) and load_checkpoint compare the stored configuration -----------------------

CHANGES = {
    "n_warps 2 -> 4": (dict(n_warps=4), {}, "n_warps"),
    "update eq10 -> inverse": (dict(update="inverse"), {}, "update"),
    "learning rate": ({}, dict(lr_predictor=2e-3), "lr_predictor"),
    "sigma": ({}, dict(sigma=3.0), "sigma"),
    "seed": ({}, dict(seed=1), "seed"),
    "batch size": ({}, dict(batch_size=16), "batch_size"),
    "optimiser": ({}, dict(optimizer="adam"), "optimizer"),
    "n_steps below the checkpoint's step": ({}, dict(n_steps=2), "n_steps"),
}


@pytest.mark.parametrize("case", list(CHANGES))
def test_a_resume_with_another_configuration_is_refused(tmp_path, case) -> None:
    model_change, config_change, field = CHANGES[case]
    train(icstn(), CONFIG, alignment_data(), run_dir=tmp_path)
    before = snapshot(tmp_path)
    model = icstn(**model_change)
    config = TrainConfig(**{**vars(CONFIG), **config_change})
    with pytest.raises(runs.RunMismatch, match=field) as info:
        train(model, config, alignment_data(), run_dir=tmp_path, resume=True)
    assert "\n" not in str(info.value)
    assert snapshot(tmp_path) == before  # the run is untouched
    # a checkpoint copied into a new run directory (no manifest of its own) is checked too
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "checkpoint.pt").write_bytes((tmp_path / "checkpoint.pt").read_bytes())
    (copy / runs.MANIFEST).write_text((tmp_path / runs.MANIFEST).read_text())
    manifest = json.loads((copy / runs.MANIFEST).read_text())
    from lkstn.learned.resume import run_identity

    manifest["identity"] = {**run_identity(model, config, alignment_data()),
                            "code": manifest["identity"]["code"]}  # fmt: skip
    (copy / runs.MANIFEST).write_text(json.dumps(manifest))  # forged to match: the checkpoint says
    with pytest.raises(runs.RunMismatch, match=field):
        train(model, config, alignment_data(), run_dir=copy, resume=True)


def test_a_longer_run_and_execution_settings_may_resume(tmp_path) -> None:
    """n_steps above the checkpoint's step, another eval_every or progress bar: the same run."""
    train(icstn(), CONFIG, alignment_data(), run_dir=tmp_path)
    config = TrainConfig(**{**vars(CONFIG), "n_steps": 6, "eval_every": 3, "progress": False})
    assert train(icstn(), config, alignment_data(), run_dir=tmp_path, resume=True).step == 6


@pytest.mark.parametrize(
    ("saved", "loaded"),
    [
        (
            lambda: CSTN([LinearPredictor((12, 12), 6)], warp="affine", template_shape=(12, 12)),
            lambda: STN([LinearPredictor((12, 12), 6)], warp="affine", template_shape=(12, 12)),
        ),
        (lambda: icstn(2), lambda: icstn(4)),
    ],  # fmt: skip
    ids=["c-STN-1 into STN", "IC-STN-2 into IC-STN-4"],
)
def test_a_checkpoint_of_another_model_is_refused(tmp_path, saved, loaded) -> None:
    from lkstn.learned.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "c.pt", saved(), step=1)
    model = loaded()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_checkpoint(path, model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_run_is_never_overwritten_without_fresh(tmp_path) -> None:
    train(icstn(), CONFIG, alignment_data(), run_dir=tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(runs.RunExists, match="--resume .* --fresh"):
        train(icstn(), CONFIG, alignment_data(), run_dir=tmp_path)
    assert snapshot(tmp_path) == before
    train(icstn(), CONFIG, alignment_data(), run_dir=tmp_path, fresh=True)  # deliberately
    assert load_checkpoint(tmp_path / "checkpoint.pt").step == CONFIG.n_steps


def test_torn_last_log_line_is_cut_on_resume_and_every_record_kept(tmp_path) -> None:
    train(icstn(), CONFIG, alignment_data(), run_dir=tmp_path)
    whole = (tmp_path / "log.jsonl").read_bytes()
    with open(tmp_path / "log.jsonl", "ab") as f:
        f.write(b'{"step": 6, "train_lo')  # a kill (or full disk) mid-append
    assert runs.read_records(tmp_path / "log.jsonl") == runs.read_records(io_path(whole, tmp_path))
    config = TrainConfig(**{**vars(CONFIG), "n_steps": 6})
    train(icstn(), config, alignment_data(), run_dir=tmp_path, resume=True)
    text = (tmp_path / "log.jsonl").read_bytes()
    assert text.startswith(whole)  # appended to, never rewritten
    assert [r["step"] for r in runs.read_records(tmp_path / "log.jsonl")] == [2, 4, 6]


def io_path(data: bytes, folder: Path) -> Path:
    path = folder / "expected.jsonl"
    path.write_bytes(data)
    return path


# -- the lock --------------------------------------------------------------------------------------


LOCKER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_second_writer_is_refused_and_the_lock_dies_with_its_holder(tmp_path, capsys) -> None:
    tmp_path.mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp_path / runs.LOCK)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(runs.RunLocked, match="another process"):
            train(icstn(), CONFIG, alignment_data(), run_dir=tmp_path)
        assert not (tmp_path / runs.MANIFEST).exists()
        code = main(["reproduce", "planar", "--quick", "--out", str(tmp_path)])
        assert code == 2
        one_line_error(capsys, "another process")
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait()
        holder.stdout.close()
        holder.stdin.close()
    train(icstn(), CONFIG, alignment_data(), run_dir=tmp_path)  # free again


def test_a_lock_let_go_within_the_wait_is_taken(tmp_path) -> None:
    """A holder that exits within ``LOCK_WAIT_S`` (a killed run, or a child it forked just before
    being killed) delays the next run instead of refusing it; one that holds on is refused."""
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp_path / runs.LOCK)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    threading.Timer(0.3 * runs.LOCK_WAIT_S, holder.kill).start()
    with runs.lock(tmp_path):  # waits for the kill
        assert holder.poll() is not None or holder.wait(1.0) is not None
    holder.stdout.close()
    holder.stdin.close()


def test_the_lock_is_reentrant_within_one_process(tmp_path) -> None:
    with runs.lock(tmp_path), runs.lock(tmp_path):  # classification: the row, then train()
        pass
    with runs.lock(tmp_path):
        pass


# -- planar: a run of other settings is refused, not reported ----------------------------------


def test_planar_steps_40_on_a_400_step_run_is_refused(tmp_path, capsys) -> None:
    """The refusal comes from the manifest, before any training: the 400-step run here is its
    manifest and its report (training it for real takes minutes)."""
    recipe = planar.Recipe(n_steps=400)
    prob = planar_problem(planar.SHAPE, warp=Affine())
    with runs.lock(tmp_path):
        runs.open_run(tmp_path, planar.run_identity(recipe, prob), resume=False)
    runs.write_atomic(tmp_path / "planar.json", json.dumps({"recipe": {"n_steps": 400}}))
    before = snapshot(tmp_path)
    assert main(["reproduce", "planar", "--steps", "40", "--resume", "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "recipe.n_steps: run 400, now 40")
    assert main(["reproduce", "planar", "--seed", "1", "--steps", "400", "--resume", "--out",
                 str(tmp_path)]) == 2  # fmt: skip
    one_line_error(capsys, "recipe.seed: run 0, now 1")
    assert main(["reproduce", "planar", "--steps", "40", "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "holds a run", "--fresh")
    assert snapshot(tmp_path) == before


# -- lkstn reproduce mnist on small synthetic IDX files ------------------------------------------


def write_mnist(root: Path, seed: int, n_train: int = 40, n_test: int = 20) -> Path:
    """Four gzip IDX files of digit-like images (a bar whose position is the label)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 6:22, 4 + 2 * c : 6 + 2 * c] = 255
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            head = struct.pack(f">I{array.ndim}I", 0x0800 + array.ndim, *array.shape)
            (root / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(head + array.tobytes()))
    return root


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("mnist"), 0)


def reproduce(data: Path, out: Path, *extra: str, iters: int = 4, eval_every: int = 2) -> int:
    return main(["reproduce", "mnist", "--data", str(data), "--rows", "IC-STN-2(b)", "--iters",
                 str(iters), "--eval-every", str(eval_every), "--no-figures", "--out", str(out),
                 *extra])  # fmt: skip


def test_mnist_resume_of_other_data_or_without_quick_is_refused(mnist, tmp_path, capsys) -> None:
    assert reproduce(mnist, tmp_path, "--quick") == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert reproduce(mnist, tmp_path, "--resume") == 2  # --quick forgotten
    one_line_error(capsys, "quick_subset: run true, now false")
    other = write_mnist(tmp_path.parent / "other-mnist", 1)
    assert reproduce(other, tmp_path, "--quick", "--resume") == 2
    one_line_error(capsys, "data.data.sha256")
    assert reproduce(mnist, tmp_path, "--quick") == 2  # no --resume: the run is kept
    one_line_error(capsys, "holds a run", "--fresh")
    assert snapshot(tmp_path) == before  # nothing was rewritten, table included
    assert reproduce(mnist, tmp_path, "--quick", "--resume", iters=6) == 0  # the same run: on
    assert reproduce(mnist, tmp_path, "--quick", "--fresh") == 0  # deliberately over
    capsys.readouterr()
    assert len(runs.read_records(tmp_path / "ic-stn-2b" / "progress.jsonl")) == 2


def steps_in_table(out: Path) -> str:
    line = next(ln for ln in (out / "table.md").read_text().splitlines() if "IC-STN-2(b)" in ln)
    return line.split("|")[6].strip()


def test_a_kill_between_checkpoint_and_progress_record_is_repaired(mnist, tmp_path) -> None:
    """The state such a kill leaves: the checkpoint and log at step 4, progress at step 2 (or,
    for a single-chunk run, no progress at all). The report and the resume rebuild the missing
    record from the log; a torn progress line is cut."""
    assert reproduce(mnist, tmp_path, "--quick") == 0
    row = tmp_path / "ic-stn-2b"
    progress = (row / "progress.jsonl").read_text().splitlines()
    (row / "progress.jsonl").write_text(progress[0] + "\n" + progress[1][:25])  # lost + torn
    assert reproduce(mnist, tmp_path, "--quick", "--report-only") == 0
    assert steps_in_table(tmp_path) == "4"
    assert reproduce(mnist, tmp_path, "--quick", "--resume") == 0
    rebuilt = runs.read_records(row / "progress.jsonl")
    assert [r["step"] for r in rebuilt] == [2, 4] and (row / "progress.jsonl").read_text()[
        -1:
    ] == "\n"
    assert {k: v for k, v in rebuilt[1].items() if k != "elapsed_s"} == {
        k: v for k, v in json.loads(progress[1]).items() if k != "elapsed_s"}  # fmt: skip
    # a single-chunk run killed before its first progress record
    single = tmp_path / "single"
    assert reproduce(mnist, single, "--quick", iters=4, eval_every=4) == 0
    (single / "ic-stn-2b" / "progress.jsonl").unlink()
    assert reproduce(mnist, single, "--quick", "--resume", iters=4, eval_every=4) == 0
    assert [r["step"] for r in runs.read_records(single / "ic-stn-2b" / "progress.jsonl")] == [4]
    assert steps_in_table(single) == "4"


def test_an_unwritable_output_folder_is_one_line(mnist, tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("not a folder")
    assert reproduce(mnist, tmp_path / "file" / "out", "--quick") == 2
    one_line_error(capsys, "cannot write", "file")


def test_a_full_disk_is_one_line_and_exit_2(mnist, tmp_path) -> None:
    """A forked child whose files may not grow past 50 kB (RLIMIT_FSIZE; a write past it fails
    with EFBIG as on a full disk): the checkpoint (~80 kB) cannot be written."""
    argv = [
        "reproduce",
        "mnist",
        "--data",
        str(mnist),
        "--rows",
        "IC-STN-2(b)",
        "--quick",
        "--iters",
        "2",
        "--eval-every",
        "2",
        "--no-figures",
        "--out",
        str(tmp_path / "out"),
    ]
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # its imports before the limit
    err = tmp_path / "stderr.txt"
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 3
        try:
            sys.stderr = open(err, "w", buffering=1)  # noqa: SIM115 (the child's own stderr)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
            code = main(argv)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    stderr = err.read_text()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 2, stderr[-2000:]
    assert "Traceback" not in stderr and "inline_container" not in stderr
    assert "cannot write" in stderr and "checkpoint.pt" in stderr
    assert stderr.strip().count("\n") == 0, stderr
    assert not list((tmp_path / "out" / "ic-stn-2b").glob(".checkpoint.pt.*"))  # none left


# -- checkpoints: bounded memory, every field checked ----------------------------------------------


def saved_state(tmp_path: Path) -> dict:
    model = icstn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.predictor[-1].linear.weight.sum().backward()
    optimizer.step()
    from lkstn.learned.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "c.pt", model, optimizer, step=1)
    return torch.load(tmp_path / "c.pt", weights_only=True)


@pytest.mark.parametrize(
    "megabytes", [256, pytest.param(1536, marks=pytest.mark.slow)], ids=["256 MB", "1.5 GB"]
)
def test_a_compressed_bomb_is_refused_before_it_is_inflated(tmp_path, megabytes) -> None:
    """The first tensor's storage replaced by ``megabytes`` of zeros deflated ~1000:1 (1.5 GB:
    a 1.5 MB file): refused from the zip directory; peak memory grows < 64 MB (torch would read
    the record whole: with the check disabled the 1.5 GB file took the peak RSS to 1.86 GB)."""
    path = tmp_path / "bomb.pt"
    saved_state(tmp_path)
    with (
        zipfile.ZipFile(tmp_path / "c.pt") as src,
        zipfile.ZipFile(path, "w", compresslevel=1) as dst,
    ):
        for info in src.infolist():
            if not info.filename.endswith("/data/0"):
                dst.writestr(info, src.read(info))
                continue
            info = zipfile.ZipInfo(info.filename)
            info.compress_type, zeros = zipfile.ZIP_DEFLATED, bytes(1 << 20)
            with dst.open(info, "w", force_zip64=True) as member:
                for _ in range(megabytes):
                    member.write(zeros)
    assert path.stat().st_size < megabytes << 12  # < 1/256 of what it declares
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    with pytest.raises(CheckpointError, match="compressed"):
        load_checkpoint(path, icstn())
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 64 * 1024


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update(rng_state=torch.zeros(10, dtype=torch.uint8)), "rng_state"),
        (
            lambda s: s["optimizer"]["state"][0].update(momentum_buffer=torch.zeros(3, 3)),
            "momentum_buffer",
        ),
    ],  # fmt: skip
    ids=["10-byte rng_state", "wrong-shape momentum buffer"],
)
def test_edited_fields_are_one_line_errors(tmp_path, edit, message) -> None:
    state = saved_state(tmp_path)
    edit(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (tmp_path / "edited.pt").write_bytes(buffer.getvalue())
    model = icstn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(tmp_path / "edited.pt", model, optimizer)
    assert "\n" not in str(info.value)


# -- determinism: every generator seeded from the run's seed ---------------------------------------


def test_a_dropout_predictor_trains_to_the_same_bytes_twice(tmp_path) -> None:
    for k, folder in enumerate(("a", "b")):
        torch.manual_seed(1000 + k)  # scramble the global generators: train() must reseed them
        np.random.seed(1000 + k)  # noqa: NPY002
        config = TrainConfig(**{**vars(CONFIG), "workers": 1})
        train(icstn(dropout=0.3), config, alignment_data(), run_dir=tmp_path / folder)
    a, b = ((tmp_path / f / "checkpoint.pt").read_bytes() for f in ("a", "b"))
    assert a == b
    logs = [
        [
            {k: v for k, v in r.items() if k != "time"}
            for r in runs.read_records(tmp_path / f / "log.jsonl")
        ]
        for f in ("a", "b")
    ]
    assert logs[0] == logs[1]


def test_two_identical_quick_runs_write_the_same_bytes(mnist, tmp_path, monkeypatch) -> None:
    """``lkstn reproduce mnist --quick`` twice, with dropout in the predictor (torch's global
    generator draws its masks) and the global generators scrambled in between: the same
    checkpoint bytes, records and table (wall times and load average aside)."""
    from dataclasses import replace

    from lkstn.experiments import mnist as experiment

    base = experiment.MNIST.predictor

    def with_dropout(arch, generator=None):
        return nn.Sequential(nn.Dropout(0.2), base(arch, generator=generator))

    monkeypatch.setattr(experiment, "MNIST", replace(experiment.MNIST, predictor=with_dropout))
    for k in (0, 1):
        torch.manual_seed(1000 + k)
        reproduce(mnist, tmp_path / str(k), "--quick")
    row = "ic-stn-2b"
    a, b = ((tmp_path / k / row / "checkpoint.pt").read_bytes() for k in "01")
    assert a == b
    ckpt = load_checkpoint(tmp_path / "0" / row / "checkpoint.pt")
    assert any("0.weight" in k or "1.0" in k for k in ckpt.model_state)  # the wrapped predictor
    for name, drop in (("log.jsonl", "time"), ("progress.jsonl", "elapsed_s")):
        first, second = (
            [{k: v for k, v in r.items() if k != drop}
             for r in runs.read_records(tmp_path / k / row / name)] for k in "01"
        )  # fmt: skip
        assert first == second and len(first) == 2
    times = re.compile(r"\d+\.\d+ (min|h)|load average \[[^]]*\]|/[01]\b")
    tables = [times.sub("T", (tmp_path / k / "table.md").read_text()) for k in "01"]
    assert tables[0] == tables[1]


@pytest.mark.slow
def test_planar_real_run_of_other_steps_is_refused_and_a_resume_reuses_it(tmp_path, capsys):
    """A real (short) ``--quick`` run, then ``--steps`` of another length: refused, the report
    untouched; the same command with ``--resume`` loads the finished trainings."""
    out = str(tmp_path / "planar")
    assert main(["reproduce", "planar", "--quick", "--steps", "8", "--out", out]) == 0
    before = snapshot(tmp_path / "planar")
    capsys.readouterr()
    assert main(["reproduce", "planar", "--quick", "--steps", "40", "--resume", "--out", out]) == 2
    one_line_error(capsys, "recipe.n_steps: run 8, now 40")
    assert snapshot(tmp_path / "planar") == before
    assert main(["reproduce", "planar", "--quick", "--steps", "8", "--resume", "--out", out]) == 0
    first = json.loads(before["planar.json"])["table1"]
    assert json.loads((tmp_path / "planar" / "planar.json").read_text())["table1"] == first
