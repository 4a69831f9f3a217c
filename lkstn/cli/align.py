"""``lkstn align TEMPLATE IMAGE``: align a template image file to an image file.

Writes the parameters (``params.json``) and an overlay PNG. Exit code 0 when the alignment
converged, 1 when it ran but did not converge (results are still written).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lkstn.errors import UsageError

__all__ = ["add_arguments", "run"]

METHODS = {"iclk": "ICLK", "lk": "LK", "clk": "CompositionalLK", "sdm": "SDM"}


def _box(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lkstn align``."""
    parser.add_argument("template", metavar="TEMPLATE", help="template image file (PNG, JPEG, ...)")
    parser.add_argument("image", metavar="IMAGE", help="image file in which to find the template")
    parser.add_argument("--warp", default="affine", choices=["translation", "similarity", "affine",
                                                         "homography"])  # fmt: skip
    parser.add_argument("--method", default="iclk", choices=sorted(METHODS))
    parser.add_argument("--box", nargs=4, type=_box, metavar=("X0", "Y0", "X1", "Y1"),
                   help="initial template box in IMAGE pixels (default: centred)")  # fmt: skip
    parser.add_argument("--pyramid", type=int, default=0, metavar="LEVELS",
                   help="coarse-to-fine levels (iclk, lk, clk)")  # fmt: skip
    parser.add_argument("--gradient-sigma", type=float, default=0.0, metavar="PX",
                   help="iclk: smoothed steepest-descent images (3 px: wider basin)")  # fmt: skip
    parser.add_argument("--photometric", choices=["bias", "gain-bias"], default=None,
                   help="iclk: invariant to an offset (and gain) per channel, as ECC")  # fmt: skip
    parser.add_argument("--n-iter", type=int, default=50)
    parser.add_argument("--sdm-samples", type=int, default=2000)
    parser.add_argument("--sdm-sigma", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="lkstn-align", help="output folder")


def _read_image(path: str, name: str) -> np.ndarray:
    from skimage import io
    from skimage.color import rgb2gray, rgba2rgb

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{name}: no such file: {path}")
    try:
        img = io.imread(p)
    except Exception as exc:  # imageio/PIL raise many kinds
        raise UsageError(f"{name}: cannot read {path} as an image ({type(exc).__name__})") from None
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = rgba2rgb(img)
    if img.ndim == 3 and img.shape[-1] == 3:
        img = rgb2gray(img)
    if img.ndim != 2 or min(img.shape) < 4:
        raise UsageError(f"{name}: expected a 2-D image of at least 4x4, got shape {img.shape}")
    img = img.astype(np.float64)
    return img / 255.0 if img.max() > 1.0 else img


def _initial_params(warp, box, template_shape, image_shape) -> np.ndarray:
    """The warp that maps the template frame onto ``box = (x0, y0, x1, y1)`` (pixels)."""
    from lkstn.sampling import pixel_to_canonical

    H, W = image_shape
    if box is None:
        th, tw = template_shape
        if (th, tw) == (H, W):
            return warp.identity()
        x0, y0 = (W - tw) / 2.0, (H - th) / 2.0
        box = (x0, y0, x0 + tw - 1, y0 + th - 1)
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise UsageError(f"--box: need x1 > x0 and y1 > y0, got {list(box)}")
    if x1 < 0 or y1 < 0 or x0 > W - 1 or y0 > H - 1:
        raise UsageError(f"--box: {list(box)} lies outside the {W}x{H} image")
    dst = pixel_to_canonical(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float), (H, W))
    return warp.fit(warp.corners(), dst)


def run(args: argparse.Namespace) -> int:
    """Run ``lkstn align``; returns the exit code."""
    import lkstn
    from lkstn.perturb import perturbation
    from lkstn.viz import plot_boxes
    from lkstn.warps import warp_from_name

    template = _read_image(args.template, "TEMPLATE")
    image = _read_image(args.image, "IMAGE")
    warp = warp_from_name(args.warp)
    p_init = _initial_params(warp, args.box, template.shape, image.shape)
    if args.method == "sdm":
        rng = np.random.default_rng(args.seed)
        model = lkstn.SDM(template_shape=template.shape, warp=warp, n_stages=args.n_iter)
        starts = perturbation(warp, args.sdm_samples, args.sdm_sigma, template.shape, rng)
        model.fit(template, warp.identity(), starts)
    else:
        cls = getattr(lkstn, METHODS[args.method])
        kwargs = {"pyramid": args.pyramid} if args.pyramid else {}
        if not (np.isfinite(args.gradient_sigma) and args.gradient_sigma >= 0):
            raise UsageError(f"--gradient-sigma must be >= 0, got {args.gradient_sigma}")
        if args.gradient_sigma:
            if args.method != "iclk":
                raise UsageError("--gradient-sigma applies to --method iclk only")
            kwargs["gradient_sigma"] = args.gradient_sigma
        if args.photometric:
            if args.method != "iclk":
                raise UsageError("--photometric applies to --method iclk only")
            kwargs["photometric"] = args.photometric
        try:
            model = cls(template, warp=warp, n_iter=args.n_iter, **kwargs)
        except ValueError as exc:
            raise UsageError(f"TEMPLATE: {exc}") from None
    result = model.align(image, p_init)
    p, converged = np.asarray(result.p), bool(np.all(result.converged))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "template": args.template,
        "image": args.image,
        "warp": warp.name,
        "method": args.method,
        "p_init": p_init.tolist(),
        "p": p.tolist(),
        "matrix": warp.matrix(p).tolist(),
        "converged": converged,
        "n_iter": result.n_iter,
        "cost": None if result.cost is None else np.asarray(result.cost).tolist(),
        "conventions": "canonical frame [-1, 1], W maps template to image; see lkstn.warps",
    }
    (out / "params.json").write_text(json.dumps(record, indent=2))
    fig = plot_boxes(image, warp, p, p_init, title=f"{args.method}: converged={converged}")
    fig.savefig(out / "overlay.png", dpi=100)
    print(f"p = {np.array2string(p, precision=5)}  converged={converged}  -> {out}/params.json")
    return 0 if converged else 1
