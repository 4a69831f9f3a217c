"""Register two image files: find a template in an image and get the warp back in pixels.

    python examples/register_pair.py TEMPLATE IMAGE [--out DIR]   # your own pair
    python examples/register_pair.py [--out DIR]                  # pairs made from skimage photos

Without files, it makes a pair from each of six scikit-image photos: a 128 px template cut at
a known homography and saved as a 16-bit TIFF, and the photo relit (gain 0.8, offset 0.1) with
noise, saved as an 8-bit PNG; it then registers each pair from a box 6 px off and prints the
corner error against the known warp (template pixels), the score and the time. Either way it
writes an overlay PNG per pair to ``DIR`` (default ``out/register``).

The same pair through the command line:
``lkstn align TEMPLATE IMAGE --warp homography --box X0 Y0 X1 Y1 --pyramid 2 --gradient-sigma 3
--photometric gain-bias``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lkstn import ICLK, Homography, align_pixels, box_matrix, read_image
from lkstn.pixels import warp_image_pixels
from lkstn.viz import save_overlay

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins"]
SIDE = 128


def make_pair(name: str, folder: Path, rng: np.random.Generator) -> tuple[Path, Path, np.ndarray]:
    """Write ``name``'s template (16-bit TIFF) and relit, noisy image (8-bit); return the truth."""
    from skimage import data, io
    from skimage.util import img_as_float

    photo = img_as_float(getattr(data, name)())
    h, w = photo.shape[:2]
    x0, y0 = (w - SIDE) / 2.0 + rng.uniform(-20, 20), (h - SIDE) / 2.0 + rng.uniform(-20, 20)
    H_true = np.array([[1.04, 0.03, x0], [-0.02, 0.97, y0], [4e-5, -6e-5, 1.0]])
    template = warp_image_pixels(photo, H_true, (SIDE, SIDE))
    image = np.clip(0.8 * photo + 0.1 + rng.normal(0, 0.01, photo.shape), 0, 1)
    t_path, i_path = folder / f"{name}_template.tif", folder / f"{name}_image.png"
    io.imsave(t_path, np.round(template * 65535).astype(np.uint16), check_contrast=False)
    io.imsave(i_path, np.round(image * 255).astype(np.uint8), check_contrast=False)
    return t_path, i_path, H_true


def corner_error(H: np.ndarray, G: np.ndarray, side: int = SIDE) -> float:
    """RMS distance (pixels) between the template corners moved by ``H`` and by ``G``."""
    c = np.array([[0, 0, 1], [side - 1, 0, 1], [side - 1, side - 1, 1], [0, side - 1, 1.0]])
    a, b = c @ H.T, c @ G.T
    return float(np.sqrt(((a[:, :2] / a[:, 2:] - b[:, :2] / b[:, 2:]) ** 2).sum(1).mean()))


def register(t_path: Path, i_path: Path, start: np.ndarray | None, out: Path):
    """Read, align from ``start`` (or the centred template), write the overlay; return it."""
    template, mask = read_image(t_path)
    image, _ = read_image(i_path)
    colour, _ = read_image(i_path, as_grey=False)
    if start is None:
        (h, w), (H, W) = template.shape, image.shape
        box = ((W - w) / 2, (H - h) / 2, (W + w) / 2 - 1, (H + h) / 2 - 1)
        start = box_matrix(Homography(), box, template.shape)
    t0 = time.perf_counter()
    aligner = ICLK(template, warp=Homography(), pyramid=2, gradient_sigma=3,
                   photometric="gain-bias")  # fmt: skip
    result = align_pixels(aligner, image, start)
    seconds = time.perf_counter() - t0
    save_overlay(out / f"{t_path.stem}_overlay.png", colour, template, result.H, result.H_init,
                 title=f"{t_path.stem}: score {result.score:.3f}")  # fmt: skip
    return result, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", metavar="TEMPLATE IMAGE")
    parser.add_argument("--out", default="out/register", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.files:
        if len(args.files) != 2:
            parser.error("give TEMPLATE and IMAGE, or nothing")
        result, seconds = register(Path(args.files[0]), Path(args.files[1]), None, args.out)
        print(np.array2string(result.H, precision=4))
        print(f"score {result.score:.4f}, converged {result.converged}, {seconds * 1e3:.0f} ms")
        return 0 if result.converged else 1
    rng = np.random.default_rng(args.seed)
    print("| photo | start error (px) | final error (px) | score | uncertainty (px) | converged "
          "| time (ms) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in PHOTOS:
        t_path, i_path, H_true = make_pair(name, args.out, rng)
        start = H_true.copy()
        start[:2, 2] += rng.choice([-1, 1], 2) * 6.0 / np.sqrt(2)  # 6 px away
        result, seconds = register(t_path, i_path, start, args.out)
        print(f"| {name} | {corner_error(result.H_init, H_true):.2f} | "
              f"{corner_error(result.H, H_true):.3f} | {result.score:.4f} | "
              f"{float(result.result.uncertainty):.3f} | {result.converged} | "
              f"{seconds * 1e3:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
