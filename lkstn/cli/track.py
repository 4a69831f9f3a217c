"""``lkstn track TEMPLATE FRAME...``: follow a template through a sequence of image files.

Each frame starts from the previous frame's result (:func:`lkstn.track.track`); a frame whose
score drops below ``--min-score`` is re-detected around the last good position, and marked lost
if that fails. Writes ``track.csv`` (one row per frame: file, score, ok, redetected, the
predicted corner spread ``uncertainty`` and the pixel matrix ``h00 ... h22``), ``track.json``
(the same as lists) and an overlay PNG per frame (``--gif``: one animated ``track.gif``
instead; ``--no-overlay``: none). Exit code 0 when every frame was tracked, 1 when some were
lost, 2 for bad input.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from lkstn.cli.align import add_common_arguments, build_aligner, initial_matrix, read_inputs
from lkstn.errors import UsageError

__all__ = ["add_arguments", "run"]

MAX_GIF_FRAMES = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lkstn track``."""
    parser.add_argument("template", metavar="TEMPLATE", help="template image file")
    parser.add_argument("frames", metavar="FRAME", nargs="+", help="frame image files, in order")
    add_common_arguments(parser)
    parser.add_argument("--min-score", type=float, default=0.9,
                        help="ZNCC below which a frame is re-detected, then lost")  # fmt: skip
    parser.add_argument("--gif", action="store_true", help="one track.gif instead of PNGs")
    parser.add_argument("--out", default="lkstn-track", help="output folder")


def _frames(paths: list[str], store: dict):
    """Grey frames one at a time; the colour of the current one is kept in ``store``."""
    for i, path in enumerate(paths):
        _, _, [(grey, colour)] = read_inputs(None, [path], [f"FRAME {i}"])
        store["colour"] = colour
        yield grey


def run(args: argparse.Namespace) -> int:
    """Run ``lkstn track``; returns the exit code."""
    from lkstn.track import track
    from lkstn.warps import warp_from_name

    if not (np.isfinite(args.min_score) and -1 <= args.min_score <= 1):
        raise UsageError(f"--min-score must be in [-1, 1], got {args.min_score}")
    if args.gif and len(args.frames) > MAX_GIF_FRAMES:
        raise UsageError(f"--gif: at most {MAX_GIF_FRAMES} frames, got {len(args.frames)}")
    warp = warp_from_name(args.warp)
    template, mask, [(first, _)] = read_inputs(args.template, args.frames[:1], ["FRAME 0"])
    aligner = build_aligner(args, template, mask, warp)
    H0 = initial_matrix(args, warp, template.shape, first.shape)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    store: dict = {}
    gif: list[np.ndarray] = []

    def on_frame(i: int, a) -> None:
        if args.no_overlay:
            return
        from PIL import Image

        from lkstn.overlay import overlay_image

        title = f"frame {i}: score {a.score:.3f}"
        picture = overlay_image(store["colour"], template, a.H, a.H_init, title=title,
                                height=160 if args.gif else 300)  # fmt: skip
        if args.gif:
            gif.append(picture)
        else:
            Image.fromarray(picture).save(folder / f"frame_{i:04d}.png")

    try:
        result = track(aligner, _frames(args.frames, store), H0, min_score=args.min_score,
                       template=template, mask=mask, callback=on_frame)  # fmt: skip
    except ValueError as exc:
        if str(exc).startswith("warp:"):
            raise UsageError(f"--{exc}") from None
        raise
    _write(folder, args.frames, result)
    if gif:
        from PIL import Image

        images = [Image.fromarray(g) for g in gif]
        images[0].save(folder / "track.gif", save_all=True, append_images=images[1:],
                       duration=100, loop=0)  # fmt: skip
    n_lost = int((~result.ok).sum())
    print(f"{len(args.frames) - n_lost}/{len(args.frames)} frames tracked, "
          f"min score {np.nanmin(result.score):.4f} -> {folder}/track.csv")  # fmt: skip
    return 0 if n_lost == 0 else 1


def _write(folder: Path, paths: list[str], result) -> None:
    names = [f"h{r}{c}" for r in range(3) for c in range(3)]
    with open(folder / "track.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "file", "score", "ok", "redetected", "uncertainty", *names])
        for i, path in enumerate(paths):
            row = [i, path, f"{result.score[i]:.6f}", int(result.ok[i]), int(result.redetected[i]),
                   f"{result.uncertainty[i]:.6f}"]  # fmt: skip
            w.writerow(row + [repr(float(v)) for v in result.H[i].ravel()])
    record = {
        "frames": list(paths),
        "pixel_matrix": result.H.tolist(),
        "score": [float(s) for s in result.score],
        "ok": result.ok.tolist(),
        "redetected": result.redetected.tolist(),
        "uncertainty": [None if np.isnan(u) else float(u) for u in result.uncertainty],
        "conventions": "pixel_matrix maps template pixels to frame pixels (OpenCV warpMatrix)",
    }
    (folder / "track.json").write_text(json.dumps(record, indent=2))
