"""Forward and backward of one training batch, replayed from a CUDA graph.

The networks of [LL17] are small (1-8 channel convolutions on 28x28 or 36x36 images, batch 100),
so on a GPU a training step in eager mode is bound by the host: each of the ~400 kernels of an
IC-STN-4 forward and backward costs more to launch from Python than to run. A CUDA graph records
the kernels of one step once and replays them with one call (``torch.cuda.CUDAGraph``).

:class:`GraphedStep` has the interface of :class:`~lkstn.learned.accel.shards.ShardedStep`: called
with a :class:`~lkstn.learned.streams.Batch`, it leaves the batch's gradient in ``.grad`` of every
trainable parameter and returns ``(loss, outputs)``. At the first call (and whenever the batch's
shapes change) it copies the batch into static input tensors, runs a few warm-up passes on a side
stream (cuDNN and cuBLAS choose and load their kernels) and captures the forward, the loss and the
backward into a graph. Each later call copies the batch into the static inputs and replays. The
gradients are the graph's static outputs; the step re-attaches them to ``.grad`` after each replay,
so ``optimizer.zero_grad(set_to_none=True)`` before the call is harmless, and the gradient is
*replaced*, not added to what was there. The optimizer step stays outside the graph: the training
loop checks the loss for NaN before it updates anything (as in eager mode) and any learning-rate
schedule keeps working.

The graph replays the kernels that the capture recorded, so it computes what eager mode computes
on the same GPU up to cuDNN's choice of algorithm and its non-deterministic reductions;
``tests/learned/test_graphed.py`` checks graphed gradients against eager ones in float32 and a
graphed training run against an eager one in float64 (passed on an H200; in float32 two eager
runs of this training already drift apart). The model must not
synchronise with the host inside its forward or backward (no ``.item()``, no data-dependent
Python branches: the aligners of :mod:`lkstn.learned.stn` with ``update="eq10"`` do not); if
capture fails, the step warns once and runs eagerly.

Glossary: ``static`` the graph's input batch, whose memory the replay reads.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lkstn.learned.accel.shards import ShardedStep, detached
from lkstn.learned.streams import Batch

__all__ = ["GraphedStep"]


class GraphedStep:
    """Forward, loss and backward of one batch, captured once into a CUDA graph and replayed.

    Parameters
    ----------
    model : nn.Module
        On a CUDA device; ``model(images, p_init)`` gives what ``loss`` takes.
    loss : callable
        ``loss(out, batch) -> scalar``.
    warmup : int
        Eager passes on a side stream before the capture (PyTorch's recipe asks for a few).
    """

    def __init__(
        self, model: nn.Module, loss: Callable[[Any, Batch], Tensor], *, warmup: int = 3
    ) -> None:
        first = next(model.parameters(), None)
        if first is None or first.device.type != "cuda":
            raise ValueError("GraphedStep needs a model with parameters on a CUDA device")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be a positive integer, got {warmup!r}")
        self.model, self.loss, self.warmup = model, loss, warmup
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._key: tuple | None = None
        self._eager: ShardedStep | None = None  # after a failed capture
        self._graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, batch: Batch) -> tuple[Tensor, list[tuple[Any, Batch]]]:
        if self._eager is not None:
            return self._eager(batch)
        key = tuple(
            (t.shape, t.dtype, t.device) for t in (batch.images, batch.p_init, batch.target)
        )
        if key != self._key:
            try:
                self._capture(batch)
            except RuntimeError as exc:
                warnings.warn(
                    f"CUDA graph capture failed ({exc}); training continues eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._graph, self._key = None, None
                for p in self.params:
                    p.grad = None
                self._eager = ShardedStep(self.model, self.loss, 1)
                return self._eager(batch)
            self._key = key
        new = (batch.images, batch.p_init, batch.target)
        for mine, theirs in zip(self._inputs, new, strict=True):
            mine.copy_(theirs)  # stream-ordered: after the last replay's reads
        self._graph.replay()
        for p, g in zip(self.params, self._grads, strict=True):
            p.grad = g
        return self._loss, [(self._out, self._static)]

    def _capture(self, batch: Batch) -> None:
        """Static inputs, warm-up on a side stream, then capture forward + loss + backward."""
        self._inputs = [t.clone() for t in (batch.images, batch.p_init, batch.target)]
        static = Batch(*self._inputs)
        device = batch.p_init.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # gradients of the warm-up are thrown away
                for p in self.params:
                    p.grad = None
                self.loss(self.model(static.images, static.p_init), static).backward()
        torch.cuda.current_stream(device).wait_stream(side)
        for p in self.params:
            p.grad = None  # so that the captured backward allocates (not accumulates) them
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.model(static.images, static.p_init)
            loss = self.loss(out, static)
            loss.backward()
        self._graph, self._static = graph, static
        self._out, self._loss = detached(out), loss.detach()
        self._grads = [p.grad for p in self.params]

    def close(self) -> None:
        """Release the graph (and the eager fallback's threads)."""
        if self._eager is not None:
            self._eager.close()
        self._graph = None
