"""Registration between two real photographs: the left and right views of a stereo pair.

``benchmarks/registration.py`` warps one photograph and changes its light or adds noise by
formula. Here the image is another photograph of the scene, taken by another camera: its own
noise, exposure, sensor and small differences of viewpoint. scikit-image ships one such pair
with its ground truth, ``data.stereo_motorcycle()`` (the Middlebury 2014 "Motorcycle" scene,
rectified): a pixel ``(x, y)`` of the left view is ``(x - d, y)`` in the right one, ``d`` the
given disparity.

Templates of 16, 32, 64 and 128 px are cut from the left view where the disparity over the
box is known everywhere and is a plane to within a quarter of the tolerance (``--max-spread``
0.25; least squares ``d = a + b u + c v`` over the box's pixels ``(u, v)``, every residual at
most that: 0.2 px at 16 px, 0.77 px at 128 px): a patch
of a planar surface, whose true warp into the right view is then the affine map ``(u, v) ->
(x0 + u - d(u, v), y0 + v)``, to within the residual. Boxes are random, textured (mean squared
gradient above a floor), at most a quarter overlapping one another, up to ``--boxes`` (8) per
size.
Starts, methods and the tolerance are ``benchmarks/registration.py``'s: the paper's corner
noise with sigma 1, 2.5 and 5 template pixels of a 50 px template, scaled to the size;
``ICLK.robust``, plain ``ICLK`` (50 iterations), OpenCV's ECC with its defaults and with
``gaussFiltSize=1``; converged when the corner error is under 2 % of the side + 0.5 px. A
column ``truth`` gives the percentage of boxes where ``ICLK.robust`` started at the true warp
ends within the tolerance: the disparity's own accuracy and the cost's minimum together. The
false positive and negative counts of each ICLK's ``converged`` are reported as in
``registration.py``; ``--accepted-wrong`` prints every wrong alignment ``ICLK.robust`` accepts.

Usage::

    python benchmarks/stereo_pair.py --seed 0 --out out/stereo_pair.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data
from skimage.color import rgb2gray
from skimage.util import img_as_float
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from registration import (  # noqa: E402
    METHODS,
    SIGMAS,
    add,
    confusion,
    ecc,
    iclk,
    machine,
    signal_rates,
    tolerance,
    verdict,
)  # fmt: skip

from lkstn.experiments.convergence import fixed_starts, safe_corner_error  # noqa: E402
from lkstn.pixels import params_from_pixel_matrix  # noqa: E402
from lkstn.warps import warp_from_name  # noqa: E402

SIZES = (16, 32, 64, 128)


def views() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left and right views (float64 grey in [0, 1]) and the left view's disparity (pixels)."""
    left, right, disparity = data.stereo_motorcycle()
    return rgb2gray(img_as_float(left)), rgb2gray(img_as_float(right)), disparity


def boxes(left, disparity, side: int, n: int, spread: float, rng) -> list[tuple]:
    """Up to ``n`` boxes ``(x, y, (a, b, c))`` of ``side`` px on planar, textured patches of
    the left view (``d = a + b u + c v`` the disparity's plane over the box), overlapping one
    another by at most a quarter of a box; from 4000 random tries."""
    H, W = left.shape
    gy, gx = np.gradient(left)
    energy = gx * gx + gy * gy
    v, u = np.mgrid[0:side, 0:side]
    design = np.stack([np.ones(side * side), u.ravel(), v.ravel()], 1).astype(float)
    found: list[tuple] = []
    margin = side // 4 + 2
    for _ in range(4000):
        if len(found) == n:
            break
        x = int(rng.integers(margin + 64, W - side - margin))  # the right view lies 60-70 px left
        y = int(rng.integers(margin, H - side - margin))
        d = disparity[y : y + side, x : x + side].ravel()
        if not np.isfinite(d).all():
            continue
        if energy[y : y + side, x : x + side].mean() < 2e-4:  # too flat to register
            continue
        plane = np.linalg.lstsq(design, d, rcond=None)[0]
        if np.abs(design @ plane - d).max() > spread:
            continue
        if any(overlap((x, y), (u0, v0), side) > 0.25 for u0, v0, _ in found):
            continue
        found.append((x, y, tuple(float(c) for c in plane)))
    return found


def overlap(a: tuple[int, int], b: tuple[int, int], side: int) -> float:
    """Shared area of two boxes of ``side`` px, as a fraction of one box."""
    dx, dy = max(0, side - abs(a[0] - b[0])), max(0, side - abs(a[1] - b[1]))
    return dx * dy / side**2


def run(args) -> list[dict]:
    left, right, disparity = views()
    cells = []
    for side in args.sizes:
        found = boxes(left, disparity, side, args.boxes, args.max_spread * tolerance(side),
                      np.random.default_rng([args.seed, side]))  # fmt: skip
        if not found:
            print(f"{side:4d}px: no planar, textured box found")
            continue
        for warp_name in args.warps:
            warp = warp_from_name(warp_name)
            for sigma in SIGMAS:
                t0 = time.perf_counter()
                hits, n, truth = dict.fromkeys(METHODS, 0), 0, 0
                signal: dict = {"ICLK.robust": {}, "ICLK": {}}
                for k, (x, y, (a, b, c)) in enumerate(found):
                    template = left[y : y + side, x : x + side]
                    M = np.array([[1.0 - b, -c, x - a], [0.0, 1.0, y], [0.0, 0.0, 1.0]])
                    p_true = params_from_pixel_matrix(warp, M, (side, side), right.shape)
                    seed = 1000 * args.seed + 10 * side + k
                    starts = fixed_starts(warp, p_true, sigma * side / 50, (side, side),
                                          args.n_trials, seed)  # fmt: skip
                    robust = iclk(template, right, warp, starts, True, {})
                    plain = iclk(template, right, warp, starts, False, {})
                    finals = {
                        "ICLK.robust": robust[0],
                        "ICLK": plain[0],
                        "ECC": ecc(template, right, warp, starts, 5),
                        "ECC-g1": ecc(template, right, warp, starts, 1),
                    }
                    target = np.broadcast_to(p_true, starts.shape)
                    for method, p in finals.items():
                        err = safe_corner_error(warp, p, target, (side, side))
                        hits[method] += int((err < tolerance(side)).sum())
                        if method in signal:  # its converged against the truth
                            _, stopped, score, spread = robust if method == "ICLK.robust" else plain
                            right_ = err < tolerance(side)
                            add(signal[method], confusion(right_, stopped, score, spread))
                        if method == "ICLK.robust" and args.accepted_wrong:
                            _, stopped, score, spread = robust
                            bad = ~(err < tolerance(side)) & stopped & (score >= 0.8)
                            bad &= spread <= 0.5
                            for e, c_, u in zip(err[bad], score[bad], spread[bad], strict=True):
                                print(f"    box {k} ({x}, {y}): accepted {e:.1f} px off, "
                                      f"score {c_:.3f}, uncertainty {u:.2f} px")  # fmt: skip
                    n += len(starts)
                    from_truth = iclk(template, right, warp, p_true[None], True, {})[0]
                    err = safe_corner_error(warp, from_truth, p_true[None], (side, side))
                    truth += int(err[0] < tolerance(side))
                pct = {m: round(100.0 * v / max(n, 1), 1) for m, v in hits.items()}
                cells.append({
                    "size": side, "warp": warp_name, "sigma": sigma, "variant": "stereo",
                    "boxes": len(found), "n": n, "percent_converged": pct,
                    "percent_truth_within": round(100.0 * truth / max(len(found), 1), 1),
                    "signal": signal,
                })  # fmt: skip
                print(f"{side:4d}px {warp_name:10s} sigma {sigma:<4g} boxes {len(found)} n={n:4d} "
                      + " ".join(f"{m} {v:5.1f}" for m, v in pct.items())
                      + f" truth {cells[-1]['percent_truth_within']:5.1f}"
                      f"  ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    return cells


def markdown(report: dict) -> str:
    lines = ["| size | warp | sigma | boxes | ICLK.robust | ICLK | ECC | ECC-g1 | truth |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in report["cells"]:
        p = c["percent_converged"]
        lines.append(f"| {c['size']} | {c['warp']} | {c['sigma']:g} | {c['boxes']} | "
                     + " | ".join(f"{p[m]:.1f}" for m in METHODS)
                     + f" | {c['percent_truth_within']:.1f} |")  # fmt: skip
    v = report["verdict"]
    lines.append(f"\nCells meeting the target: {v['cells_meeting_target']} of {v['cells']}.")
    lines += [f"- miss: {f}" for f in v["fails"]]
    for method, key in (("ICLK.robust", "0.8, u<=0.5"), ("ICLK", "0.5")):
        r = report["signal"][method][key]
        lines.append(f"\n{method} `converged` (min_score {key}): false positives "
                     f"{r['false_positive']} of {r['wrong']} wrong alignments, false negatives "
                     f"{r['false_negative']} of {r['right']} right ones.")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-trials", type=int, default=12, help="starts per box and cell")
    ap.add_argument("--boxes", type=int, default=8, help="boxes per size (at most)")
    ap.add_argument("--max-spread", type=float, default=0.25,
                    help="disparity off its plane, a fraction of the tolerance")  # fmt: skip
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--warps", default="affine,homography")
    ap.add_argument(
        "--accepted-wrong",
        action="store_true",
        help="print each wrong alignment that ICLK.robust's converged accepts",
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--table", type=Path, help="print the markdown table of a report, only")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return 0
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.warps = args.warps.split(",")
    cv2.setNumThreads(1)
    report = {"command": "python benchmarks/stereo_pair.py " + " ".join(argv or sys.argv[1:])}
    report["machine"] = machine()
    with threadpool_limits(1):
        cells = run(args)
    report.update(seed=args.seed, n_trials=args.n_trials, cells=cells, verdict=verdict(cells),
                  signal=signal_rates(cells))  # fmt: skip
    report["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
