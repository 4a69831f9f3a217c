"""Table 1 and Figs. 6-7 of the planar experiment, drawn from its JSON record and curves.

:func:`table1_markdown` writes the record's Table 1 (ours in three units beside the paper's
published values); :func:`figure6` the image with the true and perturbed boxes and perturbed
samples; :func:`figure7` the error curves of every aligner per warp.
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from lkstn.experiments.curves import ErrorCurves, plot_curves
from lkstn.experiments.planar_setup import SHAPE, Recipe, setup_of
from lkstn.perturb import perturb
from lkstn.problems import PlanarProblem
from lkstn.sampling import warp_image

__all__ = ["figure6", "figure7", "machine", "table1_markdown"]


def table1_markdown(record: dict[str, Any]) -> str:
    """Ours (param L2 canonical / corner template px / corner image px) beside the paper's
    published values, per sigma (in the setup's unit)."""
    sigmas = [f"{s:g}" for s in record["recipe"]["sigmas"]]
    unit = record["setup"]["sigma_unit"]
    head = "| model | " + " | ".join(f"sigma = {s} {unit}" for s in sigmas) + " |"
    setup = record["setup"]
    lines = [
        "Cells: ours param L2 (canonical) / corner error template px / image px (paper's value)."
        f" Setup {setup['name']}: {setup['image']}, box {setup['box']}.",
        "",
        head,
        "|---|" + "---|" * len(sigmas),
    ]
    for name, row in record["table1"].items():
        cells = []
        for s in sigmas:
            r = row[s]
            paper = "—" if r["paper"] is None else f"{r['paper']:.3f}"
            l2, px, im = (
                math.inf if r[k] is None else r[k]
                for k in ("param_l2", "corner_px", "corner_image_px")
            )
            cells.append(f"{l2:.3g} / {px:.3g} / {im:.3g} ({paper})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure6(prob: PlanarProblem, out: Path, recipe: Recipe) -> None:
    """[LL17] Fig. 6: the image, the true (red) and perturbed (yellow) boxes; crops at 7.5 px."""
    import matplotlib.pyplot as plt

    from lkstn.viz import plot_boxes, plot_grid

    rng = np.random.default_rng([recipe.seed, 6])
    setup = setup_of(recipe)
    starts = perturb(prob.warp, prob.p_true, setup.template_sigma(7.5), SHAPE, rng, n=24)  # (24, P)
    fig = plot_boxes(
        prob.image,
        prob.warp,
        prob.p_true,
        starts[:8],
        title=f"{setup.name}: true box (red), perturbed at sigma = 7.5 {setup.sigma_unit} (yellow)",
    )
    fig.savefig(out / "fig6a_boxes.png", dpi=90)
    plt.close(fig)
    crops = warp_image(prob.image, prob.warp, starts, SHAPE)  # (24, h, w)
    fig = plot_grid(
        crops, n_cols=8, title=f"perturbed 50x50 samples, sigma = 7.5 {setup.sigma_unit}"
    )
    fig.savefig(out / "fig6b_samples.png", dpi=90)
    plt.close(fig)


def figure7(curves: ErrorCurves, depth_of: dict[str, int], sigma: str, out: Path) -> None:
    """[LL17] Fig. 7 for every aligner: mean (left) and median (right) corner error per warp."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("mean_corner_px", "median_corner_px"), strict=True):
        plot_curves(
            curves,
            metric=metric,
            trained_depth=depth_of,
            ax=ax,
            title=f"sigma = {sigma}, {curves.n_trials} test starts (error in template px)",
        )
    fig.savefig(out / f"fig7_sigma{sigma.split()[0]}.png", dpi=80)
    plt.close(fig)


def machine() -> str:
    """Architecture, cores, torch version and threads, and the load average at the end."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()} {os.cpu_count()}-core CPU, torch {torch.__version__} "
        f"({torch.get_num_threads()} thread), load average {load:.1f} at the end"
    )
