"""[LL17] Fig. 2: the boundary effect of STNs on a real photo, and c-STNs without it.

``lkstn reproduce boundary [--image chelsea|astronaut] [--zoom 1.5] [--out DIR]`` crops a box from a
scikit-image photo (the input of a spatial transformer, ``I(p_crop)``) and applies a zoom-in and a
zoom-out warp ``dp`` about the centre of the frame with a fixed "predictor":

- the STN resamples the crop: ``I_out = I(p_crop)(dp)`` ([LL17] eq. (8)); whatever the zoom-out
  needs from outside the crop is zero (the black frame of Fig. 2(d));
- the c-STN composes the warps and samples the photo once ([LL17] eq. (10)), so the photo's
  pixels outside the crop come back (Fig. 2(e)). Its update acts in the photo's frame
  (``p <- compose(dp', p)``), so its fixed predictor outputs ``dp' = p_crop o dp o p_crop^-1``:
  both models then apply the same warp, ``I(compose(p_crop, dp))``, and differ only in what they
  can still read.

The figure (``fig2_boundary.png``) shows (a) the photo with the crop box (green) and the region the
zoom-out reads (white, dotted), (b) the crop, (c) the zoom-in (STN and c-STN agree), (d) the STN's
zoom-out and (e) the c-STN's. ``boundary.json`` holds the numeric measure of the lost pixels:
``lost_fraction``, the fraction of output pixels whose STN sample point falls outside the crop's
frame (``|x| > 1`` or ``|y| > 1`` in its canonical units) while the c-STN's falls inside the
photo; ``expected_lost_fraction`` = ``1 - 1/zoom^2`` (the continuous limit); and the fractions of
exactly black output pixels of each model.

Glossary: ``photo`` the full image ``(1, 3, H, W)``; ``p_crop`` the affine warp of the crop box;
``dp`` the zoom (scale ``zoom`` about the frame's centre: ``zoom > 1`` zooms out).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lkstn import runs
from lkstn._backend import ArrayLike
from lkstn.experiments import arguments as types
from lkstn.learned.stn import CSTN, STN
from lkstn.sampling import canonical_grid
from lkstn.warps import Affine

__all__ = ["Fixed", "add_arguments", "boundary_effect", "crop_params", "run"]

IMAGES = ("chelsea", "astronaut")
MAX_SIZE = 1024  # --size: the frame is shown at a few hundred pixels; 1024 peaks at 0.7 GB


class Fixed(nn.Module):
    """A "predictor" that always outputs ``dp`` ``(P,)``, whatever the image."""

    def __init__(self, dp: ArrayLike) -> None:
        super().__init__()
        self.register_buffer("dp", torch.as_tensor(dp, dtype=torch.float64))

    def forward(self, image: Tensor) -> Tensor:
        return self.dp.expand(image.shape[0], -1)


def zoom_params(zoom: float) -> list[float]:
    """Affine ``dp`` sampling at ``zoom * x`` about the frame's centre (``zoom > 1``: zoom out)."""
    return [zoom - 1.0, 0.0, 0.0, 0.0, zoom - 1.0, 0.0]


def crop_params(
    image_shape: tuple[int, int], box: tuple[float, float, float, float]
) -> list[float]:
    """Affine ``p_crop`` of the pixel box ``(x0, y0, x1, y1)`` (corner pixel centres)."""
    H, W = image_shape
    x0, y0, x1, y1 = box
    sx, sy = (x1 - x0) / (W - 1), (y1 - y0) / (H - 1)  # half-widths, canonical units
    cx, cy = (x0 + x1) / (W - 1) - 1.0, (y0 + y1) / (H - 1) - 1.0  # centre, canonical units
    return [sx - 1.0, 0.0, cx, 0.0, sy - 1.0, cy]


def boundary_effect(
    photo: Tensor, p_crop: ArrayLike, zoom: float, size: int = 96
) -> dict[str, Any]:
    """STN and c-STN outputs of one zoom of the crop ``p_crop``, and the lost-pixel measures.

    Parameters
    ----------
    photo : Tensor (1, C, H, W), float64
    p_crop : sequence of 6 floats
        Affine warp of the crop box in the photo.
    zoom : float
        Scale of ``dp`` about the frame's centre (> 1 zooms out).
    size : int
        Side of the square output frame.

    Returns
    -------
    dict
        ``crop``, ``stn``, ``cstn`` images ``(C, size, size)``; ``lost_fraction``,
        ``expected_lost_fraction``, ``black_fraction_stn``, ``black_fraction_cstn`` (floats).
    """
    if not (np.isfinite(zoom) and zoom > 0):
        raise ValueError(f"zoom must be a positive number, got {zoom!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"size must be an int >= 2, got {size!r}")
    warp, shape = Affine(), (size, size)
    p_crop = torch.as_tensor(p_crop, dtype=torch.float64)[None]  # (1, 6)
    dp = torch.tensor([zoom_params(zoom)], dtype=torch.float64)  # in the crop's frame
    # the c-STN's update acts in the photo's frame ([LL17] eq. (10): p <- compose(dp', p)), so it
    # is given dp' = p_crop o dp o p_crop^-1: both models then realise the same warp of the crop
    dp_photo = warp.compose(warp.compose(p_crop, dp), warp.inverse(p_crop))
    stn = STN(Fixed(dp[0]), warp=warp, template_shape=shape).double()
    cstn = CSTN([Fixed(dp_photo[0])], warp=warp, template_shape=shape).double()
    with torch.no_grad():
        crop = stn(photo, p_crop, n_warps=0).image[0]  # I(p_crop)
        out_stn, out_cstn = stn(photo, p_crop), cstn(photo, p_crop)  # eq. (8) / eq. (10)
    grid = canonical_grid(shape)  # (size*size, 2) in the output frame
    in_crop = warp.apply(dp[0].numpy(), grid)  # where the STN samples its crop
    in_photo = warp.apply(out_cstn.p[0].numpy(), grid)  # where the c-STN samples the photo
    outside_crop = (np.abs(in_crop) > 1.0).any(-1)
    inside_photo = (np.abs(in_photo) <= 1.0).all(-1)
    black = lambda image: float((image == 0).all(0).double().mean())  # noqa: E731
    return {
        "crop": crop,
        "stn": out_stn.image[0],
        "cstn": out_cstn.image[0],
        "p_cstn": out_cstn.p[0].tolist(),
        "lost_fraction": float((outside_crop & inside_photo).mean()),
        "expected_lost_fraction": max(0.0, 1.0 - 1.0 / zoom**2),
        "black_fraction_stn": black(out_stn.image[0]),
        "black_fraction_cstn": black(out_cstn.image[0]),
    }


def _photo(name: str) -> Tensor:
    from skimage import data

    if name not in IMAGES:
        raise ValueError(f"image must be one of {IMAGES}, got {name!r}")
    rgb = getattr(data, name)().astype(np.float64) / 255.0  # (H, W, 3)
    return torch.as_tensor(np.moveaxis(rgb, 2, 0))[None]  # (1, 3, H, W)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lkstn reproduce boundary``."""
    parser.add_argument("--image", choices=IMAGES, default="chelsea")
    parser.add_argument("--zoom", type=types.positive_real, default=1.5, help="zoom-out (> 1)")
    parser.add_argument(
        "--size", type=types.integer(8, MAX_SIZE), default=96, help="output frame side (pixels)"
    )
    parser.add_argument("--quick", action="store_true", help="accepted; the run is seconds")
    parser.add_argument("--out", type=types.output_dir, default="runs/boundary")


def run(args: argparse.Namespace) -> int:
    """Draw Fig. 2 and write the lost-pixel measures; returns the exit code."""
    from lkstn.errors import UsageError

    if not (np.isfinite(args.zoom) and args.zoom > 1.0):
        raise UsageError(f"--zoom must be a number > 1 (a zoom-out), got {args.zoom}")
    if args.size < 8:
        raise UsageError(f"--size must be at least 8, got {args.size}")
    photo = _photo(args.image)
    H, W = photo.shape[-2:]
    side = 0.4 * min(H, W)  # a box a little off the centre, as in [LL17] Fig. 2(a)
    x0, y0 = 0.5 * W - 0.45 * side, 0.5 * H - 0.55 * side
    p_crop = crop_params((H, W), (x0, y0, x0 + side, y0 + side))
    zoom_out = boundary_effect(photo, p_crop, args.zoom, args.size)
    zoom_in = boundary_effect(photo, p_crop, 1.0 / args.zoom, args.size)
    record = {
        "image": args.image, "photo_shape": [H, W], "size": args.size, "zoom": args.zoom,
        "p_crop": p_crop,
        **{f"zoom_out_{k}": v for k, v in zoom_out.items() if isinstance(v, float | list)},
        **{f"zoom_in_{k}": v for k, v in zoom_in.items() if isinstance(v, float | list)},
        "command": f"lkstn reproduce boundary --image {args.image} --zoom {args.zoom} "
                   f"--size {args.size} --out {args.out}",
    }  # fmt: skip
    out = Path(args.out)
    runs.write_atomic(out / "boundary.json", json.dumps(record, indent=2))
    path = _figure(photo, p_crop, zoom_out, zoom_in, args.zoom, out / "fig2_boundary.png")
    lost, limit = zoom_out["lost_fraction"], zoom_out["expected_lost_fraction"]
    print(f"lost {100 * lost:.1f} % of the STN's pixels (continuous limit {100 * limit:.1f} %)")
    print(f"figure -> {path}")
    return 0


def _figure(photo, p_crop, zoom_out, zoom_in, zoom: float, path: Path) -> Path:
    from lkstn.viz import box_corners, pyplot

    plt = pyplot()
    img = lambda t: np.clip(np.moveaxis(t.numpy(), 0, -1), 0, 1)  # noqa: E731
    fig, axes = plt.subplots(1, 5, figsize=(12.5, 2.9))
    shape = photo.shape[-2:]
    axes[0].imshow(img(photo[0]))
    axes[0].add_patch(plt.Polygon(box_corners(Affine(), p_crop, shape), fill=False, color="lime"))
    reads = box_corners(Affine(), zoom_out["p_cstn"], shape)
    axes[0].add_patch(plt.Polygon(reads, fill=False, color="white", ls=":", lw=1.5))
    lost, limit = 100 * zoom_out["lost_fraction"], 100 * zoom_out["expected_lost_fraction"]
    panels = [
        (photo[0], "(a) original, crop (green)"),
        (zoom_out["crop"], "(b) crop = transformer input"),
        (zoom_in["stn"], f"(c) zoom-in x{zoom:g}: STN = c-STN"),
        (zoom_out["stn"], f"(d) STN zoom-out: {lost:.0f} % lost"),
        (
            zoom_out["cstn"],
            f"(e) c-STN zoom-out: {100 * zoom_out['black_fraction_cstn']:.0f} % black",
        ),
    ]
    for ax, (image, title) in zip(axes, panels, strict=True):
        if ax is not axes[0]:
            ax.imshow(img(image))
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(
        "[LL17] Fig. 2, boundary effect: lost pixels = STN sample points outside the crop that "
        f"lie inside the photo ({lost:.1f} %; 1 - 1/zoom^2 = {limit:.1f} %)",
        fontsize=8,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=56)
    plt.close(fig)
    from PIL import Image

    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)  # a small PNG
    return path
