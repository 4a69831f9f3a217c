"""Tests for lkstn.learned.accel.graphed: a CUDA-graph step computes what the eager step computes.

The CUDA tests are skipped without a GPU (``pytest -m gpu`` on a machine with one). Training runs
without TF32 (``TrainConfig.tf32=False``); cuDNN's weight-gradient kernels may still add in a
different order from run to run, so one batch's gradients are compared to float32 rounding and
whole training runs in float64 (where that reordering cannot hide a wrong graph).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lkstn.experiments import classification as cl
from lkstn.experiments.mnist import MNIST
from lkstn.learned.accel.graphed import GraphedStep
from lkstn.learned.accel.shards import ShardedStep
from lkstn.learned.streams import ClassificationData, step_generator
from lkstn.learned.train import TrainConfig, train
from lkstn.warps import Homography

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def mnist_icstn4(seed: int = 0):
    """The MNIST IC-STN-4(a) of Table 2, with a non-zero last predictor layer (so every
    recurrence warps and the predictor gets a gradient through all of them)."""
    model = cl.build_model(MNIST, MNIST.row("IC-STN-4(a)"), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.aligner.predictor.layers[-1].weight.normal_(
            0.0, 1e-2, generator=torch.Generator().manual_seed(seed + 1)
        )
    return model


def digits(n: int = 300, n_test: int = 200, seed: int = 0) -> ClassificationData:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n + n_test, 1, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (n + n_test,), generator=gen)
    return ClassificationData(images[:n], labels[:n], images[n:], labels[n:])


def test_graphed_step_refuses_a_cpu_model() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        GraphedStep(mnist_icstn4(), ClassificationData.loss)


@pytest.mark.gpu
@cuda
def test_batches_are_the_same_on_every_device() -> None:
    data = digits()
    on_gpu, warp = data.to("cuda", torch.float32), Homography()
    for step in (0, 7):
        cpu = data.batch(warp, (28, 28), 3.5, 100, step_generator(0, step))
        gpu = on_gpu.batch(warp, (28, 28), 3.5, 100, step_generator(0, step))
        for name in ("images", "p_init", "target"):  # drawn and fitted on the CPU, then moved
            assert torch.equal(getattr(cpu, name), getattr(gpu, name).cpu())


@pytest.mark.gpu
@cuda
def test_graphed_step_gives_the_eager_gradient_of_every_batch() -> None:
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # as train() runs
        _graphed_against_eager_gradients()


def _graphed_against_eager_gradients() -> None:
    model = mnist_icstn4().to("cuda")
    twin = copy.deepcopy(model)  # eager autograd on the legacy stream would block a capture
    data = digits().to("cuda", torch.float32)
    warp = Homography()
    graphed = GraphedStep(model, data.loss)
    eager = ShardedStep(twin, data.loss, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture warns
        for step, n in ((0, 100), (1, 100), (2, 64)):  # the last one re-captures (new shape)
            batch = data.batch(warp, (28, 28), 3.5, n, step_generator(0, step))
            twin.zero_grad(set_to_none=True)
            loss_e, _ = eager(batch)
            grads_e = [p.grad.clone() for p in twin.parameters()]
            model.zero_grad(set_to_none=True)
            loss_g, [(scores, _)] = graphed(batch)
            assert graphed._graph is not None
            torch.testing.assert_close(loss_g, loss_e, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(scores, model(batch.images, batch.p_init))
            assert all(p.grad is not None for p in model.parameters())
            for p, g in zip(model.parameters(), grads_e, strict=True):
                torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
            assert F.cross_entropy(scores, batch.target).item() == pytest.approx(loss_g.item())


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_graphed_training_follows_eager_training(optimizer, tmp_path) -> None:
    # In float64. This training amplifies a difference in the last bit by orders of magnitude in a
    # few steps (on an H200 two *eager* float32 runs drift apart from cuDNN's reordered sums), so
    # float32 cannot tell a wrong graph from rounding; in float64 eager runs agree to ~2e-9 after
    # 30 steps, and so must graphed ones.
    config = TrainConfig(n_steps=30, sigma=3.5, optimizer=optimizer, lr_predictor=1e-3,
                         lr_classifier=1e-2, eval_every=15, progress=False)  # fmt: skip
    finals, records = [], []
    for use_graph in (False, True):
        model = mnist_icstn4().to("cuda", torch.float64)
        result = train(model, replace(config, cuda_graph=use_graph),
                       digits(), run_dir=tmp_path / str(use_graph))  # fmt: skip
        finals.append([p.detach().cpu() for p in model.parameters()])
        records.append(result.records)
    start = [p.detach().double() for p in mnist_icstn4().parameters()]
    moved = sum(float((a - b).abs().max()) for a, b in zip(finals[1], start, strict=True))
    assert moved > 1e-3  # training changed the model
    for a, b in zip(*finals, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for ra, rb in zip(*records, strict=True):
        assert ra["test_loss"] == pytest.approx(rb["test_loss"], rel=1e-6)
