"""``lkstn align`` as a whole: wall and CPU time of the command, beside Python's own floor.

For each of six scikit-image photos, a 128 px template cut at a known homography (8-bit PNG) and
the photo relit and noisy (8-bit PNG), as in ``examples/register_pair.py``; one untimed run that
writes the modules' bytecode, as an installation does (even where the environment sets
``PYTHONDONTWRITEBYTECODE``, which the report records); then, per photo and repeat, interleaved:
``python -c pass`` (the interpreter and its site packages), ``python -c "import numpy"`` (the
floor any NumPy program pays), ``python -m lkstn align --no-overlay`` and ``python -m lkstn
align`` with its overlay PNG, each in a fresh process with the defaults (``ICLK.robust``,
affine). Reports median and best wall time and the median CPU time (user + system of the child),
the largest resident memory of any child, with the load average and the machine. ``--tile N``
repeats each image N x N times (the template's box stays in the first tile): a large photograph,
where the overlay has to shrink the image. ``--upscale F`` enlarges each photo F times
(bilinear) before the template is cut, and ``--side`` sets the template's side: a large box
drawn on a camera's photograph.

Usage::

    python benchmarks/align_command.py [--repeats 3] [--out out/align_command.json]
    python benchmarks/align_command.py --photos camera --tile 12   # a 6144 x 6144 image
    python benchmarks/align_command.py --photos camera,astronaut --upscale 6 --side 1024
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from skimage import color, data, io, transform

from lkstn.machine import fingerprint
from lkstn.pixels import warp_image_pixels

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")
SIDE = 128


def make_pair(name: str, folder: Path, rng, tile: int = 1, side: int = SIDE,
              upscale: float = 1.0) -> list[str]:  # fmt: skip
    """Template and image files of one photo; the ``--box`` of the template's true corners."""
    rgb = getattr(data, name)()
    grey = color.rgb2gray(rgb) if rgb.ndim == 3 else rgb / 255.0
    if upscale != 1.0:
        grey = transform.rescale(grey, upscale, order=1)
    H_img, W_img = grey.shape
    x0, y0 = (W_img - side) / 2 + rng.uniform(-20, 20), (H_img - side) / 2 + rng.uniform(-20, 20)
    H = np.array([[1.02, 0.03, x0], [-0.02, 0.99, y0], [1e-5, -2e-5, 1.0]])
    template = warp_image_pixels(grey, H, (side, side))
    image = np.clip(0.8 * grey + 0.1 + rng.normal(0, 0.01, grey.shape), 0, 1)
    t_path, i_path = folder / f"{name}_t.png", folder / f"{name}_i.png"
    io.imsave(t_path, (template * 255).round().astype(np.uint8), check_contrast=False)
    image = np.tile(image, (tile, tile))
    io.imsave(i_path, (image * 255).round().astype(np.uint8), check_contrast=False)
    corners = np.array([[0.0, 0.0, 1.0], [side - 1.0, side - 1.0, 1.0]]) @ H.T
    (x0, y0), (x1, y1) = corners[:, :2] / corners[:, 2:]
    box = [f"{v + 3.0:.1f}" for v in (x0, y0, x1, y1)]  # a start 3 px off
    return [str(t_path), str(i_path), "--box", *box]


def timed(command: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system of the child) and exit code of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    code = out.returncode
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, code


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs of each command per photo")
    ap.add_argument("--photos", default=",".join(PHOTOS))
    ap.add_argument("--tile", type=int, default=1, help="the image repeated N x N times")
    ap.add_argument("--side", type=int, default=SIDE, help="template side (pixels)")
    ap.add_argument("--upscale", type=float, default=1.0, help="each photo enlarged F times")
    ap.add_argument("--out", type=Path, default=None, help="JSON report")
    args = ap.parse_args(argv)
    py = sys.executable
    load = [os.getloadavg()]
    runs: dict[str, list] = {}
    codes: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        pairs = [
            make_pair(name, folder, rng, args.tile, args.side, args.upscale)
            for name in args.photos.split(",")
        ]
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "python -c 'import numpy'": [py, "-c", "import numpy"],
            "lkstn align --no-overlay": None,
            "lkstn align": None,
        }
        # the caches warm, the modules' bytecode included: pip compiles it at install, and a
        # first import writes it, unless PYTHONDONTWRITEBYTECODE is set (then every run would
        # compile from source what has no bytecode yet, some 0.07 s of a run)
        writes = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        timed([py, "-m", "lkstn", "align", *pairs[0], "--out", str(folder / "warm")], writes)
        for _ in range(args.repeats):
            for pair in pairs:
                for key, command in commands.items():
                    if command is None:
                        command = [py, "-m", "lkstn", "align", *pair, "--out", str(folder / "o")]
                        command += ["--no-overlay"] if "no-overlay" in key else []
                    wall, cpu, code = timed(command)
                    runs.setdefault(key, []).append((wall, cpu))
                    if key.startswith("lkstn"):
                        codes.append(code)
    load.append(os.getloadavg())
    rows = []
    for key, values in runs.items():
        wall, cpu = np.array(values).T
        row = {
            "command": key,
            "runs": len(wall),
            "wall_median_s": round(float(np.median(wall)), 3),
            "wall_best_s": round(float(wall.min()), 3),
            "wall_worst_s": round(float(wall.max()), 3),
            "cpu_median_s": round(float(np.median(cpu)), 3),
        }
        rows.append(row)
        print(
            f"{key:28s} wall median {row['wall_median_s']:.3f} s (best {row['wall_best_s']:.3f},"
            f" worst {row['wall_worst_s']:.3f}), CPU median {row['cpu_median_s']:.3f} s"
        )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # MiB (Linux: KiB)
    print(f"largest resident memory of a child: {peak:.0f} MiB")
    converged = sum(c == 0 for c in codes)
    print(f"alignments converged (exit 0): {converged} of {len(codes)}")
    print(f"load average {load[0]} -> {load[1]}")
    report = {
        "rows": rows,
        "converged": [converged, len(codes)],
        "tile": args.tile,
        "side": args.side,
        "upscale": args.upscale,
        "peak_child_rss_mib": round(peak),
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),  # warm-up aside
        "load": load,
        "machine": fingerprint(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    cpu = report["machine"]["cpu"]
    print(f"CPU: {cpu['model_name']} (family {cpu['family']} model {cpu['model']})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0 if converged == len(codes) else 1


if __name__ == "__main__":
    sys.exit(main())
