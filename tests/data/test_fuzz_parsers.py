"""Fuzzing the IDX, PPM, CSV and npz parsers with hypothesis.

The property: a malformed file ends in a one-line :class:`CorruptDataError` naming the file, and
no other exception escapes. Where random bytes could by chance form a valid file, a reference
decoder written here decides, and a file it accepts must load to the same array. Each test name
carries its number of examples (``max_examples``).
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from lkstn.data import CorruptDataError, load_gtsrb, load_mnist, read_idx, read_ppm

FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8)
LABELS = np.array([1, 7, 9], dtype=np.uint8)
IMAGE_IDX = struct.pack(">4I", 0x803, 3, 28, 28) + IMAGES.tobytes()
LABEL_IDX = struct.pack(">2I", 0x801, 3) + LABELS.tobytes()
PIXELS = RNG.integers(0, 256, (8, 10, 3), dtype=np.uint8)
VALID_PPM = b"P6 # fuzz\n10\t8\n255\n" + PIXELS.tobytes()  # 261 bytes: 261 possible cuts


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def outcome(parse, path: Path):
    """The parser's result, or its CorruptDataError once the message has been checked."""
    try:
        result = parse(path)
    except CorruptDataError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert path.name in message, message
        event("refused: " + " ".join(exc.reason.split()[:3]))  # --hypothesis-show-statistics
        return exc
    event("accepted")
    return result


def reference_idx(data: bytes, ndim: int) -> tuple | None:
    """Dims of a valid unsigned-byte IDX file with ``ndim`` dimensions, else None."""
    if data[:4] != bytes([0, 0, 8, ndim]) or len(data) < 4 + 4 * ndim:
        return None
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return dims if 0 not in dims and len(data) == 4 + 4 * ndim + math.prod(dims) else None


def check_idx_against_reference(workdir: Path, content: bytes, stored: bytes, suffix: str) -> None:
    path = workdir / f"fuzz-idx{suffix}"
    path.write_bytes(stored)
    result = outcome(lambda p: read_idx(p, ndim=3), path)
    dims = reference_idx(content, 3) if content is not None else None
    if dims is None:
        assert isinstance(result, CorruptDataError)
    else:
        assert result.shape == dims and result.tobytes() == content[16:]


def gunzip_or_none(data: bytes) -> bytes | None:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        return None


@settings(max_examples=200, **FUZZ)
@given(mode=st.sampled_from(["raw", "gzip-stream", "gzip-content"]), data=st.data())
def test_idx_truncated_200_cases(workdir, mode, data):
    cut = data.draw(st.integers(0, len(IMAGE_IDX) - 1), label="cut")
    stored = {
        "raw": IMAGE_IDX[:cut],
        "gzip-stream": gzip.compress(IMAGE_IDX)[: cut % len(gzip.compress(IMAGE_IDX))],
        "gzip-content": gzip.compress(IMAGE_IDX[:cut]),
    }[mode]
    path = workdir / ("fuzz-trunc" + ("" if mode == "raw" else ".gz"))
    path.write_bytes(stored)
    assert isinstance(outcome(lambda p: read_idx(p, ndim=3), path), CorruptDataError)


DIM = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 3, 27, 28, 784, 2**31]))


@settings(max_examples=200, **FUZZ)
@given(dims=st.tuples(DIM, DIM, DIM), gz=st.booleans())
def test_idx_forged_header_200_cases(workdir, dims, gz):
    """Any header other than (3, 28, 28) over these 3 images must be refused by load_mnist."""
    assume(dims != (3, 28, 28))
    root = workdir / "forged"
    root.mkdir(exist_ok=True)
    ext = ".gz" if gz else ""
    for stale in root.iterdir():
        stale.unlink()
    forged = struct.pack(">4I", 0x803, *dims) + IMAGES.tobytes()
    (root / f"train-images-idx3-ubyte{ext}").write_bytes(gzip.compress(forged) if gz else forged)
    (root / "train-labels-idx1-ubyte").write_bytes(LABEL_IDX)
    path = root / f"train-images-idx3-ubyte{ext}"
    assert isinstance(outcome(lambda p: load_mnist(p.parent), path), CorruptDataError)


@settings(max_examples=300, **FUZZ)
@given(
    prefix=st.sampled_from([b"", b"\0\0\x08\x03", b"\0\0\x08\x03\0\0\0\x01\0\0\0\x01\0\0\0"]),
    body=st.binary(max_size=64),
    gz=st.booleans(),
)
def test_idx_random_bytes_300_cases(workdir, prefix, body, gz):
    content = prefix + body
    stored = gzip.compress(content) if gz else content
    check_idx_against_reference(workdir, content, stored, ".gz" if gz else "")


@settings(max_examples=300, **FUZZ)
@given(body=st.binary(max_size=80), magic=st.booleans())
def test_gzip_garbage_300_cases(workdir, body, magic):
    stored = (b"\x1f\x8b\x08" if magic else b"") + body
    check_idx_against_reference(workdir, gunzip_or_none(stored), stored, ".gz")


@settings(max_examples=200, **FUZZ)
@given(data=st.data())
def test_idx_gzip_byte_flip_200_cases(workdir, data):
    """One byte changed anywhere in a valid .gz: refused, unless gzip itself still accepts it."""
    stored = bytearray(gzip.compress(IMAGE_IDX, mtime=0))
    index = data.draw(st.integers(0, len(stored) - 1), label="index")
    stored[index] ^= data.draw(st.integers(1, 255), label="xor")
    check_idx_against_reference(workdir, gunzip_or_none(bytes(stored)), bytes(stored), ".gz")


NUMBER = st.one_of(st.integers(0, 12), st.integers(0, 300), st.integers(0, 10**12))
SEPARATOR = st.sampled_from([b" ", b"\n", b"\t", b"\r\n", b" # note\n", b"\n#\n  "])


@settings(max_examples=300, **FUZZ)
@given(
    magic=st.sampled_from([b"P6", b"P6", b"P6", b"P3", b"p6"]),
    numbers=st.tuples(NUMBER, NUMBER, NUMBER),
    seps=st.tuples(SEPARATOR, SEPARATOR, SEPARATOR),
    last=st.sampled_from([b" ", b"\n", b"", b"#"]),
    data=st.data(),
)
def test_ppm_random_header_300_cases(workdir, magic, numbers, seps, last, data):
    """Random headers against a reference reading of the P6 grammar."""
    width, height, maxval = numbers
    n_pixels = 3 * width * height
    exact = n_pixels <= 300 and data.draw(st.booleans(), label="exact payload size")
    payload = data.draw(st.binary(min_size=n_pixels if exact else 0, max_size=max(n_pixels, 80)))
    header = magic + b"".join(s + str(n).encode() for s, n in zip(seps, numbers, strict=True))
    path = workdir / "fuzz-header.ppm"
    path.write_bytes(header + last + payload)
    valid = (
        magic == b"P6"
        and all(len(str(n)) <= 9 for n in numbers)
        and width >= 1
        and height >= 1
        and 1 <= maxval <= 255
        and last in (b" ", b"\n")
        and len(payload) == n_pixels
        and (not payload or max(payload) <= maxval)
    )
    result = outcome(read_ppm, path)
    if not valid:
        assert isinstance(result, CorruptDataError)
    else:
        expected = np.rint(np.frombuffer(payload, np.uint8) * (255 / maxval))
        assert result.shape == (height, width, 3)
        np.testing.assert_array_equal(result.ravel(), expected)


@settings(max_examples=200, **FUZZ)
@given(cut=st.integers(0, len(VALID_PPM) - 1))
def test_ppm_truncated_200_cases(workdir, cut):
    path = workdir / "fuzz-trunc.ppm"
    path.write_bytes(VALID_PPM[:cut])
    assert isinstance(outcome(read_ppm, path), CorruptDataError)


@settings(max_examples=300, **FUZZ)
@given(body=st.binary(max_size=64), prefix=st.sampled_from([b"", b"P6", b"P6 1 1 255 "]))
def test_ppm_random_bytes_300_cases(workdir, body, prefix):
    path = workdir / "fuzz-random.ppm"
    path.write_bytes(prefix + body)
    result = outcome(read_ppm, path)
    if not isinstance(result, CorruptDataError):  # a valid file by chance: sizes must agree
        assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3
        assert (prefix + body).startswith(b"P6") and result.size < len(prefix + body)


FIELD = st.one_of(
    st.text(alphabet="0123456789.-_;ppm x\"'", max_size=8),
    st.integers(-5, 100).map(str),
    st.sampled_from(["00000_00000.ppm", "../x.ppm", "", " 7 ", "1e3", "٣"]),
)
NAME = st.sampled_from(["00000_00000.ppm", "a.PPM", "00000_00001.ppm", "../x.ppm", "x.png"])
INTEGER = st.one_of(st.integers(0, 60).map(str), st.integers(0, 60).map(str), FIELD)
ROW = st.one_of(
    st.lists(FIELD, max_size=10), st.tuples(NAME, *[INTEGER] * 7), st.tuples(NAME, *[INTEGER] * 6)
).map(";".join)
CSV_TEXT = st.lists(ROW, max_size=5).map(
    lambda rows: "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n" + "\n".join(rows)
)


@settings(max_examples=200, **FUZZ)
@given(
    content=st.one_of(
        CSV_TEXT.map(str.encode), st.text(max_size=60).map(str.encode), st.binary(max_size=60)
    )
)
def test_gtsrb_csv_random_rows_200_cases(workdir, content):
    """A class directory without images: whatever its CSV says, loading it must fail cleanly."""
    class_dir = workdir / "gtsrb-fuzz" / "Final_Training" / "Images" / "00000"
    class_dir.mkdir(parents=True, exist_ok=True)
    path = class_dir / "GT-00000.csv"
    path.write_bytes(content)
    result = outcome(lambda p: load_gtsrb(workdir / "gtsrb-fuzz", split="train"), path)
    assert isinstance(result, CorruptDataError)


def _valid_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, X_train=np.zeros((2, 4, 4, 3), np.uint8), y_train=np.array([1, 42]))
    return buffer.getvalue()


VALID_NPZ = _valid_npz()


@settings(max_examples=200, **FUZZ)
@given(data=st.data(), truncate=st.booleans())
def test_npz_damaged_200_cases(workdir, data, truncate):
    """Truncated or byte-flipped npz: refused, or (a flip in a timestamp) loads unchanged."""
    stored = bytearray(VALID_NPZ)
    index = data.draw(st.integers(0, len(stored) - 1), label="index")
    if truncate:
        del stored[index:]
    else:
        stored[index] ^= data.draw(st.integers(1, 255), label="xor")
    path = workdir / "gtsrb-fuzz.npz"
    path.write_bytes(bytes(stored))
    result = outcome(lambda p: load_gtsrb(p, split="train"), path)
    if not isinstance(result, CorruptDataError):
        assert not truncate
        images, labels = result
        assert images.shape == (2, 4, 4, 3) and not images.any() and labels.tolist() == [1, 42]
