"""Training steps per second of MNIST IC-STN-4(a) at batch 100 on a GPU: the authors' code
against lkstn eager and lkstn with CUDA graphs, side by side in one process.

Each variant runs what one iteration of its training loop runs, on batches of 100 random indices
into the same 60,000 random 28x28 "digits" held on the GPU:

reference
    ``benchmarks/reference_icstn.py`` (the authors' ``MNIST-pytorch`` step, ported as written):
    NumPy perturbations, their warp functions, eager forward and backward, SGD.
lkstn-eager
    :func:`lkstn.learned.train.train`'s loop with ``cuda_graph=False``: the batch drawn on the
    CPU and moved (:meth:`~lkstn.learned.streams.ClassificationData.batch`), forward and backward
    of :class:`~lkstn.learned.stn.AlignThenClassify` (:class:`~lkstn.learned.stn.ICSTN`), the
    NaN check, SGD (the paper's rates).
lkstn
    The same loop with ``cuda_graph=True``: forward and backward replayed from a
    CUDA graph (:class:`~lkstn.learned.accel.graphed.GraphedStep`), the next batch drawn while
    the GPU computes.

All variants run in plain float32 (cuDNN's TF32 off, as :func:`~lkstn.learned.train.train` runs)
unless ``--tf32``. The variants are interleaved over ``--rounds`` rounds of ``--steps`` steps
(the median round is reported, with its ratio to the reference), after ``--warmup`` steps each.
All three start from the same weights (the reference's); the tests check that they compute the
same function (``tests/learned/test_graphed.py``, ``benchmarks/train_step.py``'s check).

Usage (on a machine with a CUDA GPU)::

    python benchmarks/train_step_gpu.py --rounds 5 --steps 200 --out out/train_step_gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_icstn  # noqa: E402
from train_step import SHAPE, SIGMA_PX, copy_reference_weights  # noqa: E402

from lkstn.learned.accel.graphed import GraphedStep  # noqa: E402
from lkstn.learned.accel.shards import ShardedStep  # noqa: E402
from lkstn.learned.stn import ICSTN, AlignThenClassify  # noqa: E402
from lkstn.learned.streams import ClassificationData, step_generator  # noqa: E402
from lkstn.machine import fingerprint
from lkstn.warps import Homography  # noqa: E402


def lkstn_loop(ref, data: ClassificationData, graphed: bool):
    """``run(n)``: ``n`` iterations of :func:`lkstn.learned.train.train`'s loop body."""
    pred, clf = copy_reference_weights(ref)
    model = AlignThenClassify(ICSTN(pred, n_warps=4, template_shape=SHAPE), clf).to("cuda")
    groups = [{"params": pred.parameters(), "lr": 1e-4}, {"params": clf.parameters(), "lr": 1e-2}]
    optim = torch.optim.SGD(groups)
    step_fn = GraphedStep(model, data.loss) if graphed else ShardedStep(model, data.loss, 1)
    warp, state = Homography(), {"k": 0}

    def draw(k):
        return data.batch(warp, SHAPE, SIGMA_PX, 100, step_generator(0, k))

    def run(n: int) -> None:
        batch = draw(state["k"])
        for _ in range(n):
            optim.zero_grad(set_to_none=True)
            loss, _ = step_fn(batch)
            state["k"] += 1
            batch = draw(state["k"])
            if not torch.isfinite(loss):
                raise RuntimeError("non-finite loss")
            optim.step()
        torch.cuda.synchronize()

    return run


def reference_loop(ref, data: ClassificationData):
    gen = torch.Generator().manual_seed(1)

    def run(n: int) -> None:
        for _ in range(n):
            idx = torch.randint(data.images.shape[0], (100,), generator=gen).to("cuda")
            ref.step(data.images[idx], data.labels[idx])
        torch.cuda.synchronize()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", default="out/train_step_gpu.json")
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="let cuDNN use TF32 (PyTorch's default; train()'s is off)",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("train_step_gpu.py needs a CUDA GPU")
    torch.backends.cudnn.allow_tf32 = args.tf32  # every variant alike
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(60_000, 1, *SHAPE, generator=gen)
    labels = torch.randint(0, 10, (60_000,), generator=gen)
    data = ClassificationData(images, labels, images[:100], labels[:100]).to("cuda", torch.float32)
    ref = reference_icstn.make_reference(n_warps=4, batch=100, seed=0, device="cuda")
    variants = {
        "reference": reference_loop(ref, data),
        "lkstn-eager": lkstn_loop(ref, data, graphed=False),
        "lkstn": lkstn_loop(ref, data, graphed=True),
    }
    for run in variants.values():
        run(args.warmup)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run(args.steps)
            rates[name].append(args.steps / (time.perf_counter() - start))
    base = statistics.median(rates["reference"])
    result = {
        "machine": fingerprint(),
        "tf32": args.tf32,
        "rounds": args.rounds,
        "steps": args.steps,
        "results": {
            name: {
                "steps_per_s": statistics.median(r),
                "rounds": r,
                "ratio_to_reference": statistics.median(r) / base,
            }  # fmt: skip
            for name, r in rates.items()
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{result['machine']['gpu']}, torch {torch.__version__}, batch 100, median of "
          f"{args.rounds} rounds of {args.steps} steps")  # fmt: skip
    for name, res in result["results"].items():
        print(f"{name:12s} {res['steps_per_s']:8.1f} steps/s  {res['ratio_to_reference']:5.2f}x "
              "reference")  # fmt: skip


if __name__ == "__main__":
    main()
