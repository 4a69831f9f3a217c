"""The ``lkstn`` command (also ``python -m lkstn``).

``lkstn align TEMPLATE IMAGE``
    Align a template image file to an image file with an LK-family method; writes the
    parameters (JSON) and an overlay PNG.
``lkstn reproduce planar|equivalence|mnist|gtsrb|boundary [--quick]``
    Run one of the paper's experiments (each module in :mod:`lkstn.experiments` adds its
    own options through ``add_arguments(parser)`` and runs through ``run(args)``).
``lkstn benchmark``
    Run the benchmarks in ``benchmarks/`` (from a source checkout).

Exit codes: 0 success (for ``align``: the alignment converged), 1 the alignment ran but did not
converge (results are still written), 2 bad arguments or unreadable input (a one-line message on
stderr).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = ["main"]

EXPERIMENTS = ("planar", "equivalence", "mnist", "gtsrb", "boundary")
METHODS = {"iclk": "ICLK", "lk": "LK", "clk": "CompositionalLK", "sdm": "SDM"}


class UsageError(Exception):
    """Bad arguments or unreadable input: reported in one line with exit code 2."""


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


def _cmd_align(args: argparse.Namespace) -> int:
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


def _cmd_reproduce(args: argparse.Namespace) -> int:
    return int(args.run(args) or 0)


def _cmd_benchmark(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    script = root / "run_all.py"
    if not script.is_file():
        raise UsageError("benchmark: the benchmarks/ folder ships with a source checkout only")
    cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
    return subprocess.call(cmd)


def _box(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of the ``lkstn`` command.

    Only the experiment named in ``argv`` (if any) is imported, so ``lkstn --help`` and
    ``lkstn align`` stay fast.
    """
    parser = argparse.ArgumentParser(prog="lkstn", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    a = sub.add_parser("align", help="align a template image to an image (LK family)")
    a.add_argument("template", metavar="TEMPLATE", help="template image file (PNG, JPEG, ...)")
    a.add_argument("image", metavar="IMAGE", help="image file in which to find the template")
    a.add_argument("--warp", default="affine", choices=["translation", "similarity", "affine",
                                                         "homography"])  # fmt: skip
    a.add_argument("--method", default="iclk", choices=sorted(METHODS))
    a.add_argument("--box", nargs=4, type=_box, metavar=("X0", "Y0", "X1", "Y1"),
                   help="initial template box in IMAGE pixels (default: centred)")  # fmt: skip
    a.add_argument("--pyramid", type=int, default=0, metavar="LEVELS",
                   help="coarse-to-fine levels (iclk, lk, clk)")  # fmt: skip
    a.add_argument("--gradient-sigma", type=float, default=0.0, metavar="PX",
                   help="iclk: smoothed steepest-descent images (3 px: wider basin)")  # fmt: skip
    a.add_argument("--photometric", choices=["bias", "gain-bias"], default=None,
                   help="iclk: invariant to an offset (and gain) per channel, as ECC")  # fmt: skip
    a.add_argument("--n-iter", type=int, default=50)
    a.add_argument("--sdm-samples", type=int, default=2000)
    a.add_argument("--sdm-sigma", type=float, default=3.0)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", default="lkstn-align", help="output folder")
    a.set_defaults(func=_cmd_align)

    r = sub.add_parser("reproduce", help="reproduce a table or figure of the paper")
    rsub = r.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    wanted = set(EXPERIMENTS) if argv is None else {a for a in argv if a in EXPERIMENTS}
    for name in EXPERIMENTS:
        if name not in wanted:  # importing an experiment imports torch: only the one asked for
            rsub.add_parser(name, help=f"[LL17] {name} experiment (see its --help)")
            continue
        module = importlib.import_module(f"lkstn.experiments.{name}")
        e = rsub.add_parser(name, help=(module.__doc__ or name).strip().split("\n")[0])
        module.add_arguments(e)
        e.set_defaults(func=_cmd_reproduce, run=module.run)

    b = sub.add_parser("benchmark", help="run the benchmarks (source checkout)")
    b.add_argument("--quick", action="store_true")
    b.set_defaults(func=_cmd_benchmark)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"lkstn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lkstn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
