"""Train every Table 2(a) row with a warp at once on one device, several seeds per row batched.

[LL17] Table 2's networks are under 40K parameters: one row at a time leaves a GPU nearly idle
(MNIST IC-STN-4(a): 477 steps/s on an H200). This script trains the six rows of Table 2(a) that
warp (STN(a), c-STN-1(a), c-STN-2(a), c-STN-4(a), IC-STN-2(a), IC-STN-4(a)) in one process, in
lockstep, with the paper's recipe (plain SGD, batch 100, predictor lr 1e-4, classifier lr 1e-2,
200K steps, sigma 3.5 px):

- the ``--seeds`` models of one row are stacked (``torch.func.stack_module_state``) and trained
  as one vectorised computation: ``vmap(grad(loss))`` over ``functional_call`` of the row's
  network, each seed with its own initial weights and its own data stream
  (``step_generator(seed, step)``, as :func:`lkstn.learned.train.train` draws it; the same seed
  draws the same batches for every row);
- on a CUDA device, each row's whole step (forward, backward, SGD update of the stacked
  parameters) is captured once into a CUDA graph and replayed, the batch copied into the graph's
  static inputs (``--no-graph`` runs eagerly);
- at the end, each row's test error per seed, mean and spread, steps/s and the device.

The same code runs on a CPU at a small size (``tests/test_sweep_gpu_script.py``: 2 rows, 2 seeds,
synthetic digits, checked against separate training). Compare a row's error with the spread of
single-row trainings (``lkstn reproduce mnist --rows ROW --recipe paper``, several seeds).

Usage::

    python benchmarks/sweep_gpu.py --device cuda --seeds 3 --out sweep_gpu.json   # MNIST
    python benchmarks/sweep_gpu.py --device cpu --synthetic 256 --steps 3 --rows "STN(a)"
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from lkstn.experiments import classification as cl
from lkstn.experiments.mnist import MNIST
from lkstn.learned.streams import ClassificationData, step_generator
from lkstn.machine import fingerprint
from lkstn.warps import Homography

ROWS_2A = ("STN(a)", "c-STN-1(a)", "c-STN-2(a)", "c-STN-4(a)", "IC-STN-2(a)", "IC-STN-4(a)")
PAPER = MNIST.recipes["paper"]


class RowSweep:
    """The ``len(seeds)`` networks of one row, stacked; :meth:`step` is one SGD step of all."""

    def __init__(self, row: str, seeds: list[int], device: torch.device, graph: bool) -> None:
        models = [
            cl.build_model(MNIST, MNIST.row(row), torch.Generator().manual_seed(s)).to(device)
            for s in seeds
        ]
        self.row, self.models = row, models
        self.base = copy.deepcopy(models[0]).to("meta")
        params, self.buffers = stack_module_state(models)  # name -> (S, ...)
        self.params = {k: v.detach() for k, v in params.items()}
        self.lr = {k: PAPER.lr_predictor if k.startswith("aligner.") else PAPER.lr_classifier
                   for k in self.params}  # fmt: skip

        def loss(p, b, images, p_init, labels):
            scores = functional_call(self.base, (p, b), (images, p_init))
            return F.cross_entropy(scores, labels)

        self._grad = vmap(grad_and_value(loss))  # over seeds: (S, ...) everywhere
        self.graph = graph and device.type == "cuda"
        self._cuda_graph = None

    def _step(self, images, p_init, labels) -> torch.Tensor:
        grads, loss = self._grad(self.params, self.buffers, images, p_init, labels)
        with torch.no_grad():
            for k, g in grads.items():  # plain SGD, the paper's
                self.params[k].sub_(self.lr[k] * g)
        return loss  # (S,)

    def step(self, images, p_init, labels) -> torch.Tensor:
        """One step of every seed on its batch: ``images`` ``(S, B, C, h, w)``, ``p_init``
        ``(S, B, P)``, ``labels`` ``(S, B)``; returns the losses ``(S,)``."""
        if not self.graph:
            return self._step(images, p_init, labels)
        if self._cuda_graph is None:  # warm up on a side stream, then capture
            self._static = [t.clone() for t in (images, p_init, labels)]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            saved = {k: v.clone() for k, v in self.params.items()}
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._step(*self._static)
            torch.cuda.current_stream().wait_stream(side)
            for k, v in saved.items():  # the warm-up steps must not count
                self.params[k].copy_(v)
            self._cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._cuda_graph):
                self._loss = self._step(*self._static)
        for static, t in zip(self._static, (images, p_init, labels), strict=True):
            static.copy_(t, non_blocking=True)
        self._cuda_graph.replay()
        return self._loss

    def test_error(self, data: ClassificationData, seed: int) -> list[float]:
        """Test error (%) of each seed's network, each image from one fixed start."""
        test = data.test_set(self.models[0].aligner.warp, MNIST.template_shape, cl.SIGMA, 500,
                             seed)  # fmt: skip
        forward = vmap(lambda p, b, x, q: functional_call(self.base, (p, b), (x, q)))
        S = len(self.models)
        wrong = torch.zeros(len(self.models), device=data.images.device)
        with torch.no_grad():
            for batch in test:
                x, q = (t.expand(S, *t.shape) for t in (batch.images, batch.p_init))
                scores = forward(self.params, self.buffers, x, q)  # (S, B, classes)
                wrong += (scores.argmax(-1) != batch.target).sum(-1)
        return (100.0 * wrong / len(data.test_labels)).tolist()


def draw(data: ClassificationData, seeds: list[int], step: int, batch: int):
    """Each seed's batch at ``step`` (its own stream), stacked: images, p_init, labels."""
    bs = [data.batch(Homography(), MNIST.template_shape, cl.SIGMA, batch, step_generator(s, step))
          for s in seeds]  # fmt: skip
    return [torch.stack([getattr(b, f) for b in bs]) for f in ("images", "p_init", "target")]


def synthetic(n: int, device: torch.device) -> ClassificationData:
    """``n`` random 28 x 28 'digits' (and n // 4 test images) with labels 0-9, for tests."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n + n // 4, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (n + n // 4,), generator=gen)
    return ClassificationData(x[:n], y[:n], x[n:], y[n:]).to(device, torch.float32)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", nargs="+", default=list(ROWS_2A))
    parser.add_argument("--seeds", type=int, default=3, help="networks per row (seeds 0..S-1)")
    parser.add_argument("--steps", type=int, default=PAPER.n_steps)
    parser.add_argument("--data", default="../shared/data/mnist", help="MNIST IDX folder")
    parser.add_argument("--synthetic", type=int, default=0, help="random digits instead (tests)")
    parser.add_argument("--no-graph", action="store_true", help="no CUDA graphs")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if args.synthetic:
        data = synthetic(args.synthetic, device)
    else:
        data, _ = cl.load_data(MNIST, args.data)
        data = data.to(device, torch.float32)
    seeds = list(range(args.seeds))
    sweeps = [RowSweep(row, seeds, device, graph=not args.no_graph) for row in args.rows]
    start = time.perf_counter()
    batch = draw(data, seeds, 0, PAPER.batch_size)
    for step in range(args.steps):
        losses = [s.step(*batch) for s in sweeps]
        if step + 1 < args.steps:  # drawn while the device computes this step
            batch = draw(data, seeds, step + 1, PAPER.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    rows = {}
    for s, loss in zip(sweeps, losses, strict=True):
        errors = s.test_error(data, seed=0)
        rows[s.row] = {"test_error_percent": errors, "mean": statistics.mean(errors),
                       "spread": max(errors) - min(errors),
                       "final_loss": loss.tolist()}  # fmt: skip
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "rows": rows,
        "seeds": seeds,
        "steps": args.steps,
        "seconds": seconds,
        "steps_per_second_all_rows": args.steps / seconds,
        "cuda_graph": device.type == "cuda" and not args.no_graph,
        "fingerprint": fingerprint(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
