"""Bad input to ``lkstn reproduce``: every case ends in one line naming the argument or the file,
exit code 2, with bounded memory. Never a traceback, never a silent default, never a GB read.

Two runners:

- in process (``lkstn.cli.main``), with ``tracemalloc`` measuring the peak of Python and NumPy
  allocations during the call: fast, one row per case;
- as the real command in a subprocess for the three bombs (each 4 GiB inflated from about 4 MB,
  or 5 GB of sparse file), with the child's peak resident memory read from ``os.wait4``.

Caps: the in-process rows must allocate under 64 MiB (the biggest legitimate allocation in these
rows is a few KB of header; the bombs' headers declare 4 GiB). A bomb's command may add at most
256 MiB of resident memory to that of the same command refusing an empty data folder, run beside
it (the loaders' default cap is 256 MB, and each bomb would need 4 GiB; before the caps, the gzip
bomb reached GBs before MemoryError). The baseline is measured, not assumed: importing torch
costs about 250 MB with the CPU build and over 1 GB with the CUDA build that an open ``torch``
requirement installs.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lkstn.cli import main
from tests.reliability import hostile_files as hf

REPO = Path(__file__).resolve().parents[2]
MEMORY_CAP_IN_PROCESS = 64 << 20  # bytes traced by tracemalloc during one call
MEMORY_ADDED_BY_COMMAND = 256 << 20  # peak resident bytes over the empty-folder baseline


@dataclass(frozen=True)
class Outcome:
    code: int
    stderr: str
    peak: int


def run_in_process(argv: list[str]) -> Outcome:
    """``lkstn.cli.main(argv)``: its exit code, stderr and the peak of traced allocations."""
    err = io.StringIO()
    tracemalloc.start()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return Outcome(code, err.getvalue(), peak)


def check_one_line(outcome: Outcome, names: str) -> None:
    assert "Traceback" not in outcome.stderr, outcome.stderr
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1, outcome.stderr
    assert names in lines[0], (names, lines[0])


# -- arguments -----------------------------------------------------------------------------------

BAD_VALUES = [  # (experiment, option, values each refused with a message naming the option)
    ("mnist", "--device", ("foo", "CPU", "mps", "meta", "cuda:x")),
    ("gtsrb", "--threads", ("0", "-1", "100000", "two")),
    ("mnist", "--seed", (str(2**70), "-3", "1.5")),
    ("mnist", "--iters", ("0", "-5", str(10**30))),
    ("mnist", "--eval-every", ("0",)),
    ("gtsrb", "--data", ("", "/nonexistent/lkstn-data")),
    ("mnist", "--time-limit", ("-1", "nan", "inf", "0")),
    ("mnist", "--lr-predictor", ("nan",)),
    ("gtsrb", "--lr-classifier", ("-1e-3",)),
    ("mnist", "--rows", ("IC-STN-9(a)",)),
    ("mnist", "--recipe", ("slow",)),
    ("gtsrb", "--frame", ("theirs",)),
    ("boundary", "--size", ("60000", "4")),
    ("boundary", "--zoom", ("nan", "-2")),
    ("planar", "--seed", (str(2**70),)),
    ("planar", "--threads", ("0",)),
    ("planar", "--steps", ("2",)),
    ("equivalence", "--threads", ("-1",)),
    ("mnist", "--compare", ("/nonexistent/lkstn-runs",)),
]
ARGUMENT_CASES = [(e, [option, v], option) for e, option, values in BAD_VALUES for v in values]


@pytest.mark.parametrize(("experiment", "extra", "names"), ARGUMENT_CASES)
def test_bad_argument_is_one_line_exit_2(experiment, extra, names, tmp_path):
    argv = ["reproduce", experiment, *extra, "--out", str(tmp_path / "out")]
    outcome = run_in_process(argv)
    assert outcome.code == 2, outcome.stderr
    check_one_line(outcome, names)
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.parametrize(
    ("argv", "names"),
    [([], "COMMAND"), (["reproduce"], "EXPERIMENT"), (["reproduce", "tables"], "tables"),
     (["align", "a.png", "b.png", "--bogus"], "--bogus")],
)  # fmt: skip
def test_missing_or_unknown_command_is_one_line_exit_2(argv, names):
    outcome = run_in_process(argv)
    assert outcome.code == 2
    check_one_line(outcome, names)


@pytest.mark.parametrize("experiment", ["mnist", "gtsrb", "planar", "equivalence", "boundary"])
def test_output_folder_that_is_a_file_is_refused(experiment, tmp_path):
    (tmp_path / "taken").write_text("a file")
    outcome = run_in_process(["reproduce", experiment, "--out", str(tmp_path / "taken")])
    assert outcome.code == 2
    check_one_line(outcome, "--out")
    assert (tmp_path / "taken").read_text() == "a file"


def test_boundary_zoom_at_most_one_is_refused(tmp_path):
    outcome = run_in_process(["reproduce", "boundary", "--zoom", "1", "--out", str(tmp_path)])
    assert outcome.code == 2
    check_one_line(outcome, "--zoom")


# -- dataset files ---------------------------------------------------------------------------------


def _mnist_random(root: Path) -> Path:
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # fmt: skip
        hf.random_bytes(root / name)
    return root


def _mnist_png(root: Path) -> Path:
    hf.mnist_dir(root, gz=True)
    (root / "train-images-idx3-ubyte.gz").write_bytes(hf.png_bytes())  # a PNG renamed
    return root


def _mnist_swapped(root: Path) -> Path:
    rng = np.random.default_rng(1)
    labels = hf.idx_bytes(rng.integers(0, 10, 20))
    images = hf.idx_bytes(rng.integers(0, 256, (20, 28, 28)))
    return hf.mnist_dir(root, images=labels, labels=images)  # each in the other's file


def _mnist_32(root: Path) -> Path:
    return hf.mnist_dir(root, images=hf.idx_bytes(np.zeros((20, 32, 32))))


def _mnist_label_10(root: Path) -> Path:
    return hf.mnist_dir(root, labels=hf.idx_bytes(np.r_[np.zeros(19), 10]))


def _mnist_count_mismatch(root: Path) -> Path:
    return hf.mnist_dir(root, labels=hf.idx_bytes(np.zeros(19)))


def _mnist_sparse_zeros(root: Path) -> Path:
    hf.mnist_dir(root)
    hf.sparse_file(root / "train-images-idx3-ubyte", 1 << 30)  # 1 GiB of zeros
    return root


def _mnist_sparse_honest(root: Path) -> Path:
    hf.mnist_dir(root)  # a header that declares the 1.2 GB the (sparse) file really holds
    n = 1_500_000
    hf.sparse_file(root / "train-images-idx3-ubyte", 16 + n * 784, hf.idx_header(n, 28, 28))
    return root


def _mnist_truncated_gz(root: Path) -> Path:
    hf.mnist_dir(root, gz=True)
    path = root / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    return root


def _gtsrb_random_npz(root: Path) -> Path:
    hf.random_bytes(root / "gtsrb.npz")
    return root


def _gtsrb_sparse_npz(root: Path) -> Path:
    hf.sparse_file(root / "gtsrb.npz", 1 << 30)
    return root


def _gtsrb_object_npz(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    hf.object_npz(root / "gtsrb.npz")
    return root


def _gtsrb_labels_out_of_range(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    x = np.zeros((4, 32, 32, 3), np.uint8)
    y = np.array([0, 1, 2, 43])
    np.savez(root / "gtsrb.npz", X_train=x, y_train=y, X_test=x, y_test=y)
    return root


def _gtsrb_png_as_ppm(root: Path) -> Path:
    return hf.gtsrb_official(root, ppm=hf.png_bytes())


def _gtsrb_huge_ppm_header(root: Path) -> Path:
    return hf.gtsrb_official(root, ppm=b"P6\n40000 40000\n255\n")


def _gtsrb_sparse_csv(root: Path) -> Path:
    hf.gtsrb_official(root)
    csv = root / "gtsrb" / "Final_Training" / "Images" / "00000" / "GT-00000.csv"
    hf.sparse_file(csv, 1 << 30, csv.read_bytes())  # the real rows, then a 1 GiB hole
    return root


FILE_CASES = [  # (id, experiment, builder, a name the message must contain)
    ("mnist-random-bytes", "mnist", _mnist_random, "train-images-idx3-ubyte"),
    ("mnist-png-renamed", "mnist", _mnist_png, "train-images-idx3-ubyte.gz"),
    ("mnist-images-labels-swapped", "mnist", _mnist_swapped, "train-images-idx3-ubyte"),
    ("mnist-32x32", "mnist", _mnist_32, "train-images-idx3-ubyte"),
    ("mnist-label-out-of-range", "mnist", _mnist_label_10, "train-labels-idx1-ubyte"),
    ("mnist-count-mismatch", "mnist", _mnist_count_mismatch, "train-labels-idx1-ubyte"),
    ("mnist-1GB-sparse-zeros", "mnist", _mnist_sparse_zeros, "train-images-idx3-ubyte"),
    ("mnist-1GB-sparse-honest", "mnist", _mnist_sparse_honest, "train-images-idx3-ubyte"),
    ("mnist-truncated-gz", "mnist", _mnist_truncated_gz, "train-images-idx3-ubyte.gz"),
    ("mnist-missing", "mnist", lambda root: root, "MNIST train images not found"),
    ("gtsrb-random-npz", "gtsrb", _gtsrb_random_npz, "gtsrb.npz"),
    ("gtsrb-1GB-sparse-npz", "gtsrb", _gtsrb_sparse_npz, "gtsrb.npz"),
    ("gtsrb-object-array", "gtsrb", _gtsrb_object_npz, "gtsrb.npz"),
    ("gtsrb-label-out-of-range", "gtsrb", _gtsrb_labels_out_of_range, "gtsrb.npz"),
    ("gtsrb-png-as-ppm", "gtsrb", _gtsrb_png_as_ppm, "00000_00000.ppm"),
    ("gtsrb-ppm-40000x40000", "gtsrb", _gtsrb_huge_ppm_header, "00000_00000.ppm"),
    ("gtsrb-1GB-sparse-csv", "gtsrb", _gtsrb_sparse_csv, "GT-00000.csv"),
]


@pytest.mark.parametrize(
    ("experiment", "build", "names"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES]
)
def test_bad_data_file_is_one_line_exit_2(experiment, build, names, tmp_path):
    root = build(tmp_path / "data")
    root.mkdir(parents=True, exist_ok=True)
    argv = ["reproduce", experiment, "--data", str(root), "--out", str(tmp_path / "out")]
    outcome = run_in_process(argv)
    assert outcome.code == 2, outcome.stderr
    check_one_line(outcome, names)
    print(f"{experiment} {build.__name__}: exit 2, traced peak {outcome.peak / 2**20:.2f} MiB")
    assert outcome.peak < MEMORY_CAP_IN_PROCESS, outcome.peak


# -- bombs, as the real command --------------------------------------------------------------------


def _mnist_gzip_bomb(root: Path) -> Path:
    hf.mnist_dir(root, gz=True)  # train images: an honest header for 4 GiB, and 4 GiB of zeros
    hf.gzip_bomb(root / "train-images-idx3-ubyte.gz", hf.idx_header(4096, 1024, 1024), 1 << 32)
    return root


def _gtsrb_npz_bomb(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    hf.npz_bomb(root / "gtsrb.npz", (1_100_000, 36, 36, 3))  # 4.28 GB from 4.2 MB
    return root


def _gtsrb_sparse_ppm(root: Path) -> Path:  # the official layout, one 5 GB sparse image
    return hf.gtsrb_official(root, ppm=b"P6\n40000 40000\n255\n", n_sparse=5 * 10**9)


BOMBS = [
    ("mnist-gzip-bomb-4GiB", "mnist", _mnist_gzip_bomb, "train-images-idx3-ubyte.gz", 5 << 20),
    ("gtsrb-npz-bomb-4GB", "gtsrb", _gtsrb_npz_bomb, "gtsrb.npz", 5 << 20),
    ("gtsrb-sparse-ppm-5GB", "gtsrb", _gtsrb_sparse_ppm, "00000_00000.ppm", 1 << 20),
]


def _spawn(argv: list[str], cwd: Path, err_path: Path) -> tuple[subprocess.Popen, io.TextIOBase]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    err = open(err_path, "w+")  # closed by _reap
    child = subprocess.Popen([sys.executable, "-m", "lkstn", *argv], env=env, cwd=cwd,
                             stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    return child, err


def _reap(child: subprocess.Popen, err: io.TextIOBase) -> tuple[int, str, int]:
    """Exit code, stderr and peak resident bytes of a finished child."""
    _, status, usage = os.wait4(child.pid, 0)
    err.seek(0)
    stderr = err.read()
    err.close()
    return os.waitstatus_to_exitcode(status), stderr, usage.ru_maxrss * 1024  # KiB on Linux


def test_bombs_refused_by_the_command_in_bounded_memory(tmp_path):
    """The three bombs side by side, each in its own ``lkstn`` process, beside a baseline process
    per experiment that refuses an empty data folder (same imports, nothing read)."""
    baselines = {}
    for experiment in sorted({b[1] for b in BOMBS}):
        empty = tmp_path / f"empty-{experiment}"
        empty.mkdir()
        argv = ["reproduce", experiment, "--data", str(empty), "--out", str(tmp_path / "out0")]
        baselines[experiment] = _spawn(argv, tmp_path, tmp_path / f"empty-{experiment}.err")
    children = []
    for name, experiment, build, _, max_file in BOMBS:
        root = build(tmp_path / name)
        on_disk = sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())
        assert on_disk < max_file  # a few MB on disk (the sparse PPM: a hole)
        argv = ["reproduce", experiment, "--data", str(root), "--out", str(tmp_path / "out")]
        children.append((name, *_spawn(argv, tmp_path, tmp_path / f"{name}.err")))
    base_rss = {}
    for experiment, (child, err) in baselines.items():
        code, stderr, base_rss[experiment] = _reap(child, err)
        assert code == 2, stderr  # "not found", one line
        print(f"empty {experiment} folder: exit 2, peak RSS {base_rss[experiment] / 2**20:.0f} MiB")
    for (name, experiment, _, names, _), (_, child, err) in zip(BOMBS, children, strict=True):
        code, stderr, rss = _reap(child, err)
        print(f"{name}: exit {code}, peak RSS {rss / 2**20:.0f} MiB, {stderr.strip()}")
        assert code == 2, (name, stderr)
        check_one_line(Outcome(2, stderr, 0), names)
        assert rss - base_rss[experiment] < MEMORY_ADDED_BY_COMMAND, (name, rss, base_rss)
