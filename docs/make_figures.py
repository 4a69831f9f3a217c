"""Draw the documentation site's own figures: the conventions diagram and the benchmark plots.

    python docs/make_figures.py                       # all figures, from the committed JSON
    python docs/make_figures.py --convergence out/classical_vs_ecc.json  # refresh its summary first

* ``figures/conventions/frames.png``: the canonical frame, the warp ``W(x; p)`` from template to
  image, and the order of ``compose(p, q)``, drawn with the library's own warps.
* ``figures/benchmarks/convergence_vs_sigma.png``: percent converged against sigma, from
  ``figures/benchmarks/convergence_vs_sigma.json``, the summary of a run of
  ``benchmarks/classical_vs_ecc.py`` (``--convergence`` rewrites it from that run's JSON).
* ``figures/benchmarks/time_vs_batch.png``: time per alignment against the batch size, from
  ``figures/benchmarks/batch_size.json`` (written by ``benchmarks/batch_size.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage import data  # noqa: E402

from lkstn import Affine, warp_image  # noqa: E402
from lkstn.sampling import canonical_to_pixel  # noqa: E402

FIGURES = Path(__file__).resolve().parent / "figures"
BENCH = FIGURES / "benchmarks"
DPI = 80


def conventions(path: Path) -> None:
    """Three panels: the canonical frame, ``W(x; p)`` template -> image, ``compose`` order."""
    warp = Affine()
    image = data.camera()[::4, ::4] / 255.0  # (128, 128)
    h, w = image.shape
    p = np.array([-0.45, 0.12, 0.05, -0.08, -0.45, -0.1])  # zoom in, a little rotation and shear
    template = warp_image(image, warp, p, (32, 32))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))

    ax = axes[0]  # the canonical frame on a 5x4-pixel image
    ny, nx = 4, 5
    ax.imshow(
        np.indices((ny, nx)).sum(0) % 2,
        cmap="Greys",
        alpha=0.25,
        extent=(-0.5, nx - 0.5, ny - 0.5, -0.5),
    )
    xs, ys = np.meshgrid(np.arange(nx), np.arange(ny))
    ax.plot(xs, ys, "k.", ms=4)
    for cx, cy in [(-1, -1), (1, -1), (-1, 1), (1, 1)]:
        px, py = (cx + 1) * (nx - 1) / 2, (cy + 1) * (ny - 1) / 2  # x_pix = (x + 1)(W - 1)/2
        ax.annotate(
            f"({cx:+d}, {cy:+d})",
            (px, py),
            xytext=(4, -6 if cy < 0 else 10),
            textcoords="offset points",
            fontsize=8,
            color="C3",
        )
        ax.plot(px, py, "o", color="C3", ms=6)
    ax.annotate("", xy=(1.2, -0.35), xytext=(0, -0.35), arrowprops={"arrowstyle": "->"})
    ax.annotate("", xy=(-0.35, 1.2), xytext=(-0.35, 0), arrowprops={"arrowstyle": "->"})
    ax.text(1.25, -0.35, "x", va="center")
    ax.text(-0.35, 1.35, "y", ha="center")
    ax.set_title("canonical frame: corner pixel centres at ±1\n(align_corners=True)", fontsize=9)
    ax.set_xlim(-0.7, nx - 0.3)
    ax.set_ylim(ny - 0.3, -0.7)
    ax.set_axis_off()

    ax = axes[1]  # W(x; p) maps the template frame into the image
    ax.imshow(image, cmap="gray")
    corners = warp.apply(p, warp.corners())  # (4, 2) canonical, in the image
    box = canonical_to_pixel(corners, (h, w))  # (4, 2) pixels
    ax.plot(*box[[0, 1, 2, 3, 0]].T, "-", color="C1", lw=2)
    ax.plot(*box[0], "o", color="C1")
    ax.set_title(
        "W(x; p): template (output) -> image (input)\nwarp_image samples I at W(x; p)", fontsize=9
    )
    ax.set_axis_off()
    inset = ax.inset_axes((0.68, 0.62, 0.3, 0.3))
    inset.imshow(template, cmap="gray")
    inset.set_xticks([])
    inset.set_yticks([])
    inset.set_title("I(p), 32x32", fontsize=7, color="C1")

    ax = axes[2]  # compose(p, q) = M(p) M(q): q acts first
    shift = np.array([0, 0, 0.5, 0, 0, 0])  # x -> x + 0.5
    zoom = np.array([1, 0, 0, 0, 1, 0])  # x -> 2 x
    point = np.array([[1.0, 0.0]])
    first = warp.apply(zoom, point)[0]
    both = warp.apply(warp.compose(shift, zoom), point)[0]
    for xy, label, c in [
        (point[0], "x = (1, 0)", "k"),
        (first, "zoom first: (2, 0)", "C0"),
        (both, "then shift: (2.5, 0)", "C3"),
    ]:
        ax.plot(*xy, "o", color=c)
        ax.annotate(
            label,
            xy,
            xytext=(0, 10 if c != "C0" else -16),
            textcoords="offset points",
            ha="center",
            fontsize=8,
            color=c,
        )
    ax.annotate("", xy=first, xytext=point[0], arrowprops={"arrowstyle": "->", "color": "C0"})
    ax.annotate("", xy=both, xytext=first, arrowprops={"arrowstyle": "->", "color": "C3"})
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax.set(xlim=(0.5, 3), ylim=(-0.6, 0.6))
    ax.set_title(
        "compose(shift, zoom) = M(shift) M(zoom):\nthe right-hand warp acts first", fontsize=9
    )
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def summarise_convergence(run: Path, out: Path) -> None:
    """The percent-converged table of a ``classical_vs_ecc.py`` JSON, its command and machine."""
    full = json.loads(run.read_text())
    problems = []
    for rep in full["convergence"]:
        problems.append(
            {
                "warp": rep["warp"],
                "template_shape": rep["template_shape"],
                "n_trials": rep["n_trials"],
                "sigmas": [r["sigma"] for r in rep["results"]],
                "percent_converged": {
                    m: [r["percent_converged"][m] for r in rep["results"]] for m in rep["methods"]
                },
            }
        )
    summary = {k: full[k] for k in ("command", "machine", "seed", "n_iter", "seconds")}
    out.write_text(json.dumps({**summary, "problems": problems}, indent=1))


def convergence_plot(summary: Path, path: Path) -> None:
    """Percent converged against sigma, one panel per problem."""
    s = json.loads(summary.read_text())
    problems = s["problems"]
    fig, axes = plt.subplots(1, len(problems), figsize=(3.2 * len(problems), 3.2), sharey=True)
    for ax, prob in zip(np.atleast_1d(axes), problems, strict=True):
        for i, (name, pct) in enumerate(prob["percent_converged"].items()):
            style = "--" if name.startswith("ECC") else "-"
            ax.plot(prob["sigmas"], pct, style, marker="o", ms=3, label=name, color=f"C{i}")
        h, w = prob["template_shape"]
        ax.set(title=f"{prob['warp']} {h}x{w}", xlabel="sigma (template px)", ylim=(0, 103))
    np.atleast_1d(axes)[0].set_ylabel(f"% converged ({problems[0]['n_trials']} starts)")
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def batch_plot(measured: Path, path: Path) -> None:
    """Milliseconds per alignment against the batch size, log-log."""
    m = json.loads(measured.read_text())
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, per in m["ms_per_alignment"].items():
        n = np.array([int(k) for k in per])
        style = "--" if name == "ECC" else "-o"
        ax.loglog(
            n,
            list(per.values()),
            style,
            ms=4,
            label=name + (" (one call per start)" if name == "ECC" else ""),
        )
    ax.set(xlabel="starts aligned in one call", ylabel="ms per alignment", title=m["problem"])
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--convergence", type=Path, help="a classical_vs_ecc.py JSON to summarise")
    args = parser.parse_args(argv)
    BENCH.mkdir(parents=True, exist_ok=True)
    (FIGURES / "conventions").mkdir(exist_ok=True)
    if args.convergence:
        summarise_convergence(args.convergence, BENCH / "convergence_vs_sigma.json")
    conventions(FIGURES / "conventions" / "frames.png")
    convergence_plot(BENCH / "convergence_vs_sigma.json", BENCH / "convergence_vs_sigma.png")
    batch_plot(BENCH / "batch_size.json", BENCH / "time_vs_batch.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
