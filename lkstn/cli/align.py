"""``lkstn align TEMPLATE IMAGE``: find a template image in an image file.

Reads both files with :func:`lkstn.io.read_image` (any bit depth; an RGBA template's alpha is
its mask), starts from ``--box`` (the template's corners in image pixels), ``--init`` (a pixel
matrix: a previous ``params.json`` or a 2x3/3x3 text file) or the centred template, and writes
``params.json`` (the canonical ``p`` and the ``pixel_matrix``, :mod:`lkstn.pixels`) and an
overlay PNG. Exit code 0 when the alignment converged, 1 when it ran but did not converge
(results are still written), 2 for bad input.

Only what the method uses is imported: no torch, no scikit-learn for the Lucas-Kanade methods,
no SciPy (:mod:`lkstn.filters`) and no matplotlib (the overlay is drawn with Pillow,
:mod:`lkstn.overlay`).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lkstn.errors import UsageError

__all__ = ["add_arguments", "build_aligner", "initial_matrix", "run", "read_inputs"]

METHODS = {"iclk": "ICLK", "lk": "LK", "clk": "CompositionalLK", "sdm": "SDM", "robust": "ICLK"}
DEFAULT_METHOD = "robust"
SDM_MAX_VALUES = 50_000_000
"""Bound on ``--sdm-samples`` times the template's pixels (400 MB of float64 samples)."""


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``lkstn align`` and ``lkstn track``: warp, method, start, tuning."""
    parser.add_argument(
        "--warp", default="affine", choices=["translation", "similarity", "affine", "homography"]
    )
    parser.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=sorted(METHODS),
        help="robust: ICLK.robust, a configuration for photographs",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--box",
        nargs=4,
        type=_number,
        metavar=("X0", "Y0", "X1", "Y1"),
        help="start: the template's corner pixels in the image (default: centred)",
    )
    start.add_argument(
        "--init", metavar="FILE", help="start: a pixel matrix (params.json, or a 2x3/3x3 text file)"
    )
    parser.add_argument(
        "--pyramid",
        type=int,
        default=None,
        metavar="LEVELS",
        help="coarse-to-fine levels (iclk, lk, clk, robust; default 1)",
    )
    parser.add_argument(
        "--gradient-sigma",
        type=float,
        default=None,
        metavar="PX",
        help="iclk/robust: smoothed steepest-descent images (3 px: wider basin)",
    )
    parser.add_argument(
        "--image-sigma",
        type=float,
        default=None,
        metavar="PX",
        help="iclk, lk, clk, robust: a first finest-level stage on both images smoothed "
        "(robust: 0.035 x the template side - 1, at most 1.1; 0: none)",
    )
    parser.add_argument(
        "--photometric",
        choices=["bias", "gain-bias"],
        default=None,
        help="iclk/robust: invariant to an offset (and gain), as ECC",
    )
    parser.add_argument(
        "--no-polish",
        action="store_true",
        help="robust: without the last, forwards stage (less time per pair, fewer far starts "
        "converge: docs/registration.md; templates over 128 px go without it anyway)",
    )
    parser.add_argument("--n-iter", type=int, default=None, help="iterations (sdm: stages)")
    parser.add_argument("--sdm-samples", type=int, default=None, help="sdm: training starts")
    parser.add_argument(
        "--sdm-sigma",
        type=float,
        default=None,
        metavar="PX",
        help="sdm: training perturbation (template pixels)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sdm: random seed")
    parser.add_argument("--no-overlay", action="store_true", help="skip the overlay PNG")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lkstn align``."""
    parser.add_argument("template", metavar="TEMPLATE", help="template image file (PNG, TIFF, ...)")
    parser.add_argument("image", metavar="IMAGE", help="image file in which to find the template")
    add_common_arguments(parser)
    parser.add_argument("--out", default="lkstn-align", help="output folder")


def read_inputs(template_path: str | None, image_paths: list[str], names: list[str]) -> tuple:
    """Template (grey), its mask, and the images as ``(grey, colour)`` pairs; one-line errors.

    ``template_path=None`` reads the images only (``template`` and ``mask`` are then None).
    """
    from lkstn.io import grey, read_image

    template, mask = None, None
    try:
        if template_path is not None:
            template, mask = read_image(template_path, name="TEMPLATE", as_grey=True)
        images = []
        for path, name in zip(image_paths, names, strict=True):
            colour, _ = read_image(path, name=name, as_grey=False)
            images.append((grey(colour), colour))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return template, mask, images


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def check_options(args: argparse.Namespace, template_shape: tuple[int, int]) -> None:
    """Refuse options that are out of range or that the method would ignore."""
    h, w = template_shape
    sdm = args.method == "sdm"

    def given(name: str) -> bool:
        return getattr(args, name) is not None

    for name in ("pyramid", "gradient_sigma", "image_sigma", "photometric"):
        _check(
            not (sdm and given(name)), f"--{name.replace('_', '-')} does not apply to --method sdm"
        )
    for name in ("sdm_samples", "sdm_sigma"):
        _check(sdm or not given(name), f"--{name.replace('_', '-')} applies to --method sdm only")
    if args.method in ("lk", "clk"):
        for name in ("gradient_sigma", "photometric"):
            flag = f"--{name.replace('_', '-')}"
            _check(not given(name), f"{flag} applies to --method iclk only (or robust)")
    _check(args.method == "robust" or not args.no_polish, "--no-polish applies to --method robust")
    _check(args.n_iter is None or args.n_iter >= 1, f"--n-iter must be >= 1, got {args.n_iter}")
    _check(
        args.n_iter is None or args.n_iter <= 10_000, f"--n-iter at most 10000, got {args.n_iter}"
    )
    _check(args.seed >= 0, f"--seed must be >= 0, got {args.seed}")
    _check(args.pyramid is None or args.pyramid >= 1, f"--pyramid must be >= 1, got {args.pyramid}")
    if given("gradient_sigma"):
        s = args.gradient_sigma
        _check(
            math.isfinite(s) and 0 <= s <= min(h, w) / 2,
            f"--gradient-sigma must be >= 0 and at most {min(h, w) / 2:g} px (half the {w}x{h} "
            f"template's shorter side), got {s}",
        )
    if given("image_sigma"):
        s = args.image_sigma
        _check(
            math.isfinite(s) and 0 <= s <= min(h, w) / 2,
            f"--image-sigma must be >= 0 and at most {min(h, w) / 2:g} px, got {s}",
        )
    if given("sdm_samples"):
        most = max(1, SDM_MAX_VALUES // (h * w))
        _check(
            1 <= args.sdm_samples <= most,
            f"--sdm-samples must be in [1, {most}] for a {w}x{h} template (memory), "
            f"got {args.sdm_samples}",
        )
    if given("sdm_sigma"):
        s = args.sdm_sigma
        _check(
            math.isfinite(s) and 0 < s <= min(h, w) / 2,
            f"--sdm-sigma must be in (0, {min(h, w) / 2:g}] px, got {s}",
        )


def build_aligner(args: argparse.Namespace, template: np.ndarray, mask: np.ndarray | None, warp):
    """The aligner the options ask for, built in one place (``mask``: the template's alpha)."""
    import lkstn

    check_options(args, template.shape)
    if args.method == "sdm":
        return _fit_sdm(args, template, mask, warp)
    cls = getattr(lkstn, METHODS[args.method])
    kwargs: dict[str, Any] = {}
    if args.n_iter is not None:
        kwargs["n_iter"] = args.n_iter
    if args.pyramid is not None:
        kwargs["pyramid"] = args.pyramid
    if args.gradient_sigma:
        kwargs["gradient_sigma"] = args.gradient_sigma
    if args.image_sigma is not None:
        kwargs["image_sigma"] = args.image_sigma
    if args.photometric:
        kwargs["photometric"] = args.photometric
    if args.method == "robust":
        factory = cls.robust
        if args.no_polish:
            kwargs["polish"] = False
    else:
        kwargs.setdefault("n_iter", 50)
        factory = cls
    try:
        return factory(template, warp=warp, mask=mask, **kwargs)
    except ValueError as exc:
        raise UsageError(f"TEMPLATE: {exc}") from None


def _fit_sdm(args, template, mask, warp):
    """``SDM.for_template`` with its defaults, overridden by the options given."""
    import lkstn

    options = {"sigma_px": args.sdm_sigma, "n_samples": args.sdm_samples, "n_stages": args.n_iter}
    options = {k: v for k, v in options.items() if v is not None}
    try:
        return lkstn.SDM.for_template(template, warp=warp, mask=mask, rng=args.seed, **options)
    except ValueError as exc:
        raise UsageError(f"--method sdm: {exc}") from None


def initial_matrix(args: argparse.Namespace, warp, template_shape, image_shape) -> np.ndarray:
    """The start as a pixel matrix: ``--init``, ``--box``, or the template centred."""
    from lkstn.pixels import box_matrix, project_pixel_matrix, read_pixel_matrix

    h, w = template_shape
    H_img, W_img = image_shape[:2]
    try:
        if args.init is not None:
            return project_pixel_matrix(
                warp, read_pixel_matrix(args.init, name="--init"), template_shape
            )
        if args.box is None:
            x0, y0 = (W_img - w) / 2.0, (H_img - h) / 2.0
            box = (x0, y0, x0 + w - 1, y0 + h - 1)
        else:
            box = args.box
            x0, y0, x1, y1 = box
            _check(all(math.isfinite(v) for v in box), f"--box: expected finite numbers, got {box}")
            _check(x1 > x0 and y1 > y0, f"--box: need x1 > x0 and y1 > y0, got {box}")
            _check(
                not (x1 < 0 or y1 < 0 or x0 > W_img - 1 or y0 > H_img - 1),
                f"--box: {box} lies outside the {W_img}x{H_img} image",
            )
        return box_matrix(warp, box, template_shape)
    except ValueError as exc:
        raise UsageError(str(exc) if str(exc).startswith("--") else f"--box: {exc}") from None


def canonical_params(warp, H: np.ndarray, template_shape, image_shape) -> list | None:
    """Canonical ``p`` of a pixel matrix, or None where the family has no such member (a pixel
    translation or similarity between frames of different pixel scales, lkstn.register)."""
    from lkstn.pixels import params_from_pixel_matrix

    try:
        return params_from_pixel_matrix(warp, H, template_shape, image_shape).tolist()
    except ValueError:
        return None


def write_record(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=2))


def run(args: argparse.Namespace) -> int:
    """Run ``lkstn align``; returns the exit code."""
    from lkstn.register import align_pixels
    from lkstn.warps import warp_from_name

    warp = warp_from_name(args.warp)
    template, mask, [(image, colour)] = read_inputs(args.template, [args.image], ["IMAGE"])
    aligner = build_aligner(args, template, mask, warp)
    H0 = initial_matrix(args, warp, template.shape, image.shape)
    try:
        out = align_pixels(aligner, image, H0, template=template, mask=mask)
    except ValueError as exc:
        if "warp:" in str(exc):
            raise UsageError(f"--{exc}") from None
        raise
    record = {
        "template": args.template,
        "image": args.image,
        "warp": warp.name,
        "method": args.method,
        "pixel_matrix": out.H.tolist(),
        "pixel_matrix_init": out.H_init.tolist(),
        "p": canonical_params(warp, out.H, template.shape, image.shape),
        "p_init": canonical_params(warp, out.H_init, template.shape, image.shape),
        "score": out.score,
        "uncertainty": _uncertainty(out.result),
        "converged": out.converged,
        "n_iter": out.result.n_iter,
        "conventions": "pixel_matrix maps template pixels to image pixels (OpenCV warpMatrix); "
        "p: canonical frame [-1, 1] of template and image (null where the warp has no canonical "
        "form: a pixel translation or similarity between frames of different scales), see "
        "lkstn.pixels and lkstn.warps",
    }
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    write_record(folder / "params.json", record)
    if not args.no_overlay:
        from lkstn.overlay import save_overlay

        title = f"{args.method}, {warp.name}: score {out.score:.3f}, converged={out.converged}"
        save_overlay(folder / "overlay.png", colour, template, out.H, out.H_init, title=title)
    spread = _uncertainty(out.result)
    shown = "" if spread is None else f"  uncertainty {spread:.3f} px"
    print(f"score {out.score:.4f}{shown}  converged={out.converged}  -> {folder}/params.json")
    if not out.converged:
        print(f"not converged: {why_not(aligner, out.score, spread)}")
    return 0 if out.converged else 1


def why_not(aligner, score: float, spread: float | None) -> str:
    """Why an alignment is not ``converged``, in words, from the aligner's thresholds."""
    min_score = getattr(aligner, "min_score", None)
    max_spread = getattr(aligner, "max_uncertainty", np.inf)
    if not np.isfinite(score):
        return "the warp left the image or failed (no score)"
    reasons = []
    if min_score is not None and score < min_score:
        reasons.append(f"score {score:.3f} below {min_score:g} (a wrong place, another scene)")
    if spread is not None and spread > max_spread:
        reasons.append(
            f"uncertainty {spread:.2f} px above {max_spread:g} (the template does not fix the "
            "warp: too little texture against the noise, or texture along one direction)"
        )
    if reasons:
        return "; ".join(reasons)
    return "the last step stayed above the tolerance, or a step failed (try --n-iter)"


def _uncertainty(result) -> float | None:
    """The predicted corner spread (template pixels) where the aligner gives one."""
    u = getattr(result, "uncertainty", None)
    return None if u is None else float(u)
