"""Forward and backward of one training batch, split into shards computed by parallel threads.

The networks of [LL17] are small: 1-8 channel convolutions on 28x28 or 36x36 images. On a CPU
such layers spread badly over cores inside one operator (NNPACK's thread pool serialises its
callers, oneDNN's threads have little work each), so :func:`~lkstn.learned.train.train` can use
the cores the other way round: the batch of ``n`` samples is cut into ``workers`` shards, each
shard's forward and backward runs in its own Python thread with one intra-op thread (PyTorch
releases the GIL inside its operators), and the shard gradients are summed.

The result is the gradient of the whole batch. The losses of :mod:`lkstn.learned.streams` are
means over samples, so shard ``k`` contributes ``loss_k * n_k / n`` and the weighted shard losses
sum to the batch loss; only the order of the floating-point sums changes. The shard gradients
are added in shard order, whatever thread finishes first, so a run is deterministic and resumes
bit for bit with the same ``workers``. This holds for models that treat samples independently:
batch normalisation (batch statistics) and dropout (the global random stream, drawn in thread
order) are refused.

Which way is faster depends on the CPU, the model and the load, so by default ``train``
measures both on a batch (:func:`measured_workers`), with a third way where the platform allows
it: the same shards in forked processes (:mod:`lkstn.learned.accel.forked`).

Glossary: ``n`` batch size, ``workers`` number of shards and threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from lkstn.learned.accel.kernels import choose, kernel_choices, thread_key
from lkstn.learned.streams import Batch

__all__ = [
    "ShardedStep",
    "add_shard_gradients",
    "check_workers",
    "default_workers",
    "detached",
    "intra_op_threads",
    "measured_workers",
    "shard_gradients",
    "whole_batch_step",
    "split_batch",
]

T = TypeVar("T")


def default_workers(model: nn.Module, batch_size: int) -> int:
    """One shard per intra-op thread on a CPU, with at least 25 samples a shard; 1 elsewhere.

    Measured on 2 cores only (``benchmarks/train_step.py``); on a machine with many cores, time
    a few values of ``TrainConfig.workers``.
    """
    first = next(model.parameters(), None)
    if first is not None and first.device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), batch_size // 25))


def measured_workers(
    model: nn.Module, loss: Callable[[Any, Batch], Tensor], batch: Batch
) -> tuple[int, bool]:
    """``(workers, processes)``: how to step ``batch`` fastest here, as measured on it.

    The ways to use ``T`` intra-op threads rank differently by CPU, model and load
    (``benchmarks/train_step.py``): ``T`` shards (:func:`default_workers`) in threads of one
    intra-op thread each; the same shards in processes
    (:class:`~lkstn.learned.accel.forked.ForkedStep`, where
    :func:`~lkstn.learned.accel.forked.fork_available`); or the whole batch on ``T`` threads.
    So each is timed on ``batch`` (forward and backward, a few interleaved rounds, each after a
    warm step of its own: :func:`lkstn.learned.accel.kernels.choose`, ``composite=True``) and
    the choice is kept per machine like the layers' kernels, listed by
    :func:`~lkstn.learned.accel.kernels.kernel_choices` (a run directory's ``kernels.json``,
    pinned again on resume). The parameters' ``.grad`` are left as they were. A model with
    batch normalisation or dropout gets ``(1, False)`` (see :class:`ShardedStep`).
    """
    from lkstn.learned.accel.forked import ForkedStep, fork_available  # it imports this module

    n = batch.p_init.shape[0]
    shards = default_workers(model, n)
    if shards == 1 or _sample_mixer(model) is not None:
        return 1, False
    params = [p for p in model.parameters() if p.requires_grad]
    size = sum(p.numel() for p in params)
    workload = f"{type(model).__name__} params={size} images={tuple(batch.images.shape)}"
    earlier = kernel_choices().get(thread_key("train step workers", workload, f"batch={n}"))
    if earlier is not None:  # pinned by a run that chose before processes were a candidate
        return int(earlier.split()[0]), False
    saved = [p.grad for p in params]
    steps: list[ShardedStep | ForkedStep] = []

    def timed(workers: int, kind: type[ShardedStep | ForkedStep]) -> Callable[[], None]:
        step = kind(model, loss, workers)
        steps.append(step)

        def run() -> None:
            with torch.enable_grad(), intra_op_threads(1 if workers > 1 else None):
                step(batch)
            for p in params:
                p.grad = None

        return run

    try:
        candidates = {f"{shards} threads": timed(shards, ShardedStep)}
        if fork_available():
            candidates[f"{shards} processes"] = timed(shards, ForkedStep)
        candidates["1 worker"] = timed(1, ShardedStep)
        for run in candidates.values():  # the layers choose their kernels first
            run()
        key = thread_key("train step shards", workload, f"batch={n}")
        name = choose(key, candidates, composite=True, repeats=7, warm=1)
    finally:
        for step in steps:
            step.close()
        for p, g in zip(params, saved, strict=True):
            p.grad = g
    return int(name.split()[0]), name.endswith("processes")


def _sample_mixer(model: nn.Module) -> nn.Module | None:
    """A layer of ``model`` whose output for a sample depends on the others (batch statistics)
    or on the order of the random draws (dropout): shards would change the result."""
    kinds = nn.modules.batchnorm._BatchNorm | nn.modules.dropout._DropoutNd
    return next((m for m in model.modules() if isinstance(m, kinds)), None)


def split_batch(batch: Batch, workers: int) -> list[Batch]:
    """``batch`` cut into ``min(workers, n)`` consecutive shards of sizes differing by at most 1.

    An image shared by the whole batch (alignment data: one ``(1, C, H, W)`` image, ``n``
    starts) is shared by every shard.

    >>> import torch
    >>> b = Batch(torch.zeros(5, 1, 4, 4), torch.zeros(5, 6), torch.arange(5))
    >>> [s.target.tolist() for s in split_batch(b, 2)]
    [[0, 1, 2], [3, 4]]
    """
    n = batch.p_init.shape[0]
    k = max(1, min(int(workers), n))
    starts = torch.tensor_split(torch.arange(n), k)
    shards = []
    for idx in starts:
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        images = batch.images[lo:hi] if batch.images.shape[0] == n else batch.images
        shards.append(Batch(images, batch.p_init[lo:hi], batch.target[lo:hi]))
    return shards


class ShardedStep:
    """Forward and backward of one batch over ``workers`` shards; see the module docstring.

    Parameters
    ----------
    model : nn.Module
        ``model(images, p_init)`` gives what ``loss`` takes.
    loss : callable
        ``loss(out, batch) -> scalar``, a mean over the batch's samples.
    workers : int
        Shards (and threads). ``1`` runs the plain ``loss(model(...)).backward()``.

    Calling the step with a :class:`~lkstn.learned.streams.Batch` leaves the batch's gradient in
    ``.grad`` of every trainable parameter (added to what is there) and returns ``(loss,
    outputs)``: the batch loss (detached) and the list of ``(out, shard)`` pairs. With
    ``workers > 1`` each shard thread sets itself to one intra-op thread when it starts
    (``torch.set_num_threads(1)``: the OpenMP thread count is per thread, and a new thread would
    otherwise start its own team of OpenMP threads); call the step with one intra-op thread too, as
    :func:`~lkstn.learned.train.train` does, so that the shards have the cores to themselves.
    """

    def __init__(self, model: nn.Module, loss: Callable[[Any, Batch], Tensor], workers: int):
        check_workers(model, workers)
        self.model, self.loss, self.workers = model, loss, workers
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._pool = (
            ThreadPoolExecutor(
                workers, "lkstn-shard", initializer=torch.set_num_threads, initargs=(1,)
            )  # fmt: skip
            if workers > 1
            else None
        )

    def __call__(self, batch: Batch) -> tuple[Tensor, list[tuple[Any, Batch]]]:
        if self._pool is None:
            return whole_batch_step(self.model, self.loss, batch)
        n = batch.p_init.shape[0]
        shards = split_batch(batch, self.workers)
        step = lambda s: shard_gradients(self.model, self.loss, self.params, s, n)  # noqa: E731
        results = list(self._pool.map(step, shards))  # in shard order
        loss = add_shard_gradients(self.params, results)
        return loss, [(out, shard) for (_, out, _), shard in zip(results, shards, strict=True)]

    def close(self) -> None:
        """Stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown()


def check_workers(model: nn.Module, workers: int) -> None:
    """Raise ``ValueError`` unless ``workers`` is a positive integer that ``model`` admits."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    mixer = _sample_mixer(model)
    if workers > 1 and mixer is not None:
        raise ValueError(
            f"workers={workers} needs a model that treats samples independently; "
            f"{type(mixer).__name__} does not (use workers=1)"
        )


def whole_batch_step(model: nn.Module, loss_fn, batch: Batch):
    """One worker's step: ``loss(model(...)).backward()`` on the whole batch; ``(loss, [(out,
    batch)])`` as a sharded step returns them."""
    out = model(batch.images, batch.p_init)
    loss = loss_fn(out, batch)
    loss.backward()
    return loss.detach(), [(out, batch)]


def shard_gradients(model: nn.Module, loss_fn, params: list[Tensor], shard: Batch, n: int):
    """``(loss, out, grads)`` of one shard of an ``n``-sample batch: its share of the batch loss
    (``loss_k * n_k / n``, detached), the detached outputs and the parameters' gradients."""
    out = model(shard.images, shard.p_init)
    loss = loss_fn(out, shard) * (shard.p_init.shape[0] / n)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), detached(out), grads


def add_shard_gradients(params: list[Tensor], results: list) -> Tensor:
    """Add the shards' gradients (``shard_gradients`` results, in shard order) to ``.grad``;
    the batch loss. The sums are new tensors: no ``.grad`` aliases a shard's buffer."""
    loss = results[0][0]
    for shard_loss, *_ in results[1:]:
        loss = loss + shard_loss
    for i, param in enumerate(params):
        grads = [g[i] for _, _, g in results if g[i] is not None]
        if not grads:
            continue
        total = grads[0] if len(grads) > 1 else grads[0].clone()
        for g in grads[1:]:
            total = total + g
        param.grad = total if param.grad is None else param.grad + total
    return loss


def detached(out: T) -> T:
    """``out`` without its graph (a tensor, or a tuple such as ``Transformed``)."""
    if isinstance(out, Tensor):
        return out.detach()
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return type(out)(*(detached(v) for v in out))
    return out


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Set ``torch.set_num_threads(n)`` for the block (``None``: leave it), then restore it."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
