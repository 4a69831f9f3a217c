"""Tests for lkstn.learned.checkpoint: round trip, atomic writes, refusal of unsafe pickles."""

from __future__ import annotations

import copy
import os
import pickle
import struct
import zipfile

import pytest
import torch
from torch import nn

from lkstn.learned import checkpoint as ckpt_module
from lkstn.learned.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lkstn.learned.predictors import mnist_classifier, mnist_predictor
from lkstn.learned.stn import ICSTN, AlignThenClassify

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model_and_optimizer(seed: int):
    gen = torch.Generator().manual_seed(seed)
    aligner = ICSTN(mnist_predictor("b", generator=gen), n_warps=2, template_shape=(28, 28))
    model = AlignThenClassify(aligner, mnist_classifier(generator=gen))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = model(torch.rand(4, 1, 28, 28, generator=gen), torch.zeros(4, 8)).square().mean()
    loss.backward()
    optimizer.step()  # the optimizer now has state (step counts, moments)
    return model, optimizer


def test_round_trip_restores_model_optimizer_step_config_and_rng(tmp_path) -> None:
    model, optimizer = model_and_optimizer(0)
    rng = torch.get_rng_state()
    path = save_checkpoint(tmp_path / "c.pt", model, optimizer, step=7, config={"lr": 0.5})
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind
    fresh, fresh_opt = model_and_optimizer(1)
    ckpt = load_checkpoint(path, fresh, fresh_opt)
    assert ckpt.step == 7 and ckpt.config == {"lr": 0.5}
    assert ckpt.model_config["aligner"]["n_warps"] == 2
    assert torch.equal(ckpt.rng_state, rng)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    sa, sb = optimizer.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[k][name], sb[k][name])


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch) -> None:
    model, optimizer = model_and_optimizer(0)
    path = save_checkpoint(tmp_path / "c.pt", model, optimizer, step=1)
    before = path.read_bytes()

    def torn_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, optimizer, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.pt"]
    assert load_checkpoint(path).step == 1


class _Exploit:
    """Unpickling this calls ``open(marker, "w")``: arbitrary code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_is_refused_and_never_executed(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    model, _ = model_and_optimizer(0)
    torch.save({"format": ckpt_module.FORMAT, "step": 1, "model": model.state_dict(),
                "payload": _Exploit(str(marker))}, path)  # fmt: skip
    with pytest.raises(pickle.UnpicklingError):  # what torch itself says ...
        torch.load(path, weights_only=True)
    with pytest.raises(CheckpointError, match="refused"):  # ... wrapped in our error
        load_checkpoint(path, model)
    assert not marker.exists()
    torch.load(path, weights_only=False)["payload"].close()  # the payload is real: unsafe
    assert marker.exists()  # loading runs it


def test_missing_corrupt_or_mismatched_files_raise_checkpoint_error(tmp_path) -> None:
    model, optimizer = model_and_optimizer(0)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt", model)
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt", model)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an lkstn checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    path = save_checkpoint(tmp_path / "c.pt", model, optimizer, step=3)
    other = ICSTN(mnist_predictor("a"), n_warps=2, template_shape=(28, 28))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_checkpoint(path, other)
    no_opt = save_checkpoint(tmp_path / "no_opt.pt", model, None, step=3)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(no_opt, model, optimizer)


def test_flipped_bits_are_refused_and_a_failed_load_changes_nothing(tmp_path) -> None:
    model, optimizer = model_and_optimizer(0)
    path = save_checkpoint(tmp_path / "c.pt", model, optimizer, step=3)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:  # first tensor's bytes: after its local header
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    name_len, extra_len = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    data[info.header_offset + 30 + name_len + extra_len + 5] ^= 0x08  # one bit of one weight
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    target, _ = model_and_optimizer(1)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(CheckpointError, match="CRC"):
        load_checkpoint(tmp_path / "flipped.pt", target)
    # the model loads, the optimizer does not fit (another parameter layout): nothing changes
    wrong_opt = torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.1)
    with pytest.raises(CheckpointError, match="optimizer") as err:
        load_checkpoint(path, target, wrong_opt)
    assert "\n" not in str(err.value)
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name])


def test_a_checkpoint_written_on_a_gpu_reads_on_a_cpu_only_machine(tmp_path, monkeypatch) -> None:
    # tag every storage as CUDA's, as torch.save does on a GPU; torch.load would then refuse
    # it on a machine without CUDA unless told where to put it
    model, optimizer = model_and_optimizer(0)
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        path = save_checkpoint(tmp_path / "gpu.pt", model, optimizer, step=3, config={})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)  # what a plain load does with it
    assert load_checkpoint(path).step == 3  # no model: the tensors go to the CPU
    fresh, _ = model_and_optimizer(1)
    load_checkpoint(path, fresh)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
