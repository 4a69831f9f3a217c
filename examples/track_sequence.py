"""Track a template through a synthetic sequence made from a photo, and check it against the truth.

    python examples/track_sequence.py [--photo coffee] [--n-frames 30] [--out out/track]

Frame ``t`` shows ``skimage.data.<photo>()`` moved so that a 96 px template sits at a known,
smoothly changing homography ``motion(t)`` (a drift of 40 px, a few degrees of shear and a mild
perspective), plus noise; frame 12 jumps 25 px to the right, beyond one alignment's reach, so
that re-detection has work to do. The frames are written as PNGs and tracked with
:func:`lkstn.track.track` (the Python API) from a box 5 px off; it prints the corner error per frame
against the truth and writes a figure of three frames. The command line does the same:
``lkstn track OUT/template.png OUT/frame_*.png --warp homography --box X0 Y0 X1 Y1 --gif``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lkstn import ICLK, Homography, box_matrix, read_image
from lkstn.pixels import warp_image_pixels
from lkstn.track import track

SIDE = 96


def motion(t: float, x0: float, y0: float) -> np.ndarray:
    """Pixel matrix of the template in frame ``t``: smooth in ``t``."""
    return np.array([
        [1 + 0.05 * np.sin(t / 5), 0.03 * np.sin(t / 7), x0 + 40 * np.sin(t / 6)],
        [0.02 * np.cos(t / 5), 1 - 0.04 * np.sin(t / 4), y0 + 20 * np.cos(t / 8)],
        [1e-4 * np.sin(t / 9), 5e-5 * np.cos(t / 6), 1.0],
    ])  # fmt: skip


def corner_error(H: np.ndarray, G: np.ndarray) -> float:
    c = np.array([[0, 0, 1], [SIDE - 1, 0, 1], [SIDE - 1, SIDE - 1, 1], [0, SIDE - 1, 1.0]])
    a, b = c @ H.T, c @ G.T
    return float(np.sqrt(((a[:, :2] / a[:, 2:] - b[:, :2] / b[:, 2:]) ** 2).sum(1).mean()))


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def make_sequence(photo_name: str, n_frames: int, out: Path, rng) -> tuple[Path, list, list]:
    """Write the template and the frames; return their paths and the true pixel matrices."""
    from skimage import data, io
    from skimage.util import img_as_float

    photo = img_as_float(getattr(data, photo_name)())
    h, w = photo.shape[:2]
    x0, y0 = w / 2 - SIDE / 2, h / 2 - SIDE / 2
    ref = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
    io.imsave(out / "template.png", to_uint8(warp_image_pixels(photo, ref, (SIDE, SIDE))))
    paths, truth = [], []
    for t in range(n_frames):
        H_t = motion(t, x0, y0)
        if t == 12:
            H_t = np.array([[1.0, 0, 25], [0, 1.0, 0], [0, 0, 1.0]]) @ H_t  # a sudden jump
        # frame(x) = photo(G x) with G H_t = ref: the template appears at H_t
        frame = warp_image_pixels(photo, ref @ np.linalg.inv(H_t), (h, w))
        frame = frame + rng.normal(0, 0.01, frame.shape)
        paths.append(out / f"frame_{t:03d}.png")
        io.imsave(paths[-1], to_uint8(frame), check_contrast=False)
        truth.append(H_t)
    return out / "template.png", paths, truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photo", default="coffee")
    parser.add_argument("--n-frames", type=int, default=30)
    parser.add_argument("--out", default="out/track", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t_path, paths, truth = make_sequence(args.photo, args.n_frames, args.out,
                                         np.random.default_rng(args.seed))  # fmt: skip
    template, _ = read_image(t_path)
    x0, y0 = truth[0][:2, 2] + [4.0, -3.0]  # a box 5 px from the truth
    start = box_matrix(Homography(), (x0, y0, x0 + SIDE - 1, y0 + SIDE - 1), template.shape)
    aligner = ICLK(template, warp=Homography(), pyramid=2, photometric="gain-bias")
    frames = (read_image(p)[0] for p in paths)  # one frame in memory at a time
    result = track(aligner, frames, start, min_score=0.9)
    errors = np.array([corner_error(H, G) for H, G in zip(result.H, truth, strict=True)])
    for t in range(len(paths)):
        note = " (re-detected)" if result.redetected[t] else ""
        print(f"frame {t:3d}: error {errors[t]:.3f} px, score {result.score[t]:.4f}{note}")
    print(f"max error {errors.max():.3f} px, mean {errors.mean():.3f} px, "
          f"{int(result.ok.sum())}/{len(paths)} frames tracked")  # fmt: skip
    _figure(args.out / "track_frames.png", paths, template, result, [0, 12, len(paths) - 1])
    return 0 if result.ok.all() else 1


def _figure(path: Path, paths: list, template: np.ndarray, result, picks: list[int]) -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Polygon

    fig = Figure(figsize=(4 * len(picks), 3.2))
    c = np.array([[0, 0, 1], [SIDE - 1, 0, 1], [SIDE - 1, SIDE - 1, 1], [0, SIDE - 1, 1.0]])
    for ax, t in zip(fig.subplots(1, len(picks)), picks, strict=True):
        colour, _ = read_image(paths[t], as_grey=False)
        ax.imshow(colour)
        m = c @ result.H[t].T
        ax.add_patch(Polygon(m[:, :2] / m[:, 2:], fill=False, color="cyan", lw=2))
        ax.set_title(f"frame {t}: score {result.score[t]:.3f}", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    raise SystemExit(main())
