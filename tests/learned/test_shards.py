"""Sharded training steps: the whole batch's gradient, deterministic, resumable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lkstn.learned.accel.kernels import clear_kernel_choices, kernel_choices, pin_kernels
from lkstn.learned.accel.shards import (
    ShardedStep,
    default_workers,
    intra_op_threads,
    measured_workers,
    split_batch,
)
from lkstn.learned.checkpoint import load_checkpoint
from lkstn.learned.predictors import LinearPredictor, mnist_classifier, mnist_predictor
from lkstn.learned.stn import ICSTN, AlignThenClassify
from lkstn.learned.streams import AlignmentData, Batch, ClassificationData, step_generator
from lkstn.learned.train import TrainConfig, train
from lkstn.warps import Affine, Homography

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def classifier_model(seed: int = 0, dtype=torch.float32) -> AlignThenClassify:
    gen = torch.Generator().manual_seed(seed)
    aligner = ICSTN(mnist_predictor("a", generator=gen), n_warps=2, template_shape=(28, 28))
    model = AlignThenClassify(aligner, mnist_classifier(generator=gen)).to(dtype)
    with torch.no_grad():  # a non-zero last layer: every parameter gets a gradient
        model.aligner.predictor.layers[-1].weight.normal_(0.0, 0.01, generator=gen)
    return model


def digits(n: int = 40, seed: int = 0) -> ClassificationData:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n + 8, 1, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (n + 8,), generator=gen)
    return ClassificationData(images[:n], labels[:n], images[n:], labels[n:])


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_split_batch_sizes_and_shared_image() -> None:
    images = torch.rand(7, 1, 5, 5)
    b = Batch(images, torch.rand(7, 8), torch.arange(7))
    shards = split_batch(b, 3)
    assert [len(s.target) for s in shards] == [3, 2, 2]
    assert torch.equal(torch.cat([s.images for s in shards]), images)
    assert torch.equal(torch.cat([s.p_init for s in shards]), b.p_init)
    assert len(split_batch(b, 20)) == 7  # never an empty shard
    one = Batch(images[:1], torch.rand(7, 8), torch.rand(7, 8))  # alignment: one shared image
    assert all(s.images is one.images for s in split_batch(one, 2))


@pytest.mark.parametrize("workers", [2, 3])
def test_sharded_gradient_equals_the_whole_batch_gradient(workers) -> None:
    data = digits().to("cpu", torch.float64)
    batch = data.batch(Homography(), (28, 28), 2.0, 10, step_generator(0, 0))
    whole, sharded = classifier_model(dtype=torch.float64), classifier_model(dtype=torch.float64)
    loss_1, _ = ShardedStep(whole, data.loss, 1)(batch)
    step = ShardedStep(sharded, data.loss, workers)
    loss_k, outputs = step(batch)
    step.close()
    assert len(outputs) == workers and sum(len(b.target) for _, b in outputs) == 10
    assert abs(loss_k.item() - loss_1.item()) < 1e-13
    for a, b in zip(grads(whole), grads(sharded), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-13)
    scores = torch.cat([out for out, _ in outputs])
    torch.testing.assert_close(scores, whole(batch.images, batch.p_init).detach())


def test_sharded_alignment_gradient_and_accumulation() -> None:
    image = torch.rand(1, 1, 40, 40, dtype=torch.float64)
    data = AlignmentData(image, torch.tensor([-0.4, 0.0, 0.1, 0.0, -0.4, 0.0]).double())
    gen = torch.Generator().manual_seed(3)
    batch = data.batch(Affine(), (20, 20), 2.0, 9, gen)

    def model():
        pred = LinearPredictor((20, 20), 6).double()
        with torch.no_grad():
            pred.layers[-1].weight.normal_(0.0, 1e-3, generator=torch.Generator().manual_seed(1))
        return ICSTN(pred, warp="affine", n_warps=3, template_shape=(20, 20)).double()

    whole, sharded = model(), model()
    ShardedStep(whole, data.loss, 1)(batch)
    ShardedStep(whole, data.loss, 1)(batch)  # twice: .grad accumulates
    step = ShardedStep(sharded, data.loss, 2)
    step(batch)
    step(batch)
    step.close()
    for a, b in zip(grads(whole), grads(sharded), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-14)


def test_sharded_training_is_deterministic_and_resumes_bit_for_bit(tmp_path) -> None:
    config = dict(sigma=2.0, batch_size=12, optimizer="adam", lr_predictor=1e-3,
                  lr_classifier=1e-2, eval_every=2, checkpoint_every=2, progress=False,
                  workers=3)  # fmt: skip
    runs = []
    for seed in (0, 0):
        model = classifier_model(seed)
        train(model, TrainConfig(n_steps=4, **config), digits())
        runs.append(model)
    for a, b in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        assert torch.equal(a, b)
    half = classifier_model(0)
    train(half, TrainConfig(n_steps=2, **config), digits(), run_dir=tmp_path)
    resumed = classifier_model(seed=5)
    train(resumed, TrainConfig(n_steps=4, **config), digits(), run_dir=tmp_path, resume=True)
    for a, b in zip(runs[0].parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert load_checkpoint(tmp_path / "checkpoint.pt").step == 4


def test_train_restores_the_thread_count_and_workers_are_validated() -> None:
    with intra_op_threads(2):
        train(classifier_model(), TrainConfig(n_steps=1, sigma=1.0, batch_size=4, workers=2,
                                              progress=False), digits())  # fmt: skip
        assert torch.get_num_threads() == 2
    with intra_op_threads(2):
        assert default_workers(classifier_model(), 100) == 2
        assert default_workers(classifier_model(), 30) == 1  # at least 25 samples a shard
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            TrainConfig(n_steps=1, sigma=1.0, workers=bad)
        with pytest.raises(ValueError, match="workers"):
            ShardedStep(classifier_model(), digits().loss, bad)


def test_measured_workers_times_shards_against_one_batch_and_keeps_the_choice() -> None:
    model, data = classifier_model(), digits(n=100)
    batch = data.batch(Homography(), (28, 28), 1.0, 100, step_generator(0, 0))
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)  # what the caller had: left as it was
    clear_kernel_choices()
    names = {(2, False): "2 threads", (2, True): "2 processes", (1, False): "1 worker"}
    with intra_op_threads(2):
        chosen = measured_workers(model, data.loss, batch)
        (key,) = [k for k in kernel_choices() if k.startswith("train step shards")]
        assert chosen in names and kernel_choices()[key] == names[chosen]
        assert "threads=2" in key and "batch=100" in key
        for pinned, name in names.items():  # a pin (a resumed run's kernels.json) is obeyed
            pin_kernels({key: name})
            assert measured_workers(model, data.loss, batch) == pinned
        clear_kernel_choices()  # a run that chose before processes were a candidate
        pin_kernels({key.replace("train step shards", "train step workers"): "2 workers"})
        assert measured_workers(model, data.loss, batch) == (2, False)
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    with intra_op_threads(1):  # one thread, or too few samples for two shards: nothing to time
        assert measured_workers(model, data.loss, batch) == (1, False)
    with intra_op_threads(2):
        assert measured_workers(model, data.loss, split_batch(batch, 4)[0]) == (1, False)
        dropout = nn.Sequential(nn.Dropout(0.5), nn.Flatten(), nn.Linear(784, 10))
        assert measured_workers(dropout, lambda out, b: out.sum(), batch) == (1, False)
    clear_kernel_choices()


@pytest.mark.parametrize("layer", [nn.BatchNorm2d(1), nn.Dropout(0.5)])
def test_models_that_mix_samples_are_refused_with_workers(layer) -> None:
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="treats samples independently"):
        ShardedStep(model, lambda out, b: out.sum(), 2)
    ShardedStep(model, lambda out, b: out.sum(), 1)  # one worker: the plain step
