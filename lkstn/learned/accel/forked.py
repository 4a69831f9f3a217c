"""Shards of one training batch in forked worker processes: :class:`ShardedStep` without the GIL.

A shard's forward and backward on the small networks of [LL17] spends a few milliseconds in
Python (module calls, autograd Functions, the optimizer-facing glue) between short operators.
Threads of one process run that Python one at a time: two 50-sample shards of the MNIST
IC-STN-4(a) step in two threads take about 20 % longer than one alone, two processes at once
about 3 % (``benchmarks/train_step_parts.py``). :class:`ForkedStep` therefore computes shard 0 in
the calling process and every other shard in a worker process forked from it.

How the processes share the step:

- the trainable parameters are moved to shared memory (``Tensor.share_memory_``, in place, so the
  optimizer's references stay valid): a worker always sees the weights the optimizer left;
- each worker's shard inputs and flat gradient live in shared buffers allocated before the fork;
  a pipe carries the go signal one way and ``(loss, outputs)`` back (a few hundred bytes for a
  classifier's scores);
- the gradients are added in shard order, as :class:`ShardedStep` adds them, and each shard runs
  the same operators on one intra-op thread, so the two give the same gradient bit for bit when
  their layers use the same kernels. The kernels are chosen (and the choice measured) in the
  calling process before the fork: every shard shape is stepped there once first.

The workers start at the first call (the batch's shapes size the buffers) and again when the
shapes change; :meth:`ForkedStep.close` stops them, and a worker exits by itself when the
calling process dies (``PR_SET_PDEATHSIG`` and the pipe's end of file). ``PR_SET_PDEATHSIG``
follows the thread that forked: call a step from threads that outlive it (as
:func:`~lkstn.learned.train.train` does, which closes it before returning). Linux only
(:func:`fork_available`).

Glossary: ``n`` batch size, ``workers`` number of shards (processes: ``workers - 1`` forked).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import pickle
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lkstn.learned.accel.shards import (
    add_shard_gradients,
    check_workers,
    shard_gradients,
    split_batch,
    whole_batch_step,
)
from lkstn.learned.streams import Batch

__all__ = ["ForkedStep", "fork_available"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def fork_available() -> bool:
    """Whether :class:`ForkedStep` can run here: Linux, where ``fork`` is safe for PyTorch, in a
    process that may have children (not a daemonic ``multiprocessing`` worker)."""
    return (
        sys.platform.startswith("linux")
        and "fork" in multiprocessing.get_all_start_methods()
        and not multiprocessing.current_process().daemon
    )


class ForkedStep:
    """Forward and backward of one batch over ``workers`` shards, ``workers - 1`` of them in
    forked processes; the interface and the result of :class:`ShardedStep` (module docstring).

    Parameters
    ----------
    model : nn.Module
        ``model(images, p_init)`` gives what ``loss`` takes; its trainable parameters are moved
        to shared memory at the first call with several shards.
    loss : callable
        ``loss(out, batch) -> scalar``, a mean over the batch's samples.
    workers : int
        Shards. ``1`` runs the plain ``loss(model(...)).backward()`` and forks nothing.

    Call it on one intra-op thread (``intra_op_threads(1)``), as :func:`~lkstn.learned.train.train`
    does: the calling process computes shard 0 alongside the workers.
    """

    def __init__(self, model: nn.Module, loss: Callable[[Any, Batch], Tensor], workers: int):
        check_workers(model, workers)
        if workers > 1 and not fork_available():
            raise ValueError("shards in processes need Linux's fork outside a daemonic process; "
                             f"this is {sys.platform}")  # fmt: skip
        self.model, self.loss, self.workers = model, loss, workers
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._shapes: tuple | None = None
        self._children: list[_Worker] = []

    def __call__(self, batch: Batch) -> tuple[Tensor, list[tuple[Any, Batch]]]:
        n = batch.p_init.shape[0]
        shards = split_batch(batch, self.workers)
        if len(shards) == 1:
            return whole_batch_step(self.model, self.loss, batch)
        shapes = tuple(_layout(s) for s in shards)
        if shapes != self._shapes:
            self._start(shards, n, shapes)
        for child, shard in zip(self._children, shards[1:], strict=True):
            child.send(shard, n)
        results = [shard_gradients(self.model, self.loss, self.params, shards[0], n)]
        results += [child.receive() for child in self._children]
        loss = add_shard_gradients(self.params, results)
        return loss, [(out, shard) for (_, out, _), shard in zip(results, shards, strict=True)]

    def _start(self, shards: list[Batch], n: int, shapes: tuple) -> None:
        """Fork one worker per shard after the first, with buffers for these shard shapes."""
        self.close()
        for shard in shards[1:]:  # choose every shard shape's kernels here, before the fork
            shard_gradients(self.model, self.loss, self.params, shard, n)
        for p in self.params:
            p.share_memory_()
        context = multiprocessing.get_context("fork")
        self._children = [_Worker(context, self, shard) for shard in shards[1:]]
        self._shapes = shapes

    def close(self) -> None:
        """Stop the worker processes (the next call with several shards starts new ones)."""
        for child in self._children:
            child.stop()
        self._children, self._shapes = [], None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class _Array:
    """A CPU tensor on the pipe as its NumPy array, which pickles and unpickles several times
    faster than the tensor (its storage goes through PyTorch's own reduction)."""

    def __init__(self, tensor: Tensor):
        self.array = tensor.numpy()


def _to_wire(x: Any) -> Any:
    """``x`` with its tensors (also inside tuples, lists and named tuples) as :class:`_Array`."""
    if isinstance(x, Tensor):
        try:
            return _Array(x)
        except (TypeError, RuntimeError):  # not on the CPU, or a dtype NumPy lacks
            return x
    if isinstance(x, tuple | list):
        items = [_to_wire(v) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
    return x


def _from_wire(x: Any) -> Any:
    """The inverse of :func:`_to_wire`."""
    if isinstance(x, _Array):
        return torch.from_numpy(x.array)
    if isinstance(x, tuple | list):
        items = [_from_wire(v) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
    return x


def _tensors(batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
    return batch.images, batch.p_init, batch.target


def _layout(shard: Batch) -> tuple:
    return tuple((tuple(t.shape), t.dtype) for t in _tensors(shard))


class _Worker:
    """One forked process stepping one shard: its pipe, shared inputs and gradient buffer."""

    def __init__(self, context, step: ForkedStep, shard: Batch):
        self.inputs = Batch(*(torch.empty_like(t).share_memory_() for t in _tensors(shard)))
        self.shapes = [p.shape for p in step.params]
        size = sum(p.numel() for p in step.params)
        self.grads = torch.empty(size, dtype=step.params[0].dtype).share_memory_()
        self.conn, theirs = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(step, self.inputs, self.grads, theirs, self.conn), daemon=True
        )
        self.process.start()
        theirs.close()

    def send(self, shard: Batch, n: int) -> None:
        for buffer, tensor in zip(_tensors(self.inputs), _tensors(shard), strict=True):
            buffer.copy_(tensor)
        self._guard(lambda: self.conn.send_bytes(pickle.dumps(n)))

    def receive(self) -> tuple[Tensor, Any, list[Tensor | None]]:
        status, payload = pickle.loads(self._guard(self.conn.recv_bytes))
        if status == "error":
            raise RuntimeError(f"a shard's worker process failed:\n{payload}")
        loss, out, used_params = _from_wire(payload)
        grads, start = [], 0
        for used, shape in zip(used_params, self.shapes, strict=True):  # flat buffer -> views
            grads.append(self.grads[start : start + shape.numel()].view(shape) if used else None)
            start += shape.numel() if used else 0
        return loss, out, grads

    def _guard(self, io: Callable[[], Any]) -> Any:
        try:
            return io()
        except (EOFError, OSError) as exc:
            self.process.join(timeout=1)
            code = self.process.exitcode
            raise RuntimeError(f"a shard's worker process (pid {self.process.pid}) has exited "
                               f"with code {code}") from exc  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()  # the worker reads end of file and exits
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _serve(step: ForkedStep, inputs: Batch, grads: Tensor, conn, theirs) -> None:
    """A worker's loop: wait for ``n``, step the shard in ``inputs``, answer; stop at EOF."""
    theirs.close()  # the caller's end: end of file reaches us when the caller closes or dies
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    torch.set_num_threads(1)
    while True:
        try:
            n = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            for p in step.params:
                p.grad = None
            loss, out, shard_grads = shard_gradients(step.model, step.loss, step.params, inputs, n)
            used = [g.reshape(-1) for g in shard_grads if g is not None]
            if used:  # one flat buffer, the used parameters' gradients in order
                torch.cat(used, out=grads[: sum(g.numel() for g in used)])
            answer = ("ok", _to_wire((loss, out, [g is not None for g in shard_grads])))
        except Exception:  # reported to the caller, which raises it
            answer = ("error", traceback.format_exc())
        conn.send_bytes(pickle.dumps(answer))
