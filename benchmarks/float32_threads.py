"""ICLK(dtype="float32") with torch on one thread against two, on a shared machine.

100 starts of the 50 px affine cat problem, 20 iterations, aligned in one call: the
Gauss-Newton loop with torch set to 1 and to 2 threads, and ``ICLK.align`` as shipped (it runs
torch on one thread itself) with the caller at 2, interleaved in one process; median and best
of ``--repeats``.

Usage::

    python benchmarks/float32_threads.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from lkstn import ICLK
from lkstn.experiments.convergence import fixed_starts
from lkstn.experiments.problems import planar_problem
from lkstn.machine import fingerprint


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args(argv)
    prob = planar_problem((50, 50))
    starts = fixed_starts(prob.warp, prob.p_true, 5.0, (50, 50), 100, 0)
    aligner = ICLK(prob.template, prob.warp, n_iter=20, tol=0.0, dtype="float32")
    gauss_newton_align = super(ICLK, aligner).align  # the loop without ICLK's thread choice
    gauss_newton_align(prob.image, starts)
    times: dict = {"1 thread": [], "2 threads": [], "ICLK.align (caller at 2)": []}
    load = os.getloadavg()
    for _ in range(args.repeats):
        for threads, key in ((1, "1 thread"), (2, "2 threads")):
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            gauss_newton_align(prob.image, starts)
            times[key].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        aligner.align(prob.image, starts)  # torch at 2 threads outside
        times["ICLK.align (caller at 2)"].append(time.perf_counter() - t0)
    for key, v in times.items():
        print(f"{key}: median {1e3 * np.median(v):.1f} ms, best {1e3 * min(v):.1f} ms")
    print(f"load average {load} -> {os.getloadavg()}")
    cpu = fingerprint()["cpu"]
    print(f"CPU: {cpu['model_name']} (family {cpu['family']} model {cpu['model']}), "
          f"flags {' '.join(cpu['flags'])}, torch {torch.__version__}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
