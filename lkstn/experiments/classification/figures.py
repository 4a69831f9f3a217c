"""Figures of [LL17] Figs. 8-11 (alignment, per-class mean and variance) and time to accuracy.

The figures use the first test image of each shown class, with its fixed test perturbation (the
one :func:`lkstn.learned.train.train` evaluates with). PNGs are saved small: 64 dpi, 256 colours.

Glossary: ``models`` trained networks by row name; ``p_init`` the fixed test starts ``(M, 8)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.ticker import FormatStrFormatter
from PIL import Image

from lkstn.experiments.classification.rows import SIGMA, Experiment
from lkstn.learned.classify import AlignThenClassify
from lkstn.learned.streams import ClassificationData
from lkstn.viz import plot_grid, plot_mean_variance, pyplot
from lkstn.warps import Homography

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["figure_alignment", "figure_curves", "figure_mean_variance", "save_figure"]


def _test_starts(data: ClassificationData, exp: Experiment, seed: int) -> torch.Tensor:
    """The fixed start ``p_init`` ``(M, 8)`` of every test image, as ``train()`` draws them."""
    M = data.test_images.shape[0]
    return data.test_set(Homography(), exp.template_shape, SIGMA, M, seed)[0].p_init


def _samples(
    exp: Experiment, data: ClassificationData, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the first test image of each shown class ``(n,)``, and their starts ``(n, 8)``."""
    labels = data.test_labels.cpu().numpy()
    idx = [int(np.flatnonzero(labels == c)[0]) for c in exp.figure_classes if (labels == c).any()]
    idx = torch.as_tensor(idx or list(range(min(10, len(labels)))))
    return idx, _test_starts(data, exp, seed)[idx]


def _to_numpy(images: torch.Tensor) -> np.ndarray:
    """``(..., C, h, w)`` -> ``(..., h, w)`` (grey) or ``(..., h, w, 3)``."""
    x = images.detach().cpu().numpy()
    return x[..., 0, :, :] if x.shape[-3] == 1 else np.moveaxis(x, -3, -1)


@torch.no_grad()
def figure_alignment(
    exp: Experiment,
    data: ClassificationData,
    models: dict[str, AlignThenClassify],
    path: Path,
    *,
    seed: int = 0,
) -> Path | None:
    """[LL17] Fig. 8/10: initial perturbation, each recurrence, final, and the STN's output."""
    ic = [n for n in models if n.startswith("IC-STN")]
    if not ic:
        return None
    name = max(ic, key=lambda n: (exp.row(n).n_warps, n.endswith("(a)") or "(" not in n))
    idx, p_init = _samples(exp, data, seed)
    images = data.test_images[idx]
    aligner = models[name].aligner.eval()
    history = aligner(images, p_init).history  # (K+1, B, P)
    S = aligner.sampler
    rows = [S.sample(images, S.matrix(p)) for p in history]  # I(p_k), k = 0..K
    labels = ["initial"] + [f"warp {k}" for k in range(1, len(rows) - 1)] + [f"final ({name})"]
    stn = next((n for n in models if n.startswith("STN")), None)
    if stn is not None:
        rows.append(models[stn].aligner.eval()(images, p_init).image)
        labels.append(stn)
    fig = plot_grid(_to_numpy(torch.stack(rows)), by_rows=True, row_labels=labels)
    return save_figure(fig, path)


@torch.no_grad()
def figure_mean_variance(
    exp: Experiment,
    data: ClassificationData,
    models: dict[str, AlignThenClassify],
    path: Path,
    *,
    seed: int = 0,
) -> Path | None:
    """[LL17] Fig. 9/11: per-class mean and variance of the aligned test images, per model."""
    names = [n for n in exp.figure_rows if n in models]
    if not names:
        return None
    labels = data.test_labels.cpu().numpy()
    classes = [c for c in exp.figure_classes if (labels == c).any()]
    keep = torch.as_tensor(np.flatnonzero(np.isin(labels, classes)))
    images, p_init = data.test_images[keep], _test_starts(data, exp, seed)[keep]
    aligned = {}
    for name in ["perturbed"] + names:
        chunks = []
        for i in range(0, len(keep), 1000):
            if name == "perturbed":
                out = models[names[0]].aligner.sampler
                chunks.append(out.sample(images[i : i + 1000], out.matrix(p_init[i : i + 1000])))
            else:
                aligner = models[name].aligner.eval()
                chunks.append(aligner(images[i : i + 1000], p_init[i : i + 1000]).image)
        aligned[name] = _to_numpy(torch.cat(chunks))
    fig = plot_mean_variance(aligned, labels[keep.numpy()], classes=classes)
    return save_figure(fig, path)


def save_figure(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as a small PNG: 64 dpi, quantised to a 256-colour palette."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=64)
    pyplot().close(fig)
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    return path


def figure_curves(rows: Sequence[dict], other: Sequence[dict]) -> Figure:
    """Test error against wall time of every row of two runs, with the paper's error dotted."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for group, style in ((rows, "-"), (other, "--")):
        for r in group:
            curve = np.asarray(r["curve"], dtype=float).reshape(-1, 3)
            label = f"{r['row']}, {r['recipe']['name']} recipe"
            ax.plot(curve[:, 1] / 60, curve[:, 2], style, marker=".", label=label)
    for r in rows:
        ax.axhline(r["paper"]["test_error"], color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("test error (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
