"""How far the MNIST IC-STN-4(a) training step is from this CPU's limit, and where its time goes.

The step of ``benchmarks/train_step.py`` (batch 100, 4 recurrences, classifier, cross-entropy,
backward) is measured three ways in one process:

1. its floating-point work: ``torch.utils.flop_counter.FlopCounterMode`` over one forward and
   backward (convolutions and matrix products; ``grid_sample``, ReLU, pooling and the
   elementwise ops are not counted: they are memory-bound and small in FLOPs);
2. this CPU's throughput on that kind of work, measured now: a float32 ``2048^3`` matrix product
   (the machine's peak for dense work) and the step's own convolutions run alone at batch 100
   (forward, input gradient and weight gradient, as PyTorch's default kernels compute them), at
   1 and 2 threads;
3. the step's time and the ``torch.profiler`` table of its kernels at 1 thread.

The *ceiling* is the step's FLOPs over the matmul peak: the steps/s no implementation of this
network can beat on this CPU; the conv-shaped throughput says how much of that peak such small
convolutions (1-8 channels) can reach at all. Prints JSON with the CPU model and load average.

Usage::

    python benchmarks/train_step_ceiling.py --out ceiling.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lkstn.learned.predictors import mnist_classifier, mnist_predictor
from lkstn.learned.stn import ICSTN, AlignThenClassify
from lkstn.learned.streams import step_generator
from lkstn.machine import fingerprint
from lkstn.perturb import perturbation
from lkstn.warps import Homography


def model_and_batch():
    gen = torch.Generator().manual_seed(0)
    aligner = ICSTN(mnist_predictor("a", generator=gen), n_warps=4, template_shape=(28, 28))
    model = AlignThenClassify(aligner, mnist_classifier(generator=gen))
    images = torch.rand(100, 1, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (100,), generator=gen)
    p_init = perturbation(Homography(), 100, 3.375, (28, 28), step_generator(0, 0))
    return model, images, p_init.float(), labels


def step(model, images, p_init, labels) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images, p_init), labels).backward()


def seconds_per_call(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def conv_throughput(model, images, p_init) -> tuple[float, float]:
    """FLOPs and seconds of the step's convolutions alone (fwd + both gradients), batch 100."""
    shapes = []

    def hook(mod, inp, out):
        shapes.append((mod, inp[0].detach().clone()))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
    with torch.no_grad():
        model(images, p_init)
    for h in handles:
        h.remove()
    total_flops, total_s = 0.0, 0.0
    for mod, x in shapes:
        x = x.requires_grad_()

        def run(mod=mod, x=x):
            y = F.conv2d(x, mod.weight, mod.bias)
            torch.autograd.grad(y.sum(), [x, mod.weight])

        with FlopCounterMode(display=False) as fc:
            run()
        total_flops += fc.get_total_flops()
        total_s += seconds_per_call(run, 20)
    return total_flops, total_s


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from sweep_step import cpu_model  # same folder

    model, images, p_init, labels = model_and_batch()
    with FlopCounterMode(display=False) as fc:
        step(model, images, p_init, labels)
    flops = fc.get_total_flops()
    result = {"cpu": cpu_model(), "fingerprint": fingerprint(), "torch": torch.__version__,
              "load_before": os.getloadavg()[0], "step_gflop_fwd_bwd": flops / 1e9,
              "threads": {}}  # fmt: skip
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        peak = 2 * 2048**3 / seconds_per_call(lambda: a @ b, 3)
        conv_flops, conv_s = conv_throughput(model, images, p_init)
        t = seconds_per_call(lambda: step(model, images, p_init, labels), 10)
        result["threads"][threads] = {
            "matmul_gflops": peak / 1e9,
            "conv_layers_gflops": conv_flops / conv_s / 1e9,
            "ceiling_steps_per_s_at_matmul_peak": peak / flops,
            "ceiling_steps_per_s_at_conv_throughput": conv_flops / conv_s / flops,
            "plain_step_steps_per_s": 1 / t,
        }
    torch.set_num_threads(1)
    with torch.profiler.profile() as prof:
        for _ in range(5):
            step(model, images, p_init, labels)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    result["load_after"] = os.getloadavg()[0]
    print(table)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({**result, "profile_1_thread": table}, indent=2))
    return result


if __name__ == "__main__":
    main()
