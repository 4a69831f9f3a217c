"""Shards in forked processes: the thread shards' gradient bit for bit, the caller's weights,
restarts on new shapes, and a worker's failure or death reported in one line."""

from __future__ import annotations

import os
import pickle
import signal
from collections import namedtuple

import pytest
import torch

from lkstn.learned.accel import forked
from lkstn.learned.accel.forked import ForkedStep, fork_available
from lkstn.learned.accel.shards import ShardedStep
from lkstn.learned.streams import step_generator
from lkstn.learned.train import TrainConfig, train
from lkstn.warps import Homography
from tests.learned.test_shards import classifier_model, digits, grads

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not fork_available(), reason="shards in processes need Linux's fork"),
]


Pair = namedtuple("Pair", "scores p")  # a model's outputs: a named tuple of tensors


def batch_of(n: int, step: int = 0, dtype=torch.float32):
    data = digits(n=max(n, 40)).to("cpu", dtype)
    return data, data.batch(Homography(), (28, 28), 2.0, n, step_generator(0, step))


@pytest.mark.parametrize("workers", [2, 3])
def test_processes_give_the_thread_shards_gradient_bit_for_bit(workers) -> None:
    # Each shard runs the same operators on one intra-op thread in either place, and the shard
    # gradients are added in the same order: the sums are the same floating-point operations.
    data, batch = batch_of(30)
    in_threads, in_processes = classifier_model(), classifier_model()
    threads, processes = ShardedStep(in_threads, data.loss, workers), None
    try:
        processes = ForkedStep(in_processes, data.loss, workers)
        for _ in range(2):  # twice: .grad accumulates in both
            loss_t, out_t = threads(batch)
            loss_p, out_p = processes(batch)
            assert torch.equal(loss_t, loss_p)
            assert all(torch.equal(a, b) for (a, _), (b, _) in zip(out_t, out_p, strict=True))
        for a, b in zip(grads(in_threads), grads(in_processes), strict=True):
            assert torch.equal(a, b)
        assert len(processes._children) == workers - 1
    finally:
        threads.close()
        if processes is not None:
            processes.close()


def test_workers_see_the_callers_weights_and_restart_for_new_shapes() -> None:
    data, batch = batch_of(40, dtype=torch.float64)
    model, reference = classifier_model(dtype=torch.float64), classifier_model(dtype=torch.float64)
    step = ForkedStep(model, data.loss, 2)
    try:
        step(batch)
        first = step._children[0].process
        _, smaller = batch_of(26, step=1, dtype=torch.float64)
        for b in (batch, smaller):  # the same shapes (same workers), then new ones (new workers)
            with torch.no_grad():  # what an optimizer step does: in place, in the caller
                for p, q in zip(model.parameters(), reference.parameters(), strict=True):
                    p.add_(0.01)
                    q.add_(0.01)
                    p.grad = q.grad = None
            step(b)
            ShardedStep(reference, data.loss, 1)(b)
            for a, g in zip(grads(reference), grads(model), strict=True):
                torch.testing.assert_close(g, a, rtol=1e-11, atol=1e-14)  # sums in another order
            assert (step._children[0].process is first) == (b is batch)
        assert not first.is_alive()
    finally:
        step.close()
    assert step._children == []


def test_a_failing_or_killed_worker_is_reported() -> None:
    data, batch = batch_of(30)
    caller = os.getpid()

    def loss(out, b):
        if os.getpid() != caller:
            raise ArithmeticError("shard loss failed in the worker")
        return data.loss(out, b)

    step = ForkedStep(classifier_model(), loss, 2)
    try:
        with pytest.raises(RuntimeError, match="shard loss failed in the worker"):
            step(batch)
    finally:
        step.close()
    step = ForkedStep(classifier_model(), data.loss, 2)
    try:
        step(batch)
        child = step._children[0].process
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        with pytest.raises(RuntimeError, match=f"pid {child.pid}.*exited with code -9"):
            step(batch)
    finally:
        step.close()


def test_without_fork_processes_are_refused_and_not_measured(monkeypatch) -> None:
    monkeypatch.setattr(forked.sys, "platform", "darwin")
    assert not fork_available()
    with pytest.raises(ValueError, match="fork"):
        ForkedStep(classifier_model(), digits().loss, 2)
    ForkedStep(classifier_model(), digits().loss, 1)  # one shard: the plain step, no fork
    with pytest.raises(ValueError, match="processes"):
        TrainConfig(n_steps=1, sigma=1.0, processes="yes")


def test_training_in_processes_equals_training_in_threads() -> None:
    config = dict(n_steps=3, sigma=2.0, batch_size=12, optimizer="adam", lr_predictor=1e-3,
                  eval_every=3, progress=False, workers=2)  # fmt: skip
    models = []
    for processes in (False, True):
        model = classifier_model(0)
        result = train(model, TrainConfig(processes=processes, **config), digits())
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
    assert result.records[-1]["step"] == 3


def test_outputs_cross_the_pipe_as_the_same_tensors() -> None:
    from lkstn.learned.accel.forked import _from_wire, _to_wire

    out = (
        torch.tensor(1.5),
        Pair(torch.arange(6.0).reshape(2, 3), torch.ones(2, 8, dtype=torch.float64)),
        [True, None, torch.zeros(3, dtype=torch.bfloat16)],  # no NumPy dtype: sent as it is
    )
    back = _from_wire(pickle.loads(pickle.dumps(_to_wire(out))))
    assert isinstance(back[1], Pair) and isinstance(back[2], list)
    assert back[2][:2] == [True, None]
    for a, b in [(out[0], back[0]), *zip(out[1], back[1], strict=True), (out[2][2], back[2][2])]:
        assert a.dtype == b.dtype and torch.equal(a, b)
