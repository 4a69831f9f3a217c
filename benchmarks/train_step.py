"""Time one MNIST IC-STN-4(a) training step at batch 100: the authors' code against lkstn.

One step is what one iteration of a training loop runs: draw the batch's perturbations, zero the
gradients, the IC-STN forward (4 recurrences on the original image), the classifier on the final
warp, cross-entropy, backward, plain SGD step (predictor lr 1e-4, classifier lr 1e-2). All variants
run in this process on the same batch, start from the same weights (the reference's, copied into
:mod:`lkstn.learned.predictors` modules) and compute the same function; a check before timing runs
one forward/backward of each from the same ``p_init`` and prints the largest loss and gradient
differences.

Variants
--------
reference
    ``benchmarks/reference_icstn.py``: the authors' ``MNIST-pytorch`` step, ported as written.
lkstn-eager
    The same network built from :mod:`lkstn.learned.predictors`, with the straightforward warp
    path: :func:`lkstn.sampling.warp_image` and :meth:`lkstn.warps.Warp.compose` (validated public
    functions) in a plain loop, default ``nn.Conv2d``.
lkstn
    What :func:`lkstn.learned.train.train` runs: :class:`lkstn.learned.stn.ICSTN` (cached grid,
    its gradient in closed form, composition on matrices) inside
    :class:`~lkstn.learned.stn.AlignThenClassify`, with the fast CPU layers of
    :func:`lkstn.learned.accel.fast_cpu.fast_cpu_layers` (forward and input-gradient convolutions by
    NNPACK or oneDNN, weight gradients by one of three oneDNN routes, 2x2 max-pool by elementwise
    maxima or ``max_pool2d``, each chosen by measurement at its first call,
    :mod:`lkstn.learned.accel.kernels`; the choices are printed and written to the JSON as
    ``kernel_choices``) and, with ``T > 1`` threads, whichever of ``lkstn-shards`` and
    ``lkstn-processes`` and ``lkstn-1worker`` :func:`lkstn.learned.accel.shards.measured_workers`
    chose (``workers`` and ``processes`` in the JSON; the same step function as that variant,
    timed again).
lkstn-shards (``T > 1`` only)
    The batch cut into ``T`` shards whose forward and backward run in ``T`` threads of one
    intra-op thread each (:class:`lkstn.learned.accel.shards.ShardedStep`).
lkstn-processes (``T > 1``, Linux only)
    The same shards, shard 0 in this process and the others in forked worker processes of one
    intra-op thread each (:class:`lkstn.learned.accel.forked.ForkedStep`): no GIL between them.
lkstn-1worker (``T > 1`` only)
    One forward and backward of the whole batch on ``T`` intra-op threads.
lkstn-fixed
    ``lkstn`` with the kernels fixed as they were before the choice by measurement (NNPACK for
    forward and input-gradient convolutions, oneDNN's backward for the weight gradient,
    elementwise maxima for the pool), pinned around each of its steps and the measured choices
    restored after, so that the gain of measuring is timed interleaved in one process.
lkstn-plainconv
    ``lkstn`` with PyTorch's default ``nn.Conv2d``/``nn.MaxPool2d`` kernels and no shards, to
    separate the gains.
lkstn-compiled (``--compile``)
    ``torch.compile`` of the ``lkstn-plainconv`` loss (NNPACK ops have no fake-tensor kernels, so
    :class:`~lkstn.learned.accel.fast_cpu.FastConv2d` falls back to ``nn.Conv2d`` when traced);
    reports the compile time. Findings on the 2-core AMD EPYC dev machine (torch 2.13 CPU, gcc
    present): inductor works; the first step takes 50-60 s with a cold cache, ~12 s warm; it is
    ~1.3x faster than ``lkstn-plainconv`` but not faster than ``lkstn`` (also tried with the
    NNPACK convolution registered as a ``torch.library`` custom op so that it can be traced:
    16.2 vs 16.0 steps per CPU-second), so lkstn does not compile by default.

Timing: each thread count ``T`` runs in a fresh process. In it the variants are interleaved over
``--rounds`` rounds of ``--steps`` steps each (so that a change of machine load hits all of them;
each round sets the variant's intra-op thread count: ``T``, or 1 for the sharded ``lkstn``), and
the median steps/s over rounds is reported, with wall-clock and process CPU time. The machine's
load average is recorded before and after: other processes on a shared machine slow every
variant.

Usage::

    python benchmarks/train_step.py                       # threads 1 and 2, JSON to train_step.json
    python benchmarks/train_step.py --threads 2 --rounds 7 --steps 20 --out /tmp/ts.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_icstn  # noqa: E402

from lkstn.learned.accel.fast_cpu import fast_cpu_layers  # noqa: E402
from lkstn.learned.accel.forked import ForkedStep, fork_available  # noqa: E402
from lkstn.learned.accel.kernels import kernel_choices, pin_kernels  # noqa: E402
from lkstn.learned.accel.shards import (  # noqa: E402
    ShardedStep,
    intra_op_threads,
    measured_workers,
)
from lkstn.learned.predictors import mnist_classifier, mnist_predictor  # noqa: E402
from lkstn.learned.stn import ICSTN, AlignThenClassify  # noqa: E402
from lkstn.learned.streams import Batch  # noqa: E402
from lkstn.machine import fingerprint
from lkstn.perturb import perturbation  # noqa: E402
from lkstn.sampling import warp_image  # noqa: E402
from lkstn.warps import Homography  # noqa: E402

SHAPE = (28, 28)
SIGMA_PX = 0.25 * (SHAPE[1] - 1) / 2  # the reference's pertScale = transScale = 0.25 canonical


def copy_reference_weights(ref: reference_icstn.ReferenceICSTN) -> tuple:
    """lkstn predictor and classifier holding the reference's initial weights."""
    predictor, classifier = mnist_predictor("a"), mnist_classifier()
    g, c = ref.geometric, ref.classifier
    pairs = [
        (predictor.layers[0], g.conv2Layers[0]),
        (predictor.layers[2], g.conv2Layers[2]),
        (predictor.layers[6], g.linearLayers[0]),
        (predictor.layers[8], g.linearLayers[2]),
        (classifier.layers[0], c.conv2Layers[0]),
        (classifier.layers[3], c.linearLayers[0]),
    ]
    with torch.no_grad():
        for ours, theirs in pairs:
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
    return predictor, classifier


class EagerICSTN(torch.nn.Module):
    """IC-STN written the straightforward way with lkstn's public, validated warp functions."""

    def __init__(self, predictor, classifier, n_warps: int = 4) -> None:
        super().__init__()
        self.predictor, self.classifier, self.n_warps = predictor, classifier, n_warps
        self.warp = Homography()

    def forward(self, image, p_init):
        p = p_init
        for _ in range(self.n_warps):
            dp = self.predictor(warp_image(image, self.warp, p, SHAPE))
            p = self.warp.compose(dp, p)  # [LL17] eq. (10)
        return self.classifier(warp_image(image, self.warp, p, SHAPE))


def sgd(predictor, classifier):
    groups = [
        {"params": predictor.parameters(), "lr": 1e-4},
        {"params": classifier.parameters(), "lr": 1e-2},
    ]
    return torch.optim.SGD(groups)


def lkstn_step(
    model, predictor, classifier, images, labels, gen, loss_fn=None, workers=1, processes=False
):
    """A training step of an lkstn model: perturbation draw included, as in the reference.

    With ``workers > 1`` the forward and backward go through :class:`ShardedStep` (threads) or
    :class:`ForkedStep` (``processes``), as in :func:`lkstn.learned.train.train`.
    """
    optim = sgd(predictor, classifier)
    kind = ForkedStep if processes else ShardedStep
    sharded = kind(model, lambda out, b: F.cross_entropy(out, b.target), workers)

    def step():
        p_init = perturbation(Homography(), images.shape[0], SIGMA_PX, SHAPE, gen)
        optim.zero_grad()
        if loss_fn is None:
            loss, _ = sharded(Batch(images, p_init, labels))
        else:
            loss = loss_fn(images, p_init, labels)
            loss.backward()
        optim.step()
        return loss.detach()

    return step


def lkstn_models(ref) -> dict:
    """name -> (model(images, p_init) -> scores, predictor, classifier), weights of ``ref``."""
    out = {}
    pred, clf = copy_reference_weights(ref)
    out["lkstn-eager"] = (EagerICSTN(pred, clf), pred, clf)
    for name, fast in (("lkstn", True), ("lkstn-plainconv", False)):
        pred, clf = copy_reference_weights(ref)
        model = AlignThenClassify(ICSTN(pred, n_warps=4, template_shape=SHAPE), clf)
        out[name] = (fast_cpu_layers(model) if fast else model, pred, clf)
    return out


def check_same_function(seed: int, images, labels, threads: int) -> dict[str, dict[str, float]]:
    """Loss and gradient differences of each lkstn variant against the reference.

    Same weights (the predictor's last layer made non-zero so that every layer gets a gradient),
    same batch, same ``p_init``; with ``threads > 1`` also the sharded step (``lkstn``).
    """
    ref = reference_icstn.make_reference(n_warps=4, batch=images.shape[0], seed=seed)
    with torch.no_grad():
        last = ref.geometric.linearLayers[-1]
        last.weight.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(seed + 1))
    gen = torch.Generator().manual_seed(seed + 2)
    p_init = perturbation(Homography(), images.shape[0], SIGMA_PX, SHAPE, gen)
    warped = ref.geometric(ref.opt, images, p_init)[-1]
    ref_loss = F.cross_entropy(ref.classifier(ref.opt, warped), labels)
    ref_params = [*ref.geometric.parameters(), *ref.classifier.parameters()]
    ref_grads = torch.autograd.grad(ref_loss, ref_params)
    out = {}
    for name, (model, pred, clf) in lkstn_models(ref).items():
        loss = F.cross_entropy(model(images, p_init), labels)
        grads = torch.autograd.grad(loss, [*pred.parameters(), *clf.parameters()])
        rel = max(
            ((a - b).abs().max() / b.abs().max()).item()
            for a, b in zip(grads, ref_grads, strict=True)
        )
        out[name] = {"loss_diff": abs(loss.item() - ref_loss.item()), "grad_rel_diff": rel}
    if threads > 1:
        out["lkstn-1worker"] = out["lkstn"]
        kinds = {"lkstn-shards": ShardedStep}
        kinds.update({"lkstn-processes": ForkedStep} if fork_available() else {})
        for name, kind in kinds.items():
            model, pred, clf = lkstn_models(ref)["lkstn"]
            sharded = kind(model, lambda o, b: F.cross_entropy(o, b.target), threads)
            with intra_op_threads(1):
                loss, _ = sharded(Batch(images, p_init, labels))
            sharded.close()
            grads = [q.grad for q in [*pred.parameters(), *clf.parameters()]]
            rel = max(
                ((a - b).abs().max() / b.abs().max()).item()
                for a, b in zip(grads, ref_grads, strict=True)
            )
            out[name] = {"loss_diff": abs(loss.item() - ref_loss.item()), "grad_rel_diff": rel}
    return out


def fixed_kernel(key: str) -> str:
    """The kernel lkstn used for ``key`` before it chose by measurement."""
    if key.startswith("conv2d weight-grad"):
        return "backward"
    return "nnpack" if key.startswith("conv2d") else "maxima"


def with_fixed_kernels(step):
    """``step`` run with :func:`fixed_kernel` pinned for every key chosen so far (the variants
    before it in the warm-up made them), the measured choices restored after each call."""

    def run():
        measured = kernel_choices()
        pin_kernels({key: fixed_kernel(key) for key in measured})
        try:
            return step()
        finally:
            pin_kernels(measured)

    return run


def build(seed: int, with_compile: bool, threads: int):
    """name -> (step function, intra-op threads it runs with)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(100, 1, *SHAPE, generator=gen)
    labels = torch.randint(0, 10, (100,), generator=gen)
    ref = reference_icstn.make_reference(n_warps=4, batch=100, seed=seed)
    variants = {"reference": (lambda: ref.step(images, labels), threads)}
    for name, (model, pred, clf) in lkstn_models(ref).items():
        variants[name] = (lkstn_step(model, pred, clf, images, labels, gen), threads)
    workers, processes = 1, False
    if threads > 1:  # what train() does with threads > 1: shards or not, as measured here
        variants["lkstn-1worker"] = variants["lkstn"]
        for name, in_processes in (("lkstn-shards", False), ("lkstn-processes", True)):
            if in_processes and not fork_available():
                continue
            model, pred, clf = lkstn_models(ref)["lkstn"]
            step = lkstn_step(model, pred, clf, images, labels, gen, workers=threads,
                              processes=in_processes)  # fmt: skip
            variants[name] = (step, 1)
        model, pred, clf = lkstn_models(ref)["lkstn"]
        p_init = perturbation(Homography(), images.shape[0], SIGMA_PX, SHAPE, gen)
        loss = lambda out, b: F.cross_entropy(out, b.target)  # noqa: E731
        workers, processes = measured_workers(model, loss, Batch(images, p_init, labels))
        chosen = "lkstn-processes" if processes else "lkstn-shards"
        variants["lkstn"] = variants[chosen if workers > 1 else "lkstn-1worker"]
    model, pred, clf = lkstn_models(ref)["lkstn"]
    fixed = lkstn_step(model, pred, clf, images, labels, gen, workers=threads)
    variants["lkstn-fixed"] = (with_fixed_kernels(fixed), 1 if threads > 1 else threads)
    compile_s = None
    if with_compile:
        pred, clf = copy_reference_weights(ref)
        model = AlignThenClassify(ICSTN(pred, n_warps=4, template_shape=SHAPE), clf)
        compiled = torch.compile(lambda x, p, y: F.cross_entropy(model(x, p), y))
        step = lkstn_step(model, pred, clf, images, labels, gen, loss_fn=compiled)
        start = time.perf_counter()
        step()
        compile_s = time.perf_counter() - start
        variants["lkstn-compiled"] = (step, threads)
    return images, labels, variants, compile_s, (workers, processes)


def cpu_seconds() -> float:
    """CPU time of this process and of its live children (the workers of ``lkstn-processes``,
    read from ``/proc`` in clock ticks of usually 10 ms)."""
    total = time.process_time()
    for child in multiprocessing.active_children():
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(variants, rounds: int, steps: int, warmup: int) -> dict:
    for run, threads in variants.values():
        torch.set_num_threads(threads)
        for _ in range(warmup):
            run()
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (run, threads) in variants.items():
            torch.set_num_threads(threads)
            t0, c0 = time.perf_counter(), cpu_seconds()
            for _ in range(steps):
                run()
            wall[name].append(steps / (time.perf_counter() - t0))
            cpu[name].append(steps / max(cpu_seconds() - c0, 1e-9))
    return {
        name: {
            "steps_per_s": statistics.median(wall[name]),
            "steps_per_s_rounds": wall[name],
            "steps_per_cpu_s": statistics.median(cpu[name]),
            "intra_op_threads": variants[name][1],
        }
        for name in variants
    }


def worker(args) -> dict:
    """One thread count, in a fresh process (NNPACK sizes its thread pool once, at first use)."""
    torch.set_num_threads(args.threads[0])
    images, labels, variants, compile_s, (workers, processes) = build(
        args.seed, args.compile, args.threads[0]
    )
    check = check_same_function(args.seed, images, labels, args.threads[0])
    res = measure(variants, args.rounds, args.steps, args.warmup)
    return {"same_function_check": check, "compile_seconds": compile_s, "results": res,
            "kernel_choices": kernel_choices(), "workers": workers,
            "processes": processes}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--out", default="out/train_step.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    load_before = os.getloadavg()
    runs = {}
    for threads in args.threads:
        cmd = [sys.executable, __file__, "--worker", "--threads", str(threads),
               "--rounds", str(args.rounds), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--seed", str(args.seed)]  # fmt: skip
        cmd += ["--compile"] if args.compile else []
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        runs[str(threads)] = run = json.loads(done.stdout.strip().splitlines()[-1])
        if threads == args.threads[0]:
            for name, diff in run["same_function_check"].items():
                print(f"{name:18s} vs reference, same p_init: |loss diff| "
                      f"{diff['loss_diff']:.2e}, max relative gradient diff "
                      f"{diff['grad_rel_diff']:.2e}")  # fmt: skip
        if run["compile_seconds"] is not None:
            print(f"torch.compile ({threads} threads): first step (compilation) took "
                  f"{run['compile_seconds']:.1f} s")  # fmt: skip
        print(f"\nkernels chosen by measurement ({threads} thread(s) in the process):")
        for key, name in run["kernel_choices"].items():
            print(f"  {key:72s} -> {name}")
        res = run["results"]
        base = res["reference"]["steps_per_s"]
        print(f"\n{threads} thread(s), median of {args.rounds} rounds x {args.steps} steps:")
        for name, r in res.items():
            print(f"  {name:18s} {r['steps_per_s']:6.1f} steps/s  ({r['steps_per_s'] / base:4.2f}x "
                  f"reference)   {r['steps_per_cpu_s']:6.1f} steps per CPU-second")  # fmt: skip
    load_after = os.getloadavg()
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"({os.cpu_count()} CPUs)")  # fmt: skip
    report = {
        "benchmark": "MNIST IC-STN-4(a) training step, batch 100, CPU",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(),
        "fingerprint": fingerprint(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "args": vars(args),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
