"""Registration of photographs lkstn never saw: ``ICLK.robust`` against plain ICLK and OpenCV's ECC.

Problems: templates of 16, 32, 64 and 128 px cut at native scale (no resizing) from scikit-image
photographs, each at the most textured of a few random boxes; affine and homography; starts
perturbed by the paper's noise model with ``sigma`` given for a 50 px template and scaled to the
template (``sigma * side / 50`` template pixels); three variants of the image: ``clean``,
``relit`` (gain and offset) and ``noisy`` (Gaussian noise); the template is always cut from the
clean photograph. Methods, on the same starts: ``ICLK.robust``, plain ``ICLK`` (the paper's
IC-LK, 50 iterations), ``cv2.findTransformECC`` with OpenCV's defaults (50 iterations, eps 1e-3,
``gaussFiltSize=5``) and with ``gaussFiltSize=1``. An alignment has *converged* when its corner
error is under 2 % of the template side + 0.5 px. Each cell also gives the percentage of
starts already within that tolerance (``start``): what a method that does not move scores;
and ``minimum``: the percentage of starts on photos where ``ICLK.robust`` started at the truth
itself ends within it, i.e. where the cost's own minimum near the truth is close enough to count
(on a noisy image with little texture it is not: a method that minimises the cost then misses
from every start, and only one that stops before the minimum can score).

It also measures the success signal: the ICLK aligners' own ``converged`` (small last step,
finite, and ``score >= min_score``) against that ground truth, for a range of ``min_score``:
false positive rate ``P(converged | wrong)`` and false negative rate ``P(not converged | right)``;
and, at ``min_score`` 0.8, for a range of ``max_uncertainty`` (the predicted corner spread,
:mod:`lkstn.classical.uncertainty`).

``--timing`` aligns one pair at a time (one image, one start: what the CLI and a tracker do) at
64, 128 and 256 px (``--timing-sizes``), ICLK.robust (built for a new template + alignment;
called again for the same template, which returns the aligner it kept + alignment; alignment
alone; alignment started at the true warp, which moves nothing: the cost of the stages in
themselves) and ECC interleaved in one process, one thread each. Beside the medians in ms it
reports each alignment's time over that of the ECC calls made just after it (``ratio``: median
and quartiles over pairs and repeats), which a machine whose speed drifts over seconds moves
less than a ratio of medians.

ECC conventions: ``warpMatrix`` maps template pixels to image pixels
(``lkstn.pixels.pixel_matrix``); an ECC call that raises leaves the start.

Usage::

    python benchmarks/registration.py --quick --out out/registration_quick.json
    python benchmarks/registration.py --seed 1 --out out/registration.json    # full, ~25 min
    python benchmarks/registration.py --timing --out out/registration_timing.json
    python benchmarks/registration.py --table out/registration.json   # the docs' tables
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
import skimage
from skimage import data
from skimage.color import rgb2gray
from skimage.util import img_as_float
from threadpoolctl import threadpool_limits

from lkstn import ICLK, warp_image
from lkstn.classical.iclk import clear_built
from lkstn.classical.robust import robust_settings
from lkstn.experiments.convergence import fixed_starts, safe_corner_error
from lkstn.machine import fingerprint
from lkstn.pixels import params_from_pixel_matrix, pixel_matrix
from lkstn.score import zncc
from lkstn.warps import warp_from_name

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "brick", "coins", "text")
SIZES = (16, 32, 64, 128)
SIGMAS = (1.0, 2.5, 5.0)  # template pixels of a 50 px template, scaled to each size
VARIANTS = ("clean", "relit", "noisy")
THRESHOLDS = (-1.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
UNCERTAINTIES = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0)  # max_uncertainty, template pixels
METHODS = ("ICLK.robust", "ICLK", "ECC", "ECC-g1")
MOTION = {"affine": cv2.MOTION_AFFINE, "homography": cv2.MOTION_HOMOGRAPHY}


def photo(name: str) -> np.ndarray:
    """A scikit-image photograph as float64 grey in [0, 1]."""
    image = img_as_float(getattr(data, name)())
    return rgb2gray(image[..., :3]) if image.ndim == 3 else image


def variant(image: np.ndarray, name: str, seed: int) -> np.ndarray:
    """The image the template is registered to: clean, relit or noisy."""
    if name == "relit":
        return 0.6 * image + 0.25  # less contrast, brighter
    if name == "noisy":
        return image + np.random.default_rng(seed).normal(0.0, 0.05, image.shape)
    return image


def tolerance(side: int) -> float:
    """Corner error (px) under which an alignment has converged."""
    return 0.02 * side + 0.5


def texture_box(image: np.ndarray, side: int, rng) -> tuple[int, int] | None:
    """Top-left ``(x, y)`` of the most textured of 12 random boxes (smallest eigenvalue of the
    structure tensor), a quarter side from the border; None if the photo is too small."""
    H, W = image.shape
    m = max(4, side // 4)
    if min(H, W) < side + 2 * m:
        return None
    gy, gx = np.gradient(image)
    best, score = None, -1.0
    for _ in range(12):
        x, y = int(rng.integers(m, W - side - m + 1)), int(rng.integers(m, H - side - m + 1))
        a, b = gx[y : y + side, x : x + side], gy[y : y + side, x : x + side]
        tensor = np.array([[(a * a).sum(), (a * b).sum()], [(a * b).sum(), (b * b).sum()]])
        s = np.linalg.eigvalsh(tensor)[0]
        if s > score:
            best, score = (x, y), s
    return best


def truth(warp, box: tuple[int, int], side: int, image_shape) -> np.ndarray:
    """Canonical ``p`` of a template cut at ``box``: a pixel translation."""
    M = np.eye(3)
    M[:2, 2] = box
    return params_from_pixel_matrix(warp, M, (side, side), image_shape)


def ecc(template, image, warp, p_init, gauss: int) -> np.ndarray:
    """``cv2.findTransformECC`` from each start, OpenCV's default criteria."""
    T = np.ascontiguousarray(template, dtype=np.float32)
    I = np.ascontiguousarray(image, dtype=np.float32)
    M0 = pixel_matrix(warp, p_init, T.shape, I.shape)
    rows = 3 if warp.projective else 2
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 0.001)
    out = M0.copy()
    for i, M in enumerate(M0[:, :rows].astype(np.float32)):
        try:
            out[i, :rows] = cv2.findTransformECC(T, I, M, MOTION[warp.name], criteria, None, gauss)[
                1
            ]
        except cv2.error:  # StsNoConv: ECC gives up, the start stays
            pass
    return params_from_pixel_matrix(warp, out, T.shape, I.shape)


def iclk(template, image, warp, p_init, robust: bool, overrides: dict):
    """Final ``p``, stopped flag (small step, finite) and score of ICLK from each start."""
    if robust:
        shape = {k: overrides[k] for k in ("coarsest", "smoothing") if k in overrides}
        settings = robust_settings(template.shape, **shape) if shape else {}
        settings.update({k: v for k, v in overrides.items() if k not in shape})
        settings["min_score"] = -1.0  # the score and the uncertainty are judged in confusion()
        settings["max_uncertainty"] = np.inf
        aligner = ICLK.robust(template, warp=warp, **settings)
    else:
        aligner = ICLK(template, warp, n_iter=50, min_score=-1.0)
    result = aligner.align(image, p_init)
    return result.p, result.converged, result.score, result.uncertainty


def confusion(right, stopped, score, uncertainty) -> dict:
    """False positive / negative counts of ``converged`` per threshold on the score, and at
    ``min_score`` 0.8 per threshold on the uncertainty (keys ``"0.8, u<=0.5"``)."""
    out = {}
    score = np.nan_to_num(score, nan=-2.0)
    spread = np.nan_to_num(uncertainty, nan=np.inf)
    rules = [(f"{t:g}", t, np.inf) for t in THRESHOLDS]
    rules += [(f"0.8, u<={u:g}", 0.8, u) for u in UNCERTAINTIES]
    for key, t, u in rules:
        flag = stopped & (score >= t) & (spread <= u)
        out[key] = {
            "false_positive": int((flag & ~right).sum()),
            "wrong": int((~right).sum()),
            "false_negative": int((~flag & right).sum()),
            "right": int(right.sum()),
        }
    return out


def add(total: dict, part: dict) -> None:
    for t, counts in part.items():
        cell = total.setdefault(t, dict.fromkeys(counts, 0))
        for k, v in counts.items():
            cell[k] += v


def convergence(args, overrides: dict) -> list[dict]:
    cells = []
    for side in args.sizes:
        boxes = {}
        for name in args.photos:
            image = photo(name)
            box = texture_box(image, side, np.random.default_rng([args.seed, side, len(name)]))
            if box is not None:
                boxes[name] = (image, box)
        for warp_name in args.warps:
            warp = warp_from_name(warp_name)
            for sigma in args.sigmas:
                for var in args.variants:
                    t0 = time.perf_counter()
                    hits = dict.fromkeys(METHODS, 0)
                    within = 0  # starts already within the tolerance: what not moving scores
                    minimum = 0  # starts whose photo's cost has its minimum within the tolerance
                    signal = {"ICLK.robust": {}, "ICLK": {}}
                    sq_err, sq_unc = [], []  # ICLK.robust's right alignments: calibration
                    n = 0
                    for k, (image, box) in enumerate(boxes.values()):
                        p_true = truth(warp, box, side, image.shape)
                        T = warp_image(image, warp, p_true, (side, side))
                        I = variant(image, var, args.seed * 1000 + k)
                        s_px = sigma * side / 50.0
                        starts = fixed_starts(
                            warp, p_true, s_px, (side, side), args.n_trials, args.seed * 97 + k
                        )
                        n += len(starts)
                        start_err = safe_corner_error(warp, starts, p_true, (side, side))
                        within += int((start_err < tolerance(side)).sum())
                        p_min, _, min_score, _ = iclk(T, I, warp, p_true[None], True, overrides)
                        min_err = safe_corner_error(warp, p_min, p_true, (side, side))[0]
                        minimum += len(starts) * int(min_err < tolerance(side))
                        for method in METHODS:
                            if method.startswith("ECC"):
                                g = 1 if method == "ECC-g1" else 5
                                p = ecc(T, I, warp, starts, g)
                            else:
                                robust = method == "ICLK.robust"
                                p, stopped, score, spread = iclk(
                                    T, I, warp, starts, robust, overrides
                                )
                            err = safe_corner_error(warp, p, p_true, (side, side))
                            right = err < tolerance(side)
                            hits[method] += int(right.sum())
                            if args.per_photo and method == "ICLK.robust":
                                wrong = ", ".join(
                                    f"{e:.1f} px/{s:.2f}/{u:.2f}"
                                    for e, s, u in zip(
                                        err[~right], score[~right], spread[~right], strict=True
                                    )
                                )
                                off = f"; off (px/score/uncertainty): {wrong}" if wrong else ""
                                name = list(boxes)[k]
                                at_truth = zncc(T, warp_image(I, warp, p_true, (side, side)))
                                print(
                                    f"    {name}: {int(right.sum())} of {len(right)} (score at "
                                    f"the truth {at_truth:.3f}; from the truth it ends "
                                    f"{min_err:.2f} px off, score {min_score[0]:.3f}){off}"
                                )
                            if method in signal:
                                add(signal[method], confusion(right, stopped, score, spread))
                            if method == "ICLK.robust":
                                sq_err += list(err[right] ** 2)
                                sq_unc += list(spread[right] ** 2)
                    pct = {m: round(100.0 * hits[m] / max(n, 1), 1) for m in METHODS}
                    cells.append(
                        {"size": side, "warp": warp_name, "sigma": sigma, "variant": var,
                         "n": n, "photos": list(boxes), "percent_converged": pct,
                         "percent_starts_within": round(100.0 * within / max(n, 1), 1),
                         "percent_minimum_within": round(100.0 * minimum / max(n, 1), 1),
                         "signal": signal, "calibration": calibration(sq_err, sq_unc)}
                    )  # fmt: skip
                    print(
                        f"{side:4d}px {warp_name:10s} sigma {sigma:<4g} {var:6s} n={n:4d} "
                        + " ".join(f"{m} {v:5.1f}" for m, v in pct.items())
                        + f" start {100.0 * within / max(n, 1):5.1f} minimum "
                        + f"{100.0 * minimum / max(n, 1):5.1f}"
                        + f"  ({time.perf_counter() - t0:.1f} s)",
                        flush=True,
                    )
    return cells


def calibration(sq_err: list, sq_unc: list) -> dict:
    """RMS corner error and RMS predicted uncertainty of ICLK.robust's right alignments."""
    finite = np.isfinite(sq_unc)
    e, u = np.asarray(sq_err)[finite], np.asarray(sq_unc)[finite]
    rms = lambda a: float(np.sqrt(a.mean())) if a.size else None  # noqa: E731
    return {"n": int(e.size), "rms_error": rms(e), "rms_uncertainty": rms(u)}


def pooled_calibration(cells: list[dict]) -> dict:
    """Per variant, over the cells: RMS error / RMS uncertainty of the right alignments."""
    out = {}
    for var in {c["variant"] for c in cells}:
        cal = [c["calibration"] for c in cells if c["variant"] == var and c["calibration"]["n"]]
        n = sum(c["n"] for c in cal)
        e2 = sum(c["n"] * c["rms_error"] ** 2 for c in cal) / max(n, 1)
        u2 = sum(c["n"] * c["rms_uncertainty"] ** 2 for c in cal) / max(n, 1)
        out[var] = {"n": n, "rms_error": round(e2**0.5, 4), "rms_uncertainty": round(u2**0.5, 4)}
    return out


def verdict(cells: list[dict]) -> dict:
    """Cells where ICLK.robust meets the target: >= both ECCs and >= plain ICLK - 3 points."""
    fails = []
    for c in cells:
        pct = c["percent_converged"]
        r = pct["ICLK.robust"]
        if r < pct["ECC"] or r < pct["ECC-g1"] or r < pct["ICLK"] - 3.0:
            fails.append(f"{c['size']}px {c['warp']} sigma {c['sigma']:g} {c['variant']}")
    return {"cells": len(cells), "cells_meeting_target": len(cells) - len(fails), "fails": fails}


def signal_rates(cells: list[dict]) -> dict:
    """Pooled false positive / negative rates of each ICLK's converged, per threshold."""
    out = {}
    for method in ("ICLK.robust", "ICLK"):
        total: dict = {}
        for c in cells:
            add(total, c["signal"][method])
        out[method] = {
            t: {
                "false_positive_rate": round(v["false_positive"] / max(v["wrong"], 1), 4),
                "false_negative_rate": round(v["false_negative"] / max(v["right"], 1), 4),
                **v,
            }
            for t, v in total.items()
        }
    return out


def timing(args, overrides: dict) -> list[dict]:
    """One pair at a time, ICLK.robust and ECC interleaved, median over repeats."""
    rows = []
    for side in args.timing_sizes:
        for warp_name in args.warps:
            warp = warp_from_name(warp_name)
            times = {"ICLK.robust (build + align)": [], "ICLK.robust (again + align)": [],
                     "ICLK.robust (align)": [], "ICLK.robust (from the truth)": [], "ECC": [],
                     "ECC-g1": []}  # fmt: skip
            for k, name in enumerate(args.photos):
                image = photo(name)
                box = texture_box(image, side, np.random.default_rng([args.seed, side, k]))
                if box is None:
                    continue
                p_true = truth(warp, box, side, image.shape)
                T = warp_image(image, warp, p_true, (side, side))
                start = fixed_starts(warp, p_true, 2.5 * side / 50, (side, side), 1, args.seed)
                built = ICLK.robust(T, warp=warp, **overrides)
                for _ in range(args.repeats):
                    clear_built()  # a template it has not seen: built from scratch
                    t = [time.perf_counter()]
                    ICLK.robust(T, warp=warp, **overrides).align(image, start[0])
                    t.append(time.perf_counter())
                    ICLK.robust(T, warp=warp, **overrides).align(image, start[0])  # kept: again
                    t.append(time.perf_counter())
                    result = built.align(image, start[0])
                    t.append(time.perf_counter())
                    built.align(image, p_true)  # no motion: what the stages cost in themselves
                    t.append(time.perf_counter())
                    p_ecc = ecc(T, image, warp, start, 5)
                    t.append(time.perf_counter())
                    ecc(T, image, warp, start, 1)
                    t.append(time.perf_counter())
                    for key, dt in zip(times, np.diff(t), strict=True):
                        times[key].append(dt)
                if args.per_photo:  # this pair's medians, and where each method ended
                    last = {k: 1e3 * np.median(v[-args.repeats :]) for k, v in times.items()}
                    raised = np.allclose(p_ecc, start, rtol=0, atol=1e-9)  # ECC gave up
                    err = [safe_corner_error(warp, q, p_true, (side, side)).item()
                           for q in (result.p[None], p_ecc)]  # fmt: skip
                    print(f"  {name:22s} ICLK.robust {last['ICLK.robust (align)']:.1f} ms, "
                          f"{err[0]:.3f} px off, score {result.score.item():.3f}; ECC "
                          f"{last['ECC']:.1f} ms, {err[1]:.3f} px off"
                          + (" (raised: left the start)" if raised else ""))  # fmt: skip
            ms = {k: round(1e3 * float(np.median(v)), 2) for k, v in times.items()}
            # each alignment against the ECC calls beside it: robust to a machine whose speed
            # drifts over seconds, which moves both sides of a pair together
            align = np.array(times["ICLK.robust (align)"])
            paired = {f"align / {k}": np.array(times[k]) for k in ("ECC", "ECC-g1")}
            ratio = {k: [round(float(q), 2) for q in np.quantile(align / v, [0.25, 0.5, 0.75])]
                     for k, v in paired.items()}  # fmt: skip
            rows.append({"size": side, "warp": warp_name, "pairs": len(times["ECC"]), "ms": ms,
                         "ratio": ratio})  # fmt: skip
            print(
                f"{side:4d}px {warp_name:10s} "
                + ", ".join(f"{k} {v} ms" for k, v in ms.items())
                + "; "
                + ", ".join(f"{k} {v[1]} ({v[0]}-{v[2]})" for k, v in ratio.items())
            )
    return rows


def markdown(report: dict) -> str:
    """The tables of ``docs/registration.md`` from a report."""
    lines = []
    if "cells" in report:
        starts = all("percent_starts_within" in c for c in report["cells"])
        minima = all("percent_minimum_within" in c for c in report["cells"])
        extra = " start |" if starts else ""  # a method that does not move scores this
        extra += " minimum |" if minima else ""  # the cost's own minimum is within tolerance
        lines += ["| size | warp | sigma | variant | " + " | ".join(METHODS) + " |" + extra,
                  "|---|---|---|---|" + "---|" * (len(METHODS) + starts + minima)]  # fmt: skip
        for c in report["cells"]:
            pct = c["percent_converged"]
            lines.append(
                f"| {c['size']} | {c['warp']} | {c['sigma']:g} | {c['variant']} | "
                + " | ".join(f"{pct[m]:.1f}" for m in METHODS) + " |"
                + (f" {c['percent_starts_within']:.1f} |" if starts else "")
                + (f" {c['percent_minimum_within']:.1f} |" if minima else "")
            )  # fmt: skip
        v = report["verdict"]
        lines += ["", f"Cells meeting the target: {v['cells_meeting_target']} of {v['cells']}."]
        lines += [f"- misses: {f}" for f in v["fails"]]
        lines += ["", "| method | min_score (, max_uncertainty) | false positive rate | "
                  "false negative rate |",
                  "|---|---|---|---|"]  # fmt: skip
        for method, rates in report["signal"].items():
            for t, r in rates.items():
                lines.append(
                    f"| {method} | {t} | {r['false_positive_rate']:.3f} "
                    f"({r['false_positive']}/{r['wrong']}) | {r['false_negative_rate']:.3f} "
                    f"({r['false_negative']}/{r['right']}) |"
                )
    if "timing" in report:
        keys = list(report["timing"][0]["ms"])
        ratios = list(report["timing"][0].get("ratio", {}))  # paired: median (quartiles)
        lines += ["| size | warp | pairs | " + " | ".join(keys + ratios) + " |",
                  "|---|---|---|" + "---|" * len(keys + ratios)]  # fmt: skip
        for r in report["timing"]:
            q = [r["ratio"][k] for k in ratios]
            lines.append(
                f"| {r['size']} | {r['warp']} | {r['pairs']} | "
                + " | ".join([f"{r['ms'][k]:.1f}" for k in keys]
                             + [f"{m:.2f} ({a:.2f}-{b:.2f})" for a, m, b in q]) + " |"
            )  # fmt: skip
    return "\n".join(lines)


def machine() -> dict:
    """Where the numbers were measured (``lkstn.machine.fingerprint``), with the date."""
    fp = fingerprint()
    fp.update(skimage=skimage.__version__, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    return fp


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a miniature run (< 1 min)")
    ap.add_argument("--timing", action="store_true", help="time one pair at a time instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-trials", type=int, help="starts per photo and cell (20; --quick 6)")
    ap.add_argument("--photos", default=",".join(PHOTOS))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--warps", default="affine,homography")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=5, help="--timing: repeats per pair")
    ap.add_argument("--timing-sizes", default="64,128,256", help="--timing: template sides")
    ap.add_argument("--robust", nargs="*", default=[], help="ICLK.robust overrides KEY=VALUE")
    ap.add_argument(
        "--per-photo",
        action="store_true",
        help="before each cell's line, ICLK.robust per photo (error/score of misses); with "
        "--timing, each pair's times and where ICLK.robust and ECC ended",
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--table", type=Path, help="print the markdown tables of a report, only")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return 0
    args.photos = args.photos.split(",")
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.timing_sizes = [int(s) for s in args.timing_sizes.split(",")]
    args.warps = args.warps.split(",")
    args.variants = args.variants.split(",")
    args.sigmas = SIGMAS
    if args.quick:
        args.photos, args.sizes, args.warps = args.photos[:2], [16, 64], ["affine"]
        args.variants, args.sigmas, args.repeats = ["relit"], (2.5,), 1
    args.n_trials = args.n_trials or (6 if args.quick else 20)
    overrides = parse_overrides(args.robust)
    cv2.setNumThreads(1)
    report = {"command": "python benchmarks/registration.py " + " ".join(argv or sys.argv[1:])}
    report["machine"] = machine()
    report.update(seed=args.seed, n_trials=args.n_trials, photos=args.photos, overrides=overrides)
    with threadpool_limits(1):
        if args.timing:
            report["timing"] = timing(args, overrides)
        else:
            cells = convergence(args, overrides)
            report.update(cells=cells, verdict=verdict(cells), signal=signal_rates(cells),
                          calibration=pooled_calibration(cells))  # fmt: skip
            print(json.dumps(report["verdict"]))
            print("ICLK.robust, right alignments, per variant:", json.dumps(report["calibration"]))
            for method, rates in report["signal"].items():
                for t, v in rates.items():
                    print(f"{method} min_score {t}: false positive rate "
                          f"{v['false_positive_rate']:.3f} ({v['false_positive']}/{v['wrong']}), "
                          f"false negative rate {v['false_negative_rate']:.3f} "
                          f"({v['false_negative']}/{v['right']})")  # fmt: skip
    report["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
