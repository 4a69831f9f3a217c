"""Time per alignment against the batch size: ICLK's batched call against OpenCV's ECC.

ICLK aligns a batch of starts in one vectorised call, so its fixed per-call work (the Python
loop, allocating the sampling grid) is shared by the batch; ECC aligns one start per call, so
its time per alignment does not depend on the batch. The 50x50 affine cat problem of
``classical_vs_ecc.py``, starts at sigma 3 template pixels, 20 iterations without early
stopping (``tol=0``; ECC ``eps<0``), one thread for both, best of ``--repeats`` wall times.

Usage::

    python benchmarks/batch_size.py --out docs/figures/benchmarks/batch_size.json
    python docs/make_figures.py   # draws docs/figures/benchmarks/time_vs_batch.png from it
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from classical_vs_ecc import ECC  # noqa: E402

from lkstn import ICLK  # noqa: E402
from lkstn.experiments.convergence import fixed_starts  # noqa: E402
from lkstn.experiments.problems import planar_problem  # noqa: E402
from lkstn.machine import fingerprint

BATCHES = (1, 3, 10, 30, 100, 300, 1000)
N_ITER = 20


def best_wall(fn, repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(repeats: int, seed: int) -> dict:
    prob = planar_problem((50, 50))
    starts = fixed_starts(prob.warp, prob.p_true, 3.0, (50, 50), max(BATCHES), seed)
    aligners = {
        "ICLK float64": ICLK(prob.template, prob.warp, n_iter=N_ITER, tol=0.0),
        "ICLK float32": ICLK(prob.template, prob.warp, n_iter=N_ITER, tol=0.0, dtype="float32"),
    }
    for aligner in aligners.values():  # warm up (imports, torch's first grid_sample)
        aligner.align(prob.image, starts[:10])
    out: dict[str, dict[int, float]] = {name: {} for name in aligners}
    for n in BATCHES:
        for name, aligner in aligners.items():
            seconds = best_wall(lambda a=aligner, n=n: a.align(prob.image, starts[:n]), repeats)
            out[name][n] = 1e3 * seconds / n
        print(", ".join(f"{k} {v[n]:.3f} ms" for k, v in out.items()) + f" per alignment, n={n}")
    ecc = ECC(prob.template, prob.warp, N_ITER, eps=-1.0)
    n_ecc = 100  # one call per start: the batch changes nothing
    ecc_ms = 1e3 * best_wall(lambda: ecc.align(prob.image, starts[:n_ecc]), repeats) / n_ecc
    out["ECC"] = dict.fromkeys(BATCHES, ecc_ms)
    print(f"ECC {ecc_ms:.3f} ms per alignment (measured on {n_ecc} starts)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/batch_size.json"))
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    started = time.time()
    result = {
        "command": " ".join(["batch_size.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {**fingerprint(), "threads": 1, "load_average_at_start": list(os.getloadavg())},
        "problem": f"50x50 affine cat, sigma 3 px, {N_ITER} iterations, no early stopping",
    }
    with threadpool_limits(limits=1):
        result["ms_per_alignment"] = measure(args.repeats, args.seed)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    result["seconds"] = time.time() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    return 0
