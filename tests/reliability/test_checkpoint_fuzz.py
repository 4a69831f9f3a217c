"""Fuzzing the checkpoint loader: damaged, random and malicious files, made from a real checkpoint.

The property (issue "Reliability"): whatever bytes sit at the path, :func:`load_checkpoint` ends
in a :class:`CheckpointError` whose message is one line, or returns exactly what was saved. No raw
``pickle``/``zip``/``RuntimeError``/``KeyError``/``UnicodeDecodeError`` escapes, a damaged file is
never loaded as different weights, and no case hangs (each load runs under a 20 s alarm). Every
file starts as the output of lkstn's own :func:`save_checkpoint` for a tiny IC-STN with SGD
momentum state. Each test name carries its number of hypothesis examples (``max_examples``).

``tests/learned/test_checkpoint.py::test_a_malicious_pickle_is_refused_and_never_executed``
proves the refusal of one ``__reduce__`` payload; here :func:`test_malicious_payloads_30_cases`
repeats it over 6 callables x 5 hiding places.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from lkstn.learned.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from lkstn.learned.predictors import LinearPredictor
from lkstn.learned.stn import ICSTN

FUZZ = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow],
    "derandomize": True,  # the same cases on every run
    "report_multiple_bugs": False,
}
HANG_S = 20  # a load that takes longer than this is a hang


def tiny_model(seed: int) -> tuple[ICSTN, torch.optim.Optimizer]:
    """A 6x6 affine IC-STN (one linear layer, 222 weights) and SGD with momentum state."""
    gen = torch.Generator().manual_seed(seed)
    model = ICSTN(LinearPredictor((6, 6), 6), warp="affine", n_warps=2, template_shape=(6, 6))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 1, 8, 8, generator=gen), torch.zeros(2, 6)).p.sum().backward()
    optimizer.step()  # momentum buffers: the optimizer state is not empty
    return model, optimizer


MODEL, OPTIMIZER = tiny_model(0)
RNG_STATE = torch.get_rng_state()
CONFIG = {"lr": 0.1, "note": "fuzz"}


def _reference() -> bytes:
    """The bytes that lkstn's own save_checkpoint writes for the tiny model."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.set_rng_state(RNG_STATE)
        return save_checkpoint(
            Path(tmp) / "c.pt", MODEL, OPTIMIZER, step=3, config=CONFIG
        ).read_bytes()


VALID = _reference()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ckpt-fuzz")


@contextmanager
def alarm(seconds: int):
    """Raise ``TimeoutError`` in the main thread after ``seconds`` (a hang is a failure)."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"load_checkpoint hung for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _event(name: str) -> None:
    if currently_in_test_context():  # shown by --hypothesis-show-statistics
        event(name)


FRESH = tiny_model(1)[0]  # loaded into, case after case (built once: 50 ms)


def outcome(path: Path):
    """Load ``path`` into a blanked model and a new optimizer: the Checkpoint, or the error."""
    with torch.no_grad():
        for p in FRESH.parameters():
            p.fill_(float("nan"))  # whatever an accepted file does not overwrite stays NaN
    optimizer = torch.optim.SGD(FRESH.parameters(), lr=0.5)
    with alarm(HANG_S):
        try:
            ckpt = load_checkpoint(path, FRESH, optimizer)
        except CheckpointError as exc:
            message = str(exc)
            assert "\n" not in message and "\r" not in message, f"multi-line message: {message!r}"
            _event("refused: " + " ".join(message.replace(str(path), "<path>").split()[:4]))
            return exc
    _event("accepted")
    return ckpt, FRESH, optimizer


def assert_unchanged(ckpt, model, optimizer) -> None:
    """An accepted file must hold exactly what was saved: no silent corruption."""
    assert ckpt.step == 3 and ckpt.config == CONFIG and ckpt.model_config == MODEL.config
    assert torch.equal(ckpt.rng_state, RNG_STATE), "rng_state silently changed"
    for name, value in MODEL.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), f"{name} silently changed"
    saved, loaded = OPTIMIZER.state_dict(), optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for k, state in saved["state"].items():
        assert torch.equal(loaded["state"][k]["momentum_buffer"], state["momentum_buffer"])


def check_damaged(workdir: Path, content: bytes, name: str) -> None:
    path = workdir / name
    path.write_bytes(content)
    result = outcome(path)
    if not isinstance(result, CheckpointError):
        assert_unchanged(*result)


def test_the_reference_checkpoint_round_trips(workdir) -> None:
    """The oracle of every test below: the undamaged file loads to what was saved."""
    (workdir / "valid.pt").write_bytes(VALID)
    result = outcome(workdir / "valid.pt")
    assert not isinstance(result, CheckpointError), result
    assert_unchanged(*result)
    assert len(VALID) > 5000  # model, momentum buffers and the 5056-byte RNG state


# -- damaged files: the bytes of a valid checkpoint, cut or changed --------------------------------


def flipped(flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(VALID)
    for index, bit in flips:
        data[index] ^= 1 << bit
    return bytes(data)


def overwritten(start: int, junk: bytes) -> bytes:
    data = bytearray(VALID)
    data[start : start + len(junk)] = junk
    return bytes(data[: len(VALID)])


CUT = st.integers(0, len(VALID) - 1)
FLIPS = st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 7)), min_size=1,
                 max_size=8)  # fmt: skip
JUNK = st.binary(min_size=1, max_size=64)
PREFIX = st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", VALID[:64]])


@settings(max_examples=300, **FUZZ)
@given(cut=CUT)
def test_truncated_checkpoint_300_cases(workdir, cut) -> None:
    check_damaged(workdir, VALID[:cut], "truncated.pt")


@pytest.mark.slow
def test_truncated_checkpoint_at_every_byte(workdir) -> None:
    """Every prefix of the file (about 10,000 cases; the count is printed)."""
    for cut in range(len(VALID)):
        check_damaged(workdir, VALID[:cut], "truncated.pt")
    print(f"{len(VALID)} truncation cases")


@settings(max_examples=300, **FUZZ)
@given(flips=FLIPS)
def test_bit_flipped_checkpoint_300_cases(workdir, flips) -> None:
    """1 to 8 bits flipped anywhere: in the zip headers, the pickle, the tensors, the RNG state."""
    check_damaged(workdir, flipped(flips), "flipped.pt")


@pytest.mark.slow
@settings(max_examples=3000, **FUZZ)
@given(flips=FLIPS)
def test_bit_flipped_checkpoint_3000_cases(workdir, flips) -> None:
    check_damaged(workdir, flipped(flips), "flipped.pt")


@settings(max_examples=200, **FUZZ)
@given(start=CUT, junk=JUNK)
def test_overwritten_span_checkpoint_200_cases(workdir, start, junk) -> None:
    """A span of random bytes written over the file (a torn or misdirected write)."""
    check_damaged(workdir, overwritten(start, junk), "overwritten.pt")


@pytest.mark.slow
@settings(max_examples=2000, **FUZZ)
@given(start=CUT, junk=JUNK)
def test_overwritten_span_checkpoint_2000_cases(workdir, start, junk) -> None:
    check_damaged(workdir, overwritten(start, junk), "overwritten.pt")


@settings(max_examples=200, **FUZZ)
@given(prefix=PREFIX, body=st.binary(max_size=2048))
def test_random_bytes_checkpoint_200_cases(workdir, prefix, body) -> None:
    """Random files, some starting like a zip, a pickle, or a real checkpoint's first 64 bytes."""
    path = workdir / "random.pt"
    path.write_bytes(prefix + body)
    assert isinstance(outcome(path), CheckpointError)


# -- well-formed zips whose pickle is damaged (CRCs recomputed: only the loader's checks help) --


def _members() -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(VALID)) as z:
        return [(info, z.read(info)) for info in z.infolist()]


MEMBERS = _members()
PICKLE = next(data for info, data in MEMBERS if info.filename.endswith("data.pkl"))


def rezip(pickle_bytes: bytes) -> bytes:
    """The reference checkpoint with ``data.pkl`` replaced, every CRC valid."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        for info, data in MEMBERS:
            z.writestr(info.filename, pickle_bytes if info.filename.endswith("data.pkl") else data)
    return buffer.getvalue()


def test_rezipped_reference_still_loads(workdir) -> None:
    """The rewriting itself is harmless: the damage below is the only change."""
    path = workdir / "rezipped.pt"
    path.write_bytes(rezip(PICKLE))
    result = outcome(path)
    assert not isinstance(result, CheckpointError), result
    assert_unchanged(*result)


KIND = st.sampled_from(["flip", "cut", "insert", "overwrite"])


def check_damaged_pickle(workdir: Path, data, kind: str) -> None:
    """Damage inside ``data.pkl`` with valid CRCs: refused, or loaded with well-typed contents."""
    pkl = bytearray(PICKLE)
    i = data.draw(st.integers(0, len(pkl) - 1), label="index")
    if kind == "flip":
        pkl[i] ^= data.draw(st.integers(1, 255), label="xor")
    elif kind == "cut":
        del pkl[i:]
    elif kind == "insert":
        pkl[i:i] = data.draw(st.binary(min_size=1, max_size=16), label="inserted")
    else:
        junk = data.draw(st.binary(min_size=1, max_size=16), label="junk")
        pkl[i : i + len(junk)] = junk
    path = workdir / "pickle.pt"
    path.write_bytes(rezip(bytes(pkl)))
    result = outcome(path)
    if isinstance(result, CheckpointError):
        return
    ckpt = result[0]  # a changed pickle can be a different, valid checkpoint: check types only
    assert type(ckpt.step) is int and ckpt.step >= 0, ckpt.step
    assert isinstance(ckpt.config, dict) and isinstance(ckpt.model_config, dict)
    assert ckpt.rng_state is None or (
        isinstance(ckpt.rng_state, torch.Tensor) and ckpt.rng_state.dtype == torch.uint8
    ), ckpt.rng_state


@settings(max_examples=300, **FUZZ)
@given(data=st.data(), kind=KIND)
def test_damaged_pickle_in_a_valid_zip_300_cases(workdir, data, kind) -> None:
    check_damaged_pickle(workdir, data, kind)


@pytest.mark.slow
@settings(max_examples=3000, **FUZZ)
@given(data=st.data(), kind=KIND)
def test_damaged_pickle_in_a_valid_zip_3000_cases(workdir, data, kind) -> None:
    check_damaged_pickle(workdir, data, kind)


def test_empty_directory_and_special_paths_are_checkpoint_errors(workdir) -> None:
    """A directory, an empty file and ``/dev/null``: refused in one line."""
    for path in (workdir, workdir / "empty.pt", Path("/dev/null")):
        if path.name == "empty.pt":
            path.write_bytes(b"")
        assert isinstance(outcome(path), CheckpointError), path


# -- the fuzzers' findings, pinned -----------------------------------------------------------------


def _member_offset(suffix: str) -> int:
    """Byte offset in VALID of the first data byte of the zip member ending in ``suffix``."""
    with zipfile.ZipFile(io.BytesIO(VALID)) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    name_len, extra_len = struct.unpack(
        "<HH", VALID[info.header_offset + 26 : info.header_offset + 30]
    )
    return info.header_offset + 30 + name_len + extra_len


@pytest.mark.parametrize("member", ["data/0", "data/2"], ids=["weights", "rng_state"])
def test_a_flipped_bit_in_stored_tensors_is_refused_not_loaded(workdir, member) -> None:
    """The zip stores a CRC-32 per member; a bit flipped in tensor bytes must not load silently
    (the first version of the loader loaded other weights, or another RNG state)."""
    offset = _member_offset(member) + 5  # inside the first float / RNG word
    path = workdir / f"flip-{member.replace('/', '-')}.pt"
    path.write_bytes(flipped([(offset, 3)]))
    assert isinstance(outcome(path), CheckpointError), "corrupted tensor bytes were loaded"


def _saved(**changes) -> bytes:
    state = {"format": FORMAT, "step": 3, "model": MODEL.state_dict(),
             "optimizer": OPTIMIZER.state_dict(), "rng_state": RNG_STATE,
             "config": "{}", "model_config": "{}"}  # fmt: skip
    state.update(changes)
    for key in [k for k, v in state.items() if v is _DROP]:
        del state[key]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


_DROP = object()
HOSTILE = {
    "one byte '.'": lambda: b".",
    "one byte 0x85": lambda: b"\x85",
    "first bit flipped": lambda: flipped([(0, 0)]),
    "no step": lambda: _saved(step=_DROP),
    "no optimizer": lambda: _saved(optimizer=_DROP),
    "step not a number": lambda: _saved(step="three"),
    "config not JSON": lambda: _saved(config="{not json"),
    "model not a dict": lambda: _saved(model=3),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_files_found_by_the_fuzzers_8_cases(workdir, name) -> None:
    """Each of these let a raw IndexError/KeyError/ValueError/TypeError/JSONDecodeError escape
    the first version of the loader (found by the fuzzers above)."""
    path = workdir / "hostile.pt"
    path.write_bytes(HOSTILE[name]())
    assert isinstance(outcome(path), CheckpointError)


# -- malicious pickles: code that would run on unpickling ------------------------------------------


class _Payload:
    """Unpickling this calls ``call(*args)``: arbitrary code execution."""

    def __init__(self, call, args) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return (self.call, self.args)


def _payloads(marker: Path) -> dict[str, _Payload]:
    m = str(marker)
    return {
        "open": _Payload(open, (m, "w")),
        "os.system": _Payload(os.system, (f"touch {m}",)),
        "exec": _Payload(exec, (f"open({m!r}, 'w').close()",)),
        "eval": _Payload(eval, (f"open({m!r}, 'w')",)),
        "subprocess": _Payload(subprocess.call, (["touch", m],)),
        "Path.touch": _Payload(Path.touch, (marker,)),
    }


PLACES = ["top level", "model state", "optimizer state", "step", "tensor list"]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("name", list(_payloads(Path("x"))))
def test_malicious_payloads_30_cases(tmp_path, name, place) -> None:
    """6 callables x 5 hiding places: refused with CheckpointError, nothing executed (and the
    payload is real: ``weights_only=False`` runs it)."""
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[name]
    state = {
        "format": FORMAT,
        "step": 1,
        "model": dict(MODEL.state_dict()),
        "optimizer": OPTIMIZER.state_dict(),
        "rng_state": RNG_STATE,
        "config": "{}",
        "model_config": "{}",
    }
    if place == "top level":
        state["payload"] = payload
    elif place == "model state":
        state["model"]["predictor.layers.0.weight"] = payload
    elif place == "optimizer state":
        state["optimizer"] = {"state": {0: {"momentum_buffer": payload}}, "param_groups": []}
    elif place == "step":
        state["step"] = payload
    else:
        state["model"]["extra"] = [torch.zeros(2), payload]
    path = tmp_path / "evil.pt"
    torch.save(state, path)
    result = outcome(path)
    assert isinstance(result, CheckpointError) and "refused" in str(result), result
    assert not marker.exists()
    loaded = torch.load(path, weights_only=False)  # the control: unsafe loading runs the payload
    assert marker.exists()
    del loaded
