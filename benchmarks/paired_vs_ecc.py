"""Trial by trial: which starts ICLK brings in that ECC does not, and the other way round.

    python benchmarks/paired_vs_ecc.py --warp affine --size 100 --sigmas 4 5 6 7 --seeds 0 2 \
        [--n-trials 500] [--gradient-sigma 3] [--photometric gain-bias]

``benchmarks/classical_vs_ecc.py`` reports percentages per cell; where two methods are close
(the affine 100x100 template at sigma 4-6) the paired counts say whether they converge on the
same starts or on different ones. Same problem, same fixed starts (``fixed_starts``, seeded by
``(seed, sigma)``), same 50 iterations and ECC settings as the benchmark. Prints, per seed and
sigma: converged by ICLK, by ECC, by both, by ICLK only and by ECC only; first, the machine
(:func:`lkstn.machine.fingerprint`: CPU, cores, load) the counts were made on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

from lkstn import ICLK
from lkstn.experiments.convergence import fixed_starts, safe_corner_error
from lkstn.experiments.problems import planar_problem
from lkstn.machine import fingerprint
from lkstn.result import CONVERGED_PX

sys.path.insert(0, str(Path(__file__).resolve().parent))
from classical_vs_ecc import ECC  # noqa: E402  (the benchmark's adapter, not a copy)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warp", default="affine", choices=["affine", "homography"])
    parser.add_argument("--size", type=int, default=100, help="template side, pixels")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[4.0, 5.0, 6.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--n-trials", type=int, default=500)
    parser.add_argument("--n-iter", type=int, default=50)
    parser.add_argument("--gradient-sigma", type=float, default=3.0)
    parser.add_argument("--photometric", default="gain-bias", choices=["none", "bias", "gain-bias"])
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    shape = (args.size, args.size)
    prob = planar_problem(shape, warp=args.warp)
    photometric = None if args.photometric == "none" else args.photometric
    iclk = ICLK(
        prob.template, prob.warp, n_iter=args.n_iter, gradient_sigma=args.gradient_sigma,
        photometric=photometric,
    )  # fmt: skip
    ecc = ECC(prob.template, prob.warp, n_iter=args.n_iter)
    fp = fingerprint()
    print(f"machine: {fp['cpu']['model_name']}, {fp['cores']} cores, load {fp['load_average']}")
    print(f"{args.warp} {args.size}x{args.size}, {args.n_trials} starts, {iclk!r} against ECC")
    for seed in args.seeds:
        for sigma in args.sigmas:
            p0 = fixed_starts(prob.warp, prob.p_true, sigma, shape, args.n_trials, seed)
            ok = {
                name: safe_corner_error(prob.warp, m.align(prob.image, p0).p, prob.p_true, shape)
                < CONVERGED_PX
                for name, m in (("ICLK", iclk), ("ECC", ecc))
            }
            i, e = ok["ICLK"], ok["ECC"]
            print(
                f"seed {seed} sigma {sigma:g}: ICLK {i.sum()}, ECC {e.sum()}, both {(i & e).sum()}"
                f", ICLK only {(i & ~e).sum()}, ECC only {(e & ~i).sum()}"
            )


if __name__ == "__main__":
    main()
