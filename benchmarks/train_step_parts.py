"""Parts of the MNIST IC-STN-4(a) training step on one CPU thread, and what limits two shards.

Times, in one process on one intra-op thread (median of 7 rounds, ms):

- the 2x2 pool of the predictor, forward and backward: ``max_pool2d`` against lkstn's maxima
  kernel (``lkstn.learned.accel.fast_cpu``);
- one sampling grid of a batch of 100 homographies, forward and backward: its closed-form
  gradient (``WarpSampler.grid_of`` on the CPU) against autograd through the same formula
  (``lkstn.sampling.warped_grid``);
- the weight gradient of the 4->8 convolution by each candidate of ``fast_cpu._weight_grad``;
- whole lkstn training steps (``benchmarks/train_step.py``'s ``lkstn`` step, fast layers) at
  batch 2, 50 and 100, and two 50-sample steps at once in two threads (started for each call,
  and kept in a pool as :class:`~lkstn.learned.accel.shards.ShardedStep` keeps them): the fixed
  cost per step and what two shards lose to each other;
- the 50-sample step alone in a fresh process, and in two such processes at once (each on one
  thread): what two shards lose to each other without sharing a process (its GIL, allocator
  and page tables).

Prints a table and writes JSON with ``lkstn.machine.fingerprint()``.

Usage::

    python benchmarks/train_step_parts.py --out out/train_step_parts.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_icstn  # noqa: E402
import train_step  # noqa: E402

from lkstn.learned.accel import fast_cpu  # noqa: E402
from lkstn.learned.torch_warp import WarpSampler  # noqa: E402
from lkstn.machine import fingerprint  # noqa: E402
from lkstn.sampling import warped_grid  # noqa: E402
from lkstn.warps import Homography  # noqa: E402


def median_ms(fn, calls: int = 20, rounds: int = 7) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times)


def pool_parts() -> dict[str, float]:
    x = torch.relu(torch.randn(100, 8, 16, 16)).requires_grad_()
    g = torch.randn(100, 8, 8, 8)
    return {
        "pool max_pool2d fwd+bwd": median_ms(lambda: F.max_pool2d(x, 2).backward(g)),
        "pool maxima fwd+bwd": median_ms(lambda: fast_cpu._MaxPool2x2Function.apply(x).backward(g)),
    }


def grid_parts() -> dict[str, float]:
    sampler = WarpSampler(Homography(), (28, 28))
    p = 0.05 * torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    M = sampler.matrix(p).requires_grad_()
    g = torch.randn(100, 28, 28, 2)

    def autograd_grid():
        xy = warped_grid(M, sampler.grid, projective=True, shape=(28, 28))
        xy.permute(1, 2, 0).reshape(-1, 28, 28, 2).backward(g)

    return {
        "grid closed-form fwd+bwd": median_ms(lambda: sampler.grid_of(M).backward(g)),
        "grid autograd fwd+bwd": median_ms(autograd_grid),
    }


def weight_grad_parts() -> dict[str, float]:
    x, g, w = torch.randn(100, 4, 22, 22), torch.randn(100, 8, 16, 16), torch.randn(8, 4, 7, 7)
    out = {}
    for name in ("backward", "batch-correlation", "backward-channels-last"):
        out[f"weight-grad 4->8 {name}"] = median_ms(
            lambda n=name: _weight_grad_by(n, x, g, w), calls=10
        )
    return out


def _weight_grad_by(name: str, x, g, w):
    from lkstn.learned.accel.kernels import pin_kernels, thread_key

    shapes = f"x={tuple(x.shape)} g={tuple(g.shape)}"
    pin_kernels({thread_key("conv2d weight-grad", shapes, "float32"): name})
    return fast_cpu._weight_grad(x, g, w)


def step_parts() -> dict[str, float]:
    steps, out = {}, {}
    for batch in (2, 50, 100):
        gen = torch.Generator().manual_seed(0)
        images = torch.rand(batch, 1, 28, 28, generator=gen)
        labels = torch.randint(0, 10, (batch,), generator=gen)
        ref = reference_icstn.make_reference(n_warps=4, batch=batch, seed=0)
        runs = []
        for i in range(2 if batch == 50 else 1):
            model, pred, clf = train_step.lkstn_models(ref)["lkstn"]
            step_gen = torch.Generator().manual_seed(i)
            runs.append(train_step.lkstn_step(model, pred, clf, images, labels, step_gen))
        steps[batch] = runs
        out[f"step batch {batch}"] = median_ms(runs[0], calls=5)

    def both() -> None:
        threads = [threading.Thread(target=_one_thread, args=(run,)) for run in steps[50]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    out["two steps of batch 50, two new threads"] = median_ms(both, calls=5)
    with ThreadPoolExecutor(2, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        out["two steps of batch 50, a pool of two"] = median_ms(
            lambda: list(pool.map(lambda run: run(), steps[50])), calls=5
        )
    return out


def process_parts() -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one-step"]
    alone = float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    both = [float(p.communicate()[0]) for p in procs]
    return {
        "step batch 50, a process alone": alone,
        "step batch 50, two processes at once": statistics.mean(both),
    }


def one_step() -> float:
    """The 50-sample step, timed in this process (``--one-step``: one of process_parts')."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(50, 1, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (50,), generator=gen)
    ref = reference_icstn.make_reference(n_warps=4, batch=50, seed=0)
    model, pred, clf = train_step.lkstn_models(ref)["lkstn"]
    run = train_step.lkstn_step(model, pred, clf, images, labels, torch.Generator().manual_seed(0))
    return median_ms(run, calls=5, rounds=15)


def _one_thread(run) -> None:
    torch.set_num_threads(1)
    run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/train_step_parts.json")
    parser.add_argument("--one-step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.one_step:
        print(one_step())
        return
    parts = (pool_parts, grid_parts, weight_grad_parts, step_parts, process_parts)
    results = {k: v for part in parts for k, v in part().items()}
    for name, ms in results.items():
        print(f"  {name:40s} {ms:7.2f} ms")
    report = {"benchmark": "parts of the MNIST IC-STN-4(a) step, one thread",
              "ms": results, "fingerprint": fingerprint()}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
