"""Tests for lkstn.learned.train: learning, bit-identical resume, divergence, logs, optimizers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage import transform
from torch import nn

from lkstn.learned.accel.kernels import clear_kernel_choices
from lkstn.learned.checkpoint import load_checkpoint
from lkstn.learned.predictors import LinearPredictor, mnist_classifier, mnist_predictor
from lkstn.learned.stn import ICSTN, AlignThenClassify
from lkstn.learned.streams import AlignmentData, ClassificationData, step_generator
from lkstn.learned.train import TrainConfig, TrainingDiverged, train
from lkstn.result import corner_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def classifier_model(seed: int = 0) -> AlignThenClassify:
    gen = torch.Generator().manual_seed(seed)
    aligner = ICSTN(mnist_predictor("a", generator=gen), n_warps=2, template_shape=(28, 28))
    return AlignThenClassify(aligner, mnist_classifier(generator=gen))


def digits(n: int = 48, n_test: int = 16, seed: int = 0) -> ClassificationData:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n + n_test, 1, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (n + n_test,), generator=gen)
    return ClassificationData(images[:n], labels[:n], images[n:], labels[n:])


def planar() -> AlignmentData:
    camera = transform.resize(skdata.camera(), (64, 64), anti_aliasing=True)
    image = torch.as_tensor(camera, dtype=torch.float32)[None]
    return AlignmentData(image, torch.tensor([-0.5, 0.0, 0.05, 0.0, -0.5, -0.05]))


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# -- learning --------------------------------------------------------------------------------


def test_overfitting_one_batch_drives_the_loss_down() -> None:
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.rand(8, 1, 28, 28, generator=gen), torch.arange(8)
    data = ClassificationData(images, labels, images, labels)  # sigma=0: the same 8 images
    aligner = ICSTN(mnist_predictor("b", generator=gen), n_warps=2, template_shape=(28, 28))
    model = AlignThenClassify(aligner, mnist_classifier(generator=gen))
    # 80 steps: after 40, one image of the eight could still be misclassified, depending on
    # which float32 kernels torch picks for the CPU (AVX2 or not; docs/reliability.md)
    config = TrainConfig(n_steps=80, sigma=0.0, batch_size=8, optimizer="adam",
                         lr_classifier=1e-2, eval_every=80, progress=False)  # fmt: skip
    with torch.no_grad():
        start = nn.functional.cross_entropy(model(images, torch.zeros(8, 8)), labels).item()
    result = train(model, config, data)
    assert start > 1.5  # ~ln(10) at initialisation
    assert result.last["test_loss"] < 0.1 * start and result.last["test_error"] == 0.0


def test_alignment_training_reduces_the_corner_error() -> None:
    data = planar()
    model = ICSTN(LinearPredictor((24, 24), 6), warp="affine", n_warps=3, template_shape=(24, 24))
    config = TrainConfig(n_steps=200, sigma=1.5, batch_size=32, optimizer="adam",
                         lr_predictor=1e-3, eval_every=200, n_test=200, progress=False)  # fmt: skip
    (test,) = data.test_set(model.warp, (24, 24), 1.5, 200, config.seed, 200)
    before = corner_error(model.warp, test.p_init, test.target, (24, 24)).mean().item()
    result = train(model, config, data)
    assert before > 2.0  # sigma = 1.5 px on four corners plus a shared shift
    assert result.last["test_corner_px"] < 0.25 * before  # measured 0.29 px from 2.67 px
    # the same test set, evaluated independently through the Aligner contract
    p = model.align(data.image, test.p_init).p
    assert corner_error(model.warp, p, test.target, (24, 24)).mean().item() == pytest.approx(
        result.last["test_corner_px"], rel=1e-5
    )


def test_parameter_groups_get_their_learning_rates() -> None:
    model, data = classifier_model(), digits(16, 4)
    config = TrainConfig(n_steps=1, sigma=1.0, batch_size=4, lr_predictor=0.0,
                         lr_classifier=1e-2, progress=False)  # fmt: skip
    aligner_before, classifier_before = params(model.aligner), params(model.classifier)
    train(model, config, data)
    assert all(
        torch.equal(a, b) for a, b in zip(aligner_before, params(model.aligner), strict=True)
    )
    assert any(
        not torch.equal(a, b)
        for a, b in zip(classifier_before, params(model.classifier), strict=True)
    )


# -- reproducibility and resume ----------------------------------------------------------------


def test_the_stream_is_a_function_of_seed_and_step() -> None:
    a = torch.rand(5, generator=step_generator(3, 17))
    assert torch.equal(a, torch.rand(5, generator=step_generator(3, 17)))
    assert not torch.equal(a, torch.rand(5, generator=step_generator(3, 18)))
    assert not torch.equal(a, torch.rand(5, generator=step_generator(4, 17)))


CONFIG = dict(sigma=2.0, batch_size=16, optimizer="momentum", lr_predictor=1e-3,
              lr_classifier=1e-2, eval_every=2, checkpoint_every=2, progress=False)  # fmt: skip


def test_resume_in_a_new_process_is_bit_identical(tmp_path) -> None:
    N = 4
    straight = classifier_model()
    train(straight, TrainConfig(n_steps=2 * N, **CONFIG), digits(), run_dir=tmp_path / "a")
    half = classifier_model()
    train(half, TrainConfig(n_steps=N, **CONFIG), digits(), run_dir=tmp_path / "b")
    del half  # "killed": the second half runs in a fresh interpreter from the checkpoint
    # bit-identity needs the same kernels and reduction orders: same machine, same thread count
    script = textwrap.dedent(f"""
        import sys
        import torch
        torch.set_num_threads({torch.get_num_threads()})
        sys.path.insert(0, {str(__file__.rsplit("/", 1)[0])!r})
        from test_train import CONFIG, classifier_model, digits
        from lkstn.learned.train import TrainConfig, train
        train(classifier_model(seed=99), TrainConfig(n_steps={2 * N}, **CONFIG), digits(),
              run_dir={str(tmp_path / "b")!r}, resume=True)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    resumed = classifier_model(seed=123)  # different initial weights: all must come from disk
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint.pt", resumed)
    assert ckpt.step == 2 * N
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    log_a = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(ln).items() if k != "time"} for ln in log_a]
    assert strip == [{k: v for k, v in json.loads(ln).items() if k != "time"} for ln in log_b]
    assert [json.loads(ln)["step"] for ln in log_b] == [2, 4, 6, 8]


def test_resume_with_new_objects_in_process_and_trimmed_log(tmp_path) -> None:
    straight = classifier_model()
    train(straight, TrainConfig(n_steps=6, **CONFIG), digits())
    half = classifier_model()
    config = TrainConfig(n_steps=6, **{**CONFIG, "checkpoint_every": 4})
    train(half, TrainConfig(n_steps=5, **{**CONFIG, "checkpoint_every": 4}), digits(),
          run_dir=tmp_path)  # fmt: skip
    # checkpoints at steps 4 and 5 (the last step); pretend the run died after step 4's
    # evaluation but before step 5's checkpoint: rewind the checkpoint
    ckpt_5 = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt_5.step == 5
    resumed = classifier_model(seed=7)
    result = train(resumed, config, digits(), run_dir=tmp_path, resume=True)
    assert result.step == 6
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 5, 6]


def test_test_errors_are_repeatable() -> None:
    runs = []
    for _ in range(2):
        result = train(classifier_model(), TrainConfig(n_steps=2, **CONFIG), digits())
        runs.append([{k: v for k, v in r.items() if k != "time"} for r in result.records])
    assert runs[0] == runs[1]


# -- failure -----------------------------------------------------------------------------------


class NaNOnCalls(nn.Module):
    """A classifier whose scores are NaN on the training calls numbered in ``bad`` (from 0)."""

    def __init__(self, inner: nn.Module, bad: set[int] | range) -> None:
        super().__init__()
        self.inner, self.bad, self.calls = inner, bad, 0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        scores = self.inner(image)
        if self.training:
            self.calls += 1
            if self.calls - 1 in self.bad:
                scores = scores * float("nan")
        return scores


def test_nan_loss_stops_with_a_clear_error_and_the_last_checkpoint_loads(tmp_path) -> None:
    model = classifier_model()
    model.classifier = NaNOnCalls(model.classifier, bad=range(5, 10**6))  # from call 5 on
    config = TrainConfig(n_steps=20, **CONFIG)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5.*checkpoint.*step 4"):
        train(model, config, digits(), run_dir=tmp_path)
    fresh = classifier_model(seed=5)
    fresh.classifier = NaNOnCalls(fresh.classifier, bad=range(10**6))
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt", fresh)
    assert ckpt.step == 4
    assert all(torch.isfinite(p).all() for p in fresh.parameters())
    # step 5 diverged before its update: the model still holds step 5's starting parameters,
    # which differ from the checkpoint by exactly one (finite) step
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_drops_a_nonfinite_batch_without_changing_the_model(tmp_path) -> None:
    ref = classifier_model()
    train(ref, TrainConfig(n_steps=3, **CONFIG), digits())  # steps 0, 1, 2
    model = classifier_model()
    model.classifier = NaNOnCalls(model.classifier, bad={3})
    result = train(model, TrainConfig(n_steps=4, nonfinite="skip", **CONFIG), digits(),
                   run_dir=tmp_path)  # fmt: skip
    for a, b in zip(params(ref), params(model), strict=True):
        assert torch.equal(a, b)  # step 3 updated nothing (momentum buffers included)
    assert [r["skipped_steps"] for r in result.records] == [[], [3]]
    logged = [json.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in logged] == [[], [3]]
    # the run goes on after a skipped batch and learns from the next ones
    model.classifier.bad = {5}
    more = train(model, TrainConfig(n_steps=8, nonfinite="skip", **CONFIG), digits(),
                 run_dir=tmp_path, resume=True)  # fmt: skip
    assert [r["skipped_steps"] for r in more.records] == [[5], []]  # steps 4-7: calls 4-7
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_still_stops_a_run_whose_every_batch_is_nonfinite() -> None:
    model = classifier_model()
    model.classifier = NaNOnCalls(model.classifier, bad=set(range(100)))
    config = TrainConfig(n_steps=30, nonfinite="skip", **CONFIG)
    with pytest.raises(TrainingDiverged, match=r"at step 9 \(10 batches in a row\)"):
        train(model, config, digits())
    with pytest.raises(ValueError, match="nonfinite"):
        TrainConfig(n_steps=3, sigma=1.0, nonfinite="ignore")


class RecordsTF32(nn.Module):
    """Wraps a classifier; records whether cuDNN and cuBLAS may use TF32 at each call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return self.inner(image)


@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_is_set_for_the_run_and_restored_after(tf32) -> None:
    # saved and restored by hand: cuBLAS's flag is no plain attribute (monkeypatch can't undo it)
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    before = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = not tf32
        model = classifier_model()
        model.classifier = RecordsTF32(model.classifier)
        train(model, TrainConfig(n_steps=4, tf32=tf32, **CONFIG), digits())
        assert len(model.classifier.seen) > 4  # training steps and evaluations
        assert set(model.classifier.seen) == {(tf32, tf32)}
        assert [f.allow_tf32 for f in flags] == [not tf32, not tf32]  # restored
    finally:
        for f, value in zip(flags, before, strict=True):
            f.allow_tf32 = value


# -- configuration, devices --------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [("n_steps", 0), ("batch_size", 2.5), ("sigma", -1.0), ("lr_predictor", float("nan")),
     ("optimizer", "rmsprop"), ("eval_every", 0)],
)  # fmt: skip
def test_bad_config_raises_value_error_naming_the_field(field, value) -> None:
    kwargs = {"n_steps": 10, "sigma": 1.0, field: value}
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("momentum", torch.optim.SGD),
                                        ("adam", torch.optim.Adam)])  # fmt: skip
def test_optimizers_and_float64_models(tmp_path, name, kind) -> None:
    model = ICSTN(LinearPredictor((12, 12), 6), warp="affine", n_warps=2, template_shape=(12, 12))
    model = model.double()  # the data follow the model's dtype
    config = TrainConfig(n_steps=3, sigma=1.0, batch_size=8, optimizer=name, n_test=8,
                         checkpoint_every=3, lr_predictor=1e-4, progress=False)  # fmt: skip
    result = train(model, config, planar(), run_dir=tmp_path)
    assert result.step == 3 and np.isfinite(result.last["test_loss"])
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt.config["optimizer"] == name and ckpt.model_config["update"] == "eq10"
    optimizer_state = ckpt.optimizer_state["param_groups"][0]
    assert optimizer_state["lr"] == 1e-4
    assert ("betas" in optimizer_state) == (kind is torch.optim.Adam)
    assert (optimizer_state.get("momentum", 0.0) > 0) == (name == "momentum")


def test_progress_bar_shows_loss_and_error(capsys) -> None:
    config = TrainConfig(n_steps=10, **{**CONFIG, "progress": True})
    train(classifier_model(), config, digits(16, 4))
    err = capsys.readouterr().err
    assert "loss=" in err and "error=" in err


def test_bad_data_or_model_raise_value_error() -> None:
    config = TrainConfig(n_steps=1, sigma=1.0, progress=False)
    with pytest.raises(ValueError, match="data"):
        train(classifier_model(), config, (torch.zeros(1), torch.zeros(1)))
    with pytest.raises(ValueError, match="aligner"):
        train(mnist_classifier(), config, digits())
    with pytest.raises(ValueError, match="labels"):
        ClassificationData(torch.zeros(4, 1, 8, 8), torch.zeros(3), torch.zeros(1, 1, 8, 8),
                           torch.zeros(1))  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_follows_the_model_to_cuda(tmp_path) -> None:
    model = classifier_model().to("cuda")
    train(model, TrainConfig(n_steps=4, **CONFIG), digits(), run_dir=tmp_path)
    assert all(p.device.type == "cuda" for p in model.parameters())
    cpu = classifier_model()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt", cpu)  # tensors follow the target model
    assert ckpt.step == 4 and next(cpu.parameters()).device.type == "cpu"
    # resuming on the GPU loads the checkpoint to the model's device, the RNG state to the CPU
    train(model, TrainConfig(n_steps=6, **CONFIG), digits(), run_dir=tmp_path, resume=True)
    assert load_checkpoint(tmp_path / "checkpoint.pt").step == 6


def test_the_run_records_its_kernels_and_a_resume_pins_them(tmp_path) -> None:
    result = train(classifier_model(), TrainConfig(n_steps=2, **CONFIG), digits(),
                   run_dir=tmp_path)  # fmt: skip
    recorded = json.loads((tmp_path / "kernels.json").read_text())
    assert any(key.startswith("conv2d forward") for key in result.kernels)
    assert recorded.items() <= result.kernels.items()
    imposed = {key: "onednn" for key in recorded if key.startswith("conv2d forward")}
    (tmp_path / "kernels.json").write_text(json.dumps({**recorded, **imposed}))
    clear_kernel_choices()
    resumed = train(classifier_model(), TrainConfig(n_steps=4, **CONFIG), digits(),
                    run_dir=tmp_path, resume=True)  # fmt: skip
    assert imposed.items() <= resumed.kernels.items()
    clear_kernel_choices()
