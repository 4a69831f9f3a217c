"""SDM fitted on one template (``SDM.for_template``): fit time, fit memory, accuracy on photos.

For each scikit-image photo (grey, ``img_as_float``): the template is the photo sampled in a
``--size`` px square box at its centre, rotated by 5 degrees (``p_true``); ``SDM.for_template``
fits on that template alone, then aligns the whole photo (``--relight GAIN BIAS``: ``GAIN *
photo + BIAS``) from ``--n-test`` held-out starts drawn with the paper's noise model at
``--sigma`` template pixels around ``p_true``. Plain ICLK (its defaults) runs from the same
starts. Reported per photo: fit seconds, peak traced memory of the fit (``tracemalloc``: NumPy's
buffers), median corner error, the fraction under 1 px, and how often ``converged`` says so
wrongly (false positives: converged but >= 1 px off) or misses it (false negatives).

Usage::

    python benchmarks/sdm_template.py                    # 128 px, affine, 8 photos
    python benchmarks/sdm_template.py --size 64 --warp homography --out sdm_template.json
    python benchmarks/sdm_template.py --n-samples 2000 --n-stages 8 --pool 2   # other settings
    python benchmarks/sdm_template.py --photometric none --relight 0.6 0.2     # raw pixels, relit
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np

from lkstn.machine import cpu_info, fingerprint

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "brick", "coins", "text")


def cpu_model() -> str:
    return cpu_info()["model_name"]


def photo(name: str) -> np.ndarray:
    from skimage import data, img_as_float
    from skimage.color import rgb2gray

    img = img_as_float(getattr(data, name)())
    return rgb2gray(img) if img.ndim == 3 else img


def box_params(warp, image_shape, side: float, angle_deg: float) -> np.ndarray:
    """``p_true``: the template frame onto a rotated square of ``side`` px at the image centre."""
    from lkstn.sampling import pixel_to_canonical

    H, W = image_shape
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    corners = warp.corners()  # (4, 2)
    box = np.array([(W - 1) / 2, (H - 1) / 2]) + side / 2 * corners @ np.array([[c, s], [-s, c]])
    return warp.fit(corners, pixel_to_canonical(box, image_shape))


def run_photo(name: str, args: argparse.Namespace, seed: int) -> dict:
    from lkstn import ICLK, SDM, corner_error, warp_image
    from lkstn.perturb import perturb
    from lkstn.warps import warp_from_name

    warp, shape = warp_from_name(args.warp), (args.size, args.size)
    image = photo(name)
    p_true = box_params(warp, image.shape, args.size, 5.0)
    template = warp_image(image, warp, p_true, shape)
    names = ("n_samples", "n_stages", "pool", "alpha", "sigma_px", "margin_px")
    options = {k: getattr(args, k) for k in names}
    options = {k: v for k, v in options.items() if v is not None}
    tracemalloc.start()
    t0 = time.perf_counter()
    if args.photometric != "gain-bias":
        options["photometric"] = None if args.photometric == "none" else args.photometric
    sdm = SDM.for_template(template, warp=warp, rng=seed, progress=False, **options)
    image = args.relight[0] * image + args.relight[1]  # the image to align, relit
    fit_s = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    starts = perturb(
        warp, p_true, args.sigma, shape, np.random.default_rng(seed + 1), n=args.n_test
    )
    row = {
        "photo": name,
        "fit_s": fit_s,
        "fit_peak_mib": peak / 2**20,
        "n_features": sdm.n_features,
    }
    row["start_median_px"] = float(np.median(corner_error(warp, starts, p_true, shape)))
    for label, aligner in (("sdm", sdm), ("iclk", ICLK(template, warp=warp))):
        t0 = time.perf_counter()
        res = aligner.align(image, starts)
        seconds = time.perf_counter() - t0
        err = corner_error(warp, res.p, p_true, shape)
        good, flag = err < 1.0, np.asarray(res.converged)
        row[label] = {
            "median_px": float(np.median(err)),
            "under_1px": float(good.mean()),
            "flag": float(flag.mean()),
            "false_pos": float((flag & ~good).mean()),
            "false_neg": float((~flag & good).mean()),
            "align_ms_per_start": 1e3 * seconds / args.n_test,
        }
    return row


def ridge_threads() -> dict:
    """Seconds of one 1000 x 1024 ridge fit on 1 and 2 BLAS threads, alternated, 3 rounds."""
    from threadpoolctl import threadpool_limits

    from lkstn.classical.ridge import ridge_regression

    rng = np.random.default_rng(0)
    X, Y = rng.random((1000, 1024)), rng.random((1000, 6))
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(3):
        for threads in (1, 2):
            with threadpool_limits(limits=threads, user_api="blas"):
                t0 = time.perf_counter()
                ridge_regression(X, Y, 0.1)
                times[threads].append(time.perf_counter() - t0)
    for threads, ts in times.items():
        print(f"{threads} BLAS thread(s): " + ", ".join(f"{t:.3f}" for t in ts) + " s")
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}")  # fmt: skip
    return {"seconds": times}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128, help="template side, px")
    ap.add_argument("--warp", default="affine")
    ap.add_argument("--sigma", type=float, default=None, help="test starts, px (default: fit's)")
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--photos", nargs="+", default=list(PHOTOS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-samples", type=int)
    ap.add_argument("--n-stages", type=int)
    ap.add_argument("--pool", type=int)
    ap.add_argument("--alpha", type=float)
    ap.add_argument("--sigma-px", type=float, help="fit's perturbation, px (default: SDM's)")
    ap.add_argument("--margin-px", type=float, help="border left out of the features, px")
    ap.add_argument("--photometric", default="gain-bias", choices=["none", "bias", "gain-bias"])
    ap.add_argument(
        "--relight",
        nargs=2,
        type=float,
        default=(1.0, 0.0),
        metavar=("GAIN", "BIAS"),
        help="align GAIN * photo + BIAS (the template stays the photo's)",
    )
    ap.add_argument(
        "--ridge-threads",
        action="store_true",
        help="time the ridge on 1 and 2 "
        "BLAS threads side by side (1000 x 1024 features, 3 rounds) and stop",
    )
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.ridge_threads:
        return ridge_threads()
    from lkstn.classical.sdm_template import DEFAULTS

    fit_sigma = args.sigma_px or max(1.0, DEFAULTS["sigma_frac"] * args.size)
    args.sigma = args.sigma or fit_sigma
    load0 = os.getloadavg()
    rows = [run_photo(name, args, args.seed + 10 * i) for i, name in enumerate(args.photos)]
    head = (
        f"{'photo':<10}{'fit s':>7}{'MiB':>7}{'start px':>9}{'SDM px':>8}{'<1px':>6}{'FP':>5}"
        f"{'FN':>5}{'ICLK px':>9}{'<1px':>6}"
    )
    print(f"{args.size} px template, {args.warp}, fit sigma {fit_sigma:g} px, test sigma "
          f"{args.sigma:g} px, {args.n_test} starts per photo")  # fmt: skip
    print(head + "\n" + "-" * len(head))
    for r in rows:
        s, i = r["sdm"], r["iclk"]
        print(
            f"{r['photo']:<10}{r['fit_s']:>7.2f}{r['fit_peak_mib']:>7.0f}{r['start_median_px']:>9.2f}"
            f"{s['median_px']:>8.3f}{100 * s['under_1px']:>5.0f}%{100 * s['false_pos']:>4.0f}%"
            f"{100 * s['false_neg']:>4.0f}%{i['median_px']:>9.3f}{100 * i['under_1px']:>5.0f}%"
        )
    machine = {**fingerprint(), "cpu": cpu_model(), "cpus": os.cpu_count(), "load_start": load0,
               "load_end": os.getloadavg()}  # fmt: skip
    print(f"{machine['cpu']}, {machine['cpus']} CPUs, load {load0[0]:.1f} -> "
          f"{machine['load_end'][0]:.1f}, {time.strftime('%Y-%m-%d', time.gmtime())}")  # fmt: skip
    report = {"args": vars(args), "rows": rows, "machine": machine}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
