"""GTSRB loader: official layout (ROI crop, resize), prepared npz, PPM parser, corrupt input."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from skimage.transform import resize

from lkstn.data import (
    CorruptDataError,
    DatasetNotFoundError,
    gtsrb_is_official,
    load_gtsrb,
    read_ppm,
    resize_images,
)

REAL_NPZ = Path("/work/shared/data/gtsrb/gtsrb32.npz")
COLUMNS = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]


def ppm_bytes(image: np.ndarray, maxval: int = 255, header: bytes | None = None) -> bytes:
    h, w, _ = image.shape
    return (header or f"P6\n{w} {h}\n{maxval}\n".encode()) + image.astype(np.uint8).tobytes()


def write_csv(path: Path, rows: list, header: list = COLUMNS) -> None:
    lines = [";".join(map(str, r)) for r in [header, *rows]]
    path.write_text("\n".join(lines) + "\n")


def add_sign(image_dir: Path, name: str, label: int, w: int, h: int) -> list:
    """A PPM whose ROI (5-pixel border) has one colour per class and a contrasting border."""
    image = np.full((h, w, 3), 255, dtype=np.uint8)
    image[5 : h - 5, 5 : w - 5] = (10 * label, 3 * label, 200)  # ROI, x2 = w - 5 exclusive
    image_dir.mkdir(parents=True, exist_ok=True)
    (image_dir / name).write_bytes(ppm_bytes(image))
    return [name, w, h, 5, 5, w - 5, h - 5, label]


def roi_colour(label: int) -> list:
    return [10 * label, 3 * label, 200]


@pytest.fixture
def official(tmp_path: Path) -> Path:
    """root/gtsrb with classes 0 and 2 for training and three test images (labels 2, 0, 7)."""
    base = tmp_path / "gtsrb"
    for label, sizes in ((0, [(30, 31), (52, 40)]), (2, [(41, 29)])):
        class_dir = base / "Final_Training" / "Images" / f"{label:05d}"
        rows = [
            add_sign(class_dir, f"{label:05d}_{i:05d}.ppm", label, *s) for i, s in enumerate(sizes)
        ]
        write_csv(class_dir / f"GT-{label:05d}.csv", rows)
    test_dir = base / "Final_Test" / "Images"
    rows = [
        add_sign(test_dir, f"{i:05d}.ppm", label, 33 + i, 35) for i, label in enumerate([2, 0, 7])
    ]
    write_csv(base / "GT-final_test.csv", rows)
    return tmp_path


def test_official_train_crops_the_roi_and_resizes(official):
    images, labels = load_gtsrb(official, split="train")
    assert images.shape == (3, 36, 36, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 2]
    for image, label in zip(images, labels, strict=True):
        # A crop one pixel too wide would blend the white border into the edge pixels.
        assert (image == roi_colour(label)).all()


def test_official_whole_images_keep_the_margin(official):
    images, labels = load_gtsrb(official, split="train", size=50, roi=False)
    assert images.shape == (3, 50, 50, 3) and labels.tolist() == [0, 0, 2]
    assert gtsrb_is_official(official) and gtsrb_is_official(official, "test")
    for image, label in zip(images, labels, strict=True):
        assert (image[0, 0] == 255).all()  # the white margin around the ROI is kept
        assert (image[25, 25] == roi_colour(label)).all()  # the sign fills the centre


@pytest.mark.parametrize("where", ["gtsrb", "gtsrb/Final_Test/Images", "."])
def test_official_test_labels_come_from_gt_final_test(official, where):
    csv_path = official / "gtsrb" / "GT-final_test.csv"
    csv_path.rename(official / where / "GT-final_test.csv")
    images, labels = load_gtsrb(official, split="test", size=20)
    assert images.shape == (3, 20, 20, 3) and labels.tolist() == [2, 0, 7]
    assert all((im == roi_colour(lab)).all() for im, lab in zip(images, labels, strict=True))


def test_test_images_without_gt_csv_say_it_ships_separately(official):
    (official / "gtsrb" / "GT-final_test.csv").unlink()
    with pytest.raises(DatasetNotFoundError, match="GTSRB_Final_Test_GT.zip"):
        load_gtsrb(official, split="test")


def test_no_data_says_where_gtsrb_comes_from(tmp_path):
    with pytest.raises(DatasetNotFoundError) as exc_info:
        load_gtsrb(tmp_path, split="test")
    message = str(exc_info.value)
    assert "benchmark.ini.rub.de/gtsrb_dataset.html" in message and "prepared" in message
    assert "\n" not in message and isinstance(exc_info.value, FileNotFoundError)


def save_npz(path: Path, n_train: int = 5, n_test: int = 3, **override) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "X_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        "y_train": rng.integers(0, 43, n_train).astype(np.uint8),
        "X_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        "y_test": rng.integers(0, 43, n_test).astype(np.uint8),
    }
    arrays = {k: v for k, v in {**arrays, **override}.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def test_npz_is_returned_as_stored_unless_a_size_is_given(tmp_path, monkeypatch):
    arrays = save_npz(tmp_path / "gtsrb" / "gtsrb32.npz")
    images, labels = load_gtsrb(tmp_path, split="test")
    np.testing.assert_array_equal(images, arrays["X_test"])
    assert labels.dtype == np.int64 and labels.tolist() == arrays["y_test"].tolist()
    monkeypatch.setenv("LKSTN_DATA", str(tmp_path))
    resized, _ = load_gtsrb(split="train", size=36)
    assert resized.shape == (5, 36, 36, 3)
    from_file, _ = load_gtsrb(tmp_path / "gtsrb" / "gtsrb32.npz", split="train")
    np.testing.assert_array_equal(from_file, arrays["X_train"])


def test_auto_prefers_the_official_layout_and_source_selects(official):
    save_npz(official / "gtsrb" / "gtsrb32.npz")
    assert load_gtsrb(official, split="train")[0].shape == (3, 36, 36, 3)
    assert load_gtsrb(official, split="train", source="npz")[0].shape == (5, 32, 32, 3)
    (official / "gtsrb" / "gtsrb32.npz").unlink()
    with pytest.raises(DatasetNotFoundError, match="gtsrb\\*.npz"):
        load_gtsrb(official, source="npz")


def test_bad_arguments_name_the_argument(tmp_path):
    save_npz(tmp_path / "gtsrb32.npz")
    for kwargs, name in [
        ({"split": "val"}, "split"),
        ({"size": 0}, "size"),
        ({"size": 2.5}, "size"),
        ({"size": True}, "size"),
        ({"source": "web"}, "source"),
    ]:
        with pytest.raises(ValueError, match=name):
            load_gtsrb(tmp_path, **kwargs)
    save_npz(tmp_path / "gtsrb48.npz")
    with pytest.raises(ValueError, match="several"):
        load_gtsrb(tmp_path)


@pytest.mark.parametrize("shape", [(32, 32), (29, 41), (80, 50), (7, 90)])
@pytest.mark.parametrize("size", [36, 20])
def test_resize_matches_skimage_per_image(shape, size):
    """Oracle: skimage.transform.resize, one call per image, rounded (ties may differ by 1)."""
    images = np.random.default_rng(1).integers(0, 256, (4, *shape, 3), dtype=np.uint8)
    got = resize_images(images, size)
    want = [
        resize(im, (size, size), order=1, anti_aliasing=True, preserve_range=True) for im in images
    ]
    diff = np.abs(got.astype(float) - np.clip(np.rint(want), 0, 255))
    assert got.shape == (4, size, size, 3) and diff.max() <= 1 and diff.mean() < 0.01
    assert resize_images(images[0], size).shape == (size, size, 3)


def test_resize_rejects_bad_input():
    with pytest.raises(ValueError, match="images"):
        resize_images(np.zeros((4, 4)), 3)
    with pytest.raises(ValueError, match="size"):
        resize_images(np.zeros((4, 4, 3)), -1)


def test_ppm_comments_tabs_and_low_maxval(tmp_path):
    pixels = np.array([[[0, 15, 5], [15, 0, 1]]], dtype=np.uint8)  # (1, 2, 3)
    path = tmp_path / "a.ppm"
    path.write_bytes(ppm_bytes(pixels, header=b"P6 # made by hand\n2\t1 # w h\n15\n"))
    np.testing.assert_array_equal(read_ppm(path), np.rint(pixels * 17.0))


PIXELS = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
BAD_PPMS = {
    "ascii P3": b"P3\n2 2\n255\n" + PIXELS.tobytes(),
    "no maxval": b"P6\n2 2\n" + PIXELS.tobytes(),
    "16-bit maxval": b"P6\n2 2\n65535\n" + PIXELS.tobytes() * 2,
    "maxval 0": b"P6\n2 2\n0\n" + PIXELS.tobytes(),
    "width 0": b"P6\n0 2\n255\n",
    "truncated pixels": b"P6\n2 2\n255\n" + PIXELS.tobytes()[:-1],
    "trailing bytes": b"P6\n2 2\n255\n" + PIXELS.tobytes() + b"\n",
    "no separator": b"P6\n2 2\n255" + PIXELS.tobytes(),
    "sample above maxval": b"P6\n2 2\n10\n" + PIXELS.tobytes(),
    "10-digit width": b"P6\n1000000000 1\n255\n" + PIXELS.tobytes(),
    "forged 2**31 height": b"P6\n2 2147483648\n255\n" + PIXELS.tobytes(),
    "empty": b"",
}


@pytest.mark.parametrize("case", sorted(BAD_PPMS))
def test_bad_ppm_is_one_line_corrupt_error(tmp_path, case):
    path = tmp_path / "bad.ppm"
    path.write_bytes(BAD_PPMS[case])
    with pytest.raises(CorruptDataError) as exc_info:
        read_ppm(path)
    assert "\n" not in str(exc_info.value) and "bad.ppm" in str(exc_info.value)


def _first_class(root: Path) -> Path:
    return root / "gtsrb" / "Final_Training" / "Images" / "00000"


def _edit_csv(root: Path, row: list | None = None, header: list = COLUMNS) -> None:
    rows = [["00000_00000.ppm", 30, 31, 5, 5, 25, 26, 0]] + ([row] if row else [])
    write_csv(_first_class(root) / "GT-00000.csv", rows, header)


CSV_DAMAGE = {
    "missing column": lambda r: _edit_csv(r, header=COLUMNS[:-1]),
    "non-integer": lambda r: _edit_csv(r, ["00000_00001.ppm", "52.0", 40, 5, 5, 47, 35, 0]),
    "roi outside": lambda r: _edit_csv(r, ["00000_00001.ppm", 52, 40, 5, 5, 53, 35, 0]),
    "empty roi": lambda r: _edit_csv(r, ["00000_00001.ppm", 52, 40, 5, 5, 5, 35, 0]),
    "class 43": lambda r: _edit_csv(r, ["00000_00001.ppm", 52, 40, 5, 5, 47, 35, 43]),
    "class of other dir": lambda r: _edit_csv(r, ["00000_00001.ppm", 52, 40, 5, 5, 47, 35, 2]),
    "path traversal": lambda r: _edit_csv(r, ["../00002/00002_00000.ppm", 41, 29, 5, 5, 36, 24, 0]),
    "short row": lambda r: _edit_csv(r, ["00000_00001.ppm", 52, 40]),
    "missing image": lambda r: _edit_csv(r, ["00000_00009.ppm", 52, 40, 5, 5, 47, 35, 0]),
    "size mismatch": lambda r: _edit_csv(r, ["00000_00001.ppm", 50, 40, 5, 5, 45, 35, 0]),
    "no rows": lambda r: write_csv(_first_class(r) / "GT-00000.csv", []),
    "not text": lambda r: (_first_class(r) / "GT-00000.csv").write_bytes(b"\xff\xfe\x00;\x81"),
    "missing csv": lambda r: (_first_class(r) / "GT-00000.csv").unlink(),
    "bad ppm": lambda r: (_first_class(r) / "00000_00001.ppm").write_bytes(b"P6\n52 40\n255\n"),
}


@pytest.mark.parametrize("case", sorted(CSV_DAMAGE))
def test_damaged_official_layout_is_one_line_corrupt_error(official, case):
    CSV_DAMAGE[case](official)
    with pytest.raises(CorruptDataError) as exc_info:
        load_gtsrb(official, split="train")
    assert "\n" not in str(exc_info.value) and "0000" in str(exc_info.value)


def _npy(shape: tuple, descr: str = "|u1", payload: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


NPZ_DAMAGE = {
    "missing y_train": {"y_train": None},
    "float images": {"X_train": np.zeros((5, 32, 32, 3), np.float32)},
    "grey images": {"X_train": np.zeros((5, 32, 32), np.uint8)},
    "label count": {"y_train": np.zeros(4, np.uint8)},
    "label 43": {"y_train": np.full(5, 43, np.uint8)},
    "object labels": {"y_train": np.array([0, 1, 2, 3, 4], dtype=object)},
}


@pytest.mark.parametrize("case", sorted(NPZ_DAMAGE))
def test_inconsistent_npz_is_corrupt(tmp_path, case):
    save_npz(tmp_path / "gtsrb.npz", **NPZ_DAMAGE[case])
    with pytest.raises(CorruptDataError) as exc_info:
        load_gtsrb(tmp_path, split="train")
    assert "\n" not in str(exc_info.value) and "gtsrb.npz" in str(exc_info.value)


def test_truncated_and_non_zip_npz_are_corrupt(tmp_path):
    save_npz(tmp_path / "gtsrb.npz")
    data = (tmp_path / "gtsrb.npz").read_bytes()
    for payload in (data[: len(data) // 2], data[:-30], b"not a zip file"):
        (tmp_path / "gtsrb.npz").write_bytes(payload)
        with pytest.raises(CorruptDataError, match="gtsrb.npz"):
            load_gtsrb(tmp_path, split="train")


def test_forged_npy_shape_is_rejected_in_small_memory(tmp_path):
    """numpy.load would allocate the 2**40-image array the header declares; we must not."""
    with zipfile.ZipFile(tmp_path / "gtsrb.npz", "w") as zf:
        zf.writestr("X_train.npy", _npy((2**40, 32, 32, 3), payload=bytes(3072)))
        zf.writestr("y_train.npy", _npy((1,), payload=b"\0"))
    tracemalloc.start()
    try:  # refused on its declared size (above the cap) before any of it is inflated
        with pytest.raises(CorruptDataError, match="above the cap"):
            load_gtsrb(tmp_path, split="train")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


@pytest.mark.slow
def test_real_gtsrb_npz_has_the_official_counts():
    if not REAL_NPZ.is_file():
        pytest.skip(f"no {REAL_NPZ}")
    for split, n in (("train", 39209), ("test", 12630)):
        images, labels = load_gtsrb(REAL_NPZ, split=split)
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
        assert labels.shape == (n,) and np.unique(labels).tolist() == list(range(43))
