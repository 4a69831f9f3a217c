"""Classical aligners (ICLK, LK, CompositionalLK) against OpenCV's ECC on the cat.

Convergence ([BM04] style, same perturbed starts for every method): affine and homography,
50x50 and 100x100 templates of the 100x100-pixel box ``CAT_BOX`` of ``skimage.data.chelsea()``,
sigma 1..10 template pixels; ICLK/LK/CLK beside ``cv2.findTransformECC`` (``gaussFiltSize=1``),
and ICLK with a pyramid beside ``cv2.findTransformECCMultiScale`` (same number of levels).

Speed: (a) 1,000 starts of the 50x50 affine problem, 20 iterations, through ONE batched ICLK call
against ECC aligning them one by one; (b) one 200x200 alignment, time per iteration of ICLK and
ECC. Both libraries run single-threaded by default (``--threads``), so the numbers compare
algorithms, not core counts.

ECC conventions: ECC estimates ``warpMatrix`` with ``template(x) ~ input(warpMatrix x)`` in the
PIXEL coordinates of each image; ``lkstn.experiments.problems.pixel_matrix`` converts our
canonical ``p`` to it and ``params_from_pixel_matrix`` back (unit-tested in
``tests/experiments/test_convergence.py``). Template and input may differ in size. ECC takes
float32 single-channel images; ``findTransformECCMultiScale`` converts its inputs to 8 bits
internally (``buildPyramidECC``), so it gets the images scaled to ``[0, 255]``. An ECC call that
raises (``StsNoConv``) leaves the start unchanged and counts as not converged.

Usage::

    python benchmarks/classical_vs_ecc.py --quick --out out/classical_vs_ecc.json
    python benchmarks/classical_vs_ecc.py --seed 0 --out out/classical_vs_ecc.json   # full
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from lkstn import ICLK, LK, AlignmentResult, CompositionalLK, Warp, corner_error
from lkstn.classical.pyramid import level_shape
from lkstn.experiments.convergence import evaluate, fixed_starts
from lkstn.experiments.problems import params_from_pixel_matrix, pixel_matrix, planar_problem
from lkstn.machine import fingerprint

MOTION = {"affine": cv2.MOTION_AFFINE, "homography": cv2.MOTION_HOMOGRAPHY}
HAS_MULTISCALE = hasattr(cv2, "findTransformECCMultiScale")


class ECC:
    """OpenCV ECC behind the Aligner interface: one ``cv2`` call per start, no batching."""

    def __init__(self, template, warp: Warp, n_iter=50, eps=1e-6, *, levels=1):
        self.warp, self.n_iter, self.eps, self.levels = warp, n_iter, eps, levels
        self.template_shape = template.shape[:2]
        self._scale = 255.0 if levels > 1 else 1.0  # the multiscale version quantises to 8 bits
        self._T = np.ascontiguousarray(template * self._scale, dtype=np.float32)

    def align(self, image, p_init, n_iter=None) -> AlignmentResult:
        n_iter = self.n_iter if n_iter is None else n_iter
        I = np.ascontiguousarray(image * self._scale, dtype=np.float32)
        p_init = np.asarray(p_init, dtype=np.float64).reshape(-1, self.warp.n_params)
        M0 = pixel_matrix(self.warp, p_init, self.template_shape, I.shape)  # (n, 3, 3)
        rows = 3 if self.warp.projective else 2
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, n_iter, self.eps)
        out, ok = M0.copy(), np.zeros(len(M0), bool)
        for i, M in enumerate(M0[:, :rows].astype(np.float32)):  # ECC has no batched form
            try:
                out[i, :rows] = self._one(I, M, criteria)
                ok[i] = True
            except cv2.error:  # StsNoConv: ECC gives up, the start stays
                pass
        p = params_from_pixel_matrix(self.warp, out, self.template_shape, I.shape)
        return AlignmentResult(np.stack([p_init, p]), None, ok)

    def _one(self, I, M, criteria):
        motion = MOTION[self.warp.name]
        if self.levels == 1:
            return cv2.findTransformECC(self._T, I, M, motion, criteria, None, 1)[1]
        params = cv2.ECCParameters()
        params.motionType, params.criteria = motion, criteria
        params.gaussFiltSize, params.nlevels = 1, self.levels
        return cv2.findTransformECCMultiScale(self._T, I, M, params)[1]


def _family(name: str) -> str:
    """A method's name without its numbers: ``ICLK-g3-gb-pyr2`` -> ``ICLK-g-gb-pyr``."""
    return re.sub(r"\d+(\.\d+)?", "", name)


def n_levels(template_shape, smallest=20) -> int:
    """Pyramid depth whose coarsest template keeps at least ``smallest`` pixels a side."""
    n = 1
    while min(level_shape(template_shape, n)) >= smallest:
        n += 1
    return n


def convergence(args) -> list[dict]:
    reports = []
    sizes = [(50, 50)] if args.quick else [(50, 50), (100, 100)]
    sigmas = [1, 3, 5, 7, 10] if args.quick else list(range(1, 11))
    for warp_name in ("affine", "homography"):
        for shape in sizes:
            prob = planar_problem(shape, warp=warp_name)
            T, w, L = prob.template, prob.warp, n_levels(shape)
            kw = dict(n_iter=args.n_iter)
            gs, g = args.gradient_sigma, f"{args.gradient_sigma:g}"
            methods = {
                "ICLK": ICLK(T, w, **kw),
                "LK": LK(T, w, **kw),
                "CLK": CompositionalLK(T, w, **kw),
                "ECC": ECC(T, w, **kw),
                f"ICLK-pyr{L}": ICLK(T, w, pyramid=L, **kw),
                # smoothed steepest-descent images (ICLK's gradient_sigma, template pixels)
                f"ICLK-g{g}": ICLK(T, w, gradient_sigma=gs, **kw),
                f"ICLK-g{g}-pyr{L}": ICLK(T, w, pyramid=L, gradient_sigma=gs, **kw),
                # offset and gain projected out (ICLK's photometric), ECC's invariance
                "ICLK-gb": ICLK(T, w, photometric="gain-bias", **kw),
                f"ICLK-g{g}-gb": ICLK(T, w, gradient_sigma=gs, photometric="gain-bias", **kw),
                f"ICLK-g{g}-gb-pyr{L}": ICLK(
                    T, w, pyramid=L, gradient_sigma=gs, photometric="gain-bias", **kw
                ),
            }
            if HAS_MULTISCALE:
                methods[f"ECC-ms{L}"] = ECC(T, w, levels=L, **kw)
            if args.methods:
                keep = args.methods.split(",")
                methods = {k: m for k, m in methods.items() if _family(k) in keep}
            image = prob.image * args.gain + args.bias  # relit: the template is unchanged
            rep = evaluate(
                methods, image, prob.p_true, shape, sigmas, args.n_trials, seed=args.seed
            )
            print(
                f"\n== {warp_name} {shape[0]}x{shape[1]}: % converged (median final corner error)"
            )
            print(rep.table())
            reports.append(rep.to_dict())
    if not HAS_MULTISCALE:
        print(
            "\ncv2.findTransformECCMultiScale is missing in this OpenCV: no multiscale comparison"
        )
    return reports


def _best_of(fn, repeats) -> np.ndarray:
    """Smallest ``(wall, cpu)`` seconds over ``repeats`` calls. Both methods run on one thread,
    so process CPU time measures their work even on a machine that others load."""
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return np.min(times, axis=0)


def speed(args) -> dict:
    out = {}
    prob = planar_problem((50, 50))
    n = 200 if args.quick else 1000
    p0 = fixed_starts(prob.warp, prob.p_true, 3.0, (50, 50), n, args.seed)
    smoothed = dict(gradient_sigma=args.gradient_sigma, photometric="gain-bias")
    for label, tol, eps in [("fixed 20 iterations", 0.0, -1.0), ("early stopping", 1e-4, 1e-6)]:
        ecc = ECC(prob.template, prob.warp, 20, eps)
        t_ecc = _best_of(lambda: ecc.align(prob.image, p0), 3) / n  # noqa: B023
        ok_e = corner_error(prob.warp, ecc.align(prob.image, p0).p, prob.p_true, (50, 50)) < 1
        r = out[f"batch {n} x 50x50 affine, {label}"] = {
            "ecc_ms_per_alignment_wall_cpu": (1e3 * t_ecc).tolist(),
            "ecc_percent_converged": 100 * ok_e.mean(),
        }
        variants = (  # the plain IC-LK, and the options that converge as often as ECC
            ("iclk", "float64", {}),
            ("iclk_float32", "float32", {}),
            ("iclk_g_gb_float32", "float32", smoothed),
        )
        for key, dtype, options in variants:
            iclk = ICLK(prob.template, prob.warp, n_iter=20, tol=tol, dtype=dtype, **options)
            t_iclk = _best_of(lambda: iclk.align(prob.image, p0), 3) / n  # noqa: B023
            res = iclk.align(prob.image, p0)
            ok_i = corner_error(prob.warp, res.p, prob.p_true, (50, 50)) < 1
            r[f"{key}_ms_per_alignment_wall_cpu"] = (1e3 * t_iclk).tolist()
            r[f"ecc_over_{key}_wall_cpu"] = ratio = (t_ecc / t_iclk).tolist()
            r[f"{key}_percent_converged"] = 100 * ok_i.mean()
            name = f"ICLK {dtype}" + (f" g{args.gradient_sigma:g}-gb" if options else "")
            print(
                f"{label:>20}: {name} {1e3 * t_iclk[0]:.3f} ms/alignment (cpu "
                f"{1e3 * t_iclk[1]:.3f}), ECC {1e3 * t_ecc[0]:.3f} ms (cpu {1e3 * t_ecc[1]:.3f}) "
                f"-> ICLK {ratio[0]:.1f}x faster (cpu {ratio[1]:.1f}x)"
            )
    big = planar_problem((200, 200), box=(125, 50, 324, 249))
    p1 = fixed_starts(big.warp, big.p_true, 2.0, (200, 200), 1, args.seed)
    iclk, ecc = ICLK(big.template, big.warp, tol=0.0), ECC(big.template, big.warp, eps=-1.0)
    per = {}
    for name, m in (("iclk", iclk), ("ecc", ecc)):
        t_lo = _best_of(lambda: m.align(big.image, p1, n_iter=10), 5)  # noqa: B023
        t_hi = _best_of(lambda: m.align(big.image, p1, n_iter=50), 5)  # noqa: B023
        per[name] = {  # marginal cost of an iteration: fixed per-call work cancels
            "ms_per_iteration_wall_cpu": (1e3 * (t_hi - t_lo) / 40).tolist(),
            "ms_total_50_wall_cpu": (1e3 * t_hi).tolist(),
        }
    ratio = np.divide(
        per["iclk"]["ms_per_iteration_wall_cpu"], per["ecc"]["ms_per_iteration_wall_cpu"]
    )
    per["iclk_over_ecc_per_iteration_wall_cpu"] = ratio.tolist()
    out["single 200x200 affine"] = per
    i, e = per["iclk"]["ms_per_iteration_wall_cpu"], per["ecc"]["ms_per_iteration_wall_cpu"]
    print(
        f"200x200: ICLK {i[0]:.3f} ms/iteration (cpu {i[1]:.3f}), ECC {e[0]:.3f} ms/iteration "
        f"(cpu {e[1]:.3f}) -> ICLK/ECC = {ratio[0]:.2f} (cpu {ratio[1]:.2f})"
    )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small version (about a minute)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--n-trials", type=int, default=None, help="starts per sigma (100; quick 20)"
    )
    parser.add_argument(
        "--n-iter", type=int, default=50, help="iterations (per level) in the convergence runs"
    )
    parser.add_argument(
        "--methods",
        default="",
        help="comma list of ICLK,LK,CLK,ECC,ICLK-pyr,ECC-ms,ICLK-g,ICLK-g-pyr,ICLK-gb,ICLK-g-gb,"
        "ICLK-g-gb-pyr (names without their numbers; default all)",
    )
    parser.add_argument(
        "--gradient-sigma",
        type=float,
        default=3.0,
        help="ICLK's gradient_sigma in the ICLK-g* methods (template pixels)",
    )
    parser.add_argument("--threads", type=int, default=1, help="BLAS and OpenCV threads")
    parser.add_argument(
        "--gain", type=float, default=1.0, help="convergence runs: image = gain * cat + bias"
    )
    parser.add_argument("--bias", type=float, default=0.0, help="see --gain")
    parser.add_argument("--skip-convergence", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("out/classical_vs_ecc.json"))
    args = parser.parse_args(argv)
    args.n_trials = args.n_trials or (20 if args.quick else 100)
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)  # ICLK(dtype="float32") samples with torch
    started = time.time()
    result = {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": {
            **fingerprint(),
            "threads": args.threads,
            "load_average_at_start": list(os.getloadavg()),
        },
        "versions": {"numpy": np.__version__, "opencv": cv2.__version__},
        "seed": args.seed,
        "n_trials": args.n_trials,
        "n_iter": args.n_iter,
        "gradient_sigma": args.gradient_sigma,
        "gain": args.gain,
        "bias": args.bias,
    }
    with threadpool_limits(limits=args.threads):
        if not args.skip_convergence:
            result["convergence"] = convergence(args)
        if not args.skip_speed:
            print("\n== speed (best of repeats; single process)")
            result["speed"] = speed(args)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    result["seconds"] = time.time() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    print(f"\nwrote {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
