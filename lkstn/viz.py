"""Figures with matplotlib: boxes on images, sample grids, error curves, mean/variance images.

Every function draws into a given ``ax`` (or makes a figure) and returns the figure, so that
notebooks show them inline and the experiments save them as small PNGs.

Glossary: ``box`` the template frame's corners mapped into the image (pixels), ``curves`` a
mapping from a name to per-iteration mean errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from lkstn.overlay import checkerboard, outline, panels, save_overlay
from lkstn.sampling import canonical_to_pixel
from lkstn.warps import Warp

if TYPE_CHECKING:  # matplotlib is imported on first use
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "box_corners",
    "pyplot",
    "checkerboard",
    "plot_boxes",
    "plot_error_curves",
    "plot_grid",
    "plot_mean_variance",
    "plot_overlay",
    "save_overlay",
]

MAX_FIGSIZE = (14.0, 4.5)
"""Largest overlay figure (inches): at 100 dpi it fits a laptop screen whatever the input size."""


def pyplot() -> ModuleType:
    """``matplotlib.pyplot``, imported on first use (``import lkstn.viz`` stays light).

    No backend is forced: matplotlib picks Agg by itself where there is no display, and a
    notebook keeps its inline backend (forcing Agg there would hide every figure).
    """
    import matplotlib.pyplot as plt

    return plt


def box_corners(warp: Warp, p: npt.ArrayLike, image_shape: tuple[int, ...]) -> np.ndarray:
    """The template corners under ``W(.; p)``, in image pixels, ``(..., 4, 2)``."""
    p = np.asarray(p, dtype=float)
    return canonical_to_pixel(warp.apply(p, warp.corners()), tuple(image_shape[:2]))


def plot_boxes(
    image: np.ndarray,
    warp: Warp,
    p_true: npt.ArrayLike,
    p_others: npt.ArrayLike | None = None,
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """The image with the ground-truth box (red) and other boxes (yellow), [LL17] Fig. 6(a)."""
    plt = pyplot()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5, 4))
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    if p_others is not None:
        for c in box_corners(warp, np.atleast_2d(p_others), image.shape):
            ax.add_patch(plt.Polygon(c, fill=False, color="gold", lw=0.8))
    ax.add_patch(plt.Polygon(box_corners(warp, p_true, image.shape), fill=False, color="red", lw=2))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def plot_grid(
    images: np.ndarray,
    *,
    n_cols: int = 8,
    by_rows: bool = False,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    cmap: str = "gray",
) -> Figure:
    """A grid of images: ``(N, h, w[, 3])`` wrapped at ``n_cols``, or with ``by_rows=True``
    ``(R, N, h, w[, 3])``, one row per leading index (e.g. one row per recurrence)."""
    plt = pyplot()
    images = np.asarray(images, dtype=float)
    rows = images if by_rows else _as_rows(images, n_cols)  # (R, N, h, w[, 3])
    n_rows, n_c = rows.shape[0], rows.shape[1]
    fig, axes = plt.subplots(n_rows, n_c, figsize=(n_c * 1.0, n_rows * 1.0), squeeze=False)
    lo, hi = float(np.nanmin(rows)), float(np.nanmax(rows))
    for r in range(n_rows):
        for c in range(n_c):
            ax = axes[r, c]
            ax.imshow(np.clip((rows[r, c] - lo) / max(hi - lo, 1e-12), 0, 1), cmap=cmap)
            ax.set_xticks([])
            ax.set_yticks([])
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _as_rows(images: np.ndarray, n_cols: int) -> np.ndarray:
    n = images.shape[0]
    n_rows = -(-n // n_cols)
    pad = n_rows * n_cols - n
    if pad:
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]))], 0)
    return images.reshape(n_rows, n_cols, *images.shape[1:])


def plot_error_curves(
    curves: Mapping[str, Sequence[float]],
    *,
    trained_depth: Mapping[str, int] | None = None,
    ylabel: str = "mean corner error (px)",
    xlabel: str = "number of warps / iterations",
    title: str | None = None,
    log: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Mean error against the iteration count, one curve per aligner ([LL17] Fig. 7).

    ``curves[name][k]`` is the error after ``k`` warps (index 0 is the start). A dot marks
    ``trained_depth[name]``, where a network's unfolded training depth ends.
    """
    plt = pyplot()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
    for name, ys in curves.items():
        ys = np.asarray(ys, dtype=float)
        (line,) = ax.plot(np.arange(len(ys)), ys, label=name, lw=1.5)
        if trained_depth and name in trained_depth and trained_depth[name] < len(ys):
            k = trained_depth[name]
            ax.plot([k], [ys[k]], "o", color=line.get_color(), ms=6)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_mean_variance(
    aligned: Mapping[str, np.ndarray], labels: np.ndarray, *, classes: Sequence[int] | None = None
) -> Figure:
    """Per-class mean and variance of aligned images, one row pair per model ([LL17] Fig. 9/11).

    ``aligned[name]`` is ``(N, h, w)`` or ``(N, h, w, 3)``; ``labels`` is ``(N,)``.
    """
    plt = pyplot()
    labels = np.asarray(labels)
    classes = list(np.unique(labels) if classes is None else classes)
    names = list(aligned)
    fig, axes = plt.subplots(
        2 * len(names), len(classes), figsize=(len(classes) * 0.9, 2 * len(names) * 0.9),
        squeeze=False,
    )  # fmt: skip
    for i, name in enumerate(names):
        imgs = np.asarray(aligned[name], dtype=float)
        for j, c in enumerate(classes):
            sel = imgs[labels == c]
            mean, var = sel.mean(0), sel.var(0)
            if mean.ndim == 3:
                var = var.mean(-1)
            lo = min(float(mean.min()), 0.0)  # standardised images go below zero
            mean = (mean - lo) / max(float(mean.max()) - lo, 1e-12)
            axes[2 * i, j].imshow(np.clip(mean, 0, 1), cmap="gray")
            axes[2 * i + 1, j].imshow(var, cmap="magma")
            for ax in (axes[2 * i, j], axes[2 * i + 1, j]):
                ax.set_xticks([])
                ax.set_yticks([])
        axes[2 * i, 0].set_ylabel(f"{name}\nmean", fontsize=6)
        axes[2 * i + 1, 0].set_ylabel("variance", fontsize=6)
    fig.tight_layout()
    return fig


def plot_overlay(
    image: np.ndarray,
    template: np.ndarray,
    H: npt.ArrayLike,
    H_init: npt.ArrayLike | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """What an alignment found, for a person: four panels on one row.

    The image (in colour if it has colour) with the start box (dashed) and the result box
    (solid) and a legend; the template; the image registered onto the template at ``H``;
    a checkerboard of template and registered image (edges run on across the tiles where the
    alignment is right). ``H`` and ``H_init`` are pixel matrices (:mod:`lkstn.pixels`).
    The figure is at most :data:`MAX_FIGSIZE` inches whatever the image size. Made without
    pyplot (a bare :class:`matplotlib.figure.Figure`), so no backend or window is involved.
    :func:`lkstn.overlay.save_overlay` (re-exported here) writes the same panels with Pillow.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Polygon

    shown = panels(image, template, H)
    image = np.asarray(image, dtype=float)
    ih, iw = image.shape[:2]
    th, tw = np.asarray(template).shape[:2]
    ratios = [iw / ih, tw / th, tw / th, tw / th]
    height = MAX_FIGSIZE[0] / (sum(ratios) + 0.3)
    height = min(MAX_FIGSIZE[1], height)
    fig = Figure(figsize=(min(MAX_FIGSIZE[0], height * (sum(ratios) + 0.3)), height + 0.6))
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": ratios})
    axes[0].imshow(shown[0][0], cmap="gray" if image.ndim == 2 else None)
    if H_init is not None:
        axes[0].add_patch(Polygon(outline(H_init, (th, tw)), fill=False, ls="--", lw=1.5,
                                  color="orange", label="start"))  # fmt: skip
    axes[0].add_patch(Polygon(outline(H, (th, tw)), fill=False, lw=2, color="cyan",
                              label="result"))  # fmt: skip
    axes[0].legend(loc="upper right", fontsize=8, framealpha=0.8)
    axes[0].set_xlim(-0.5, iw - 0.5)
    axes[0].set_ylim(ih - 0.5, -0.5)
    axes[0].set_title("image", fontsize=9)
    for ax, (img, name) in zip(axes[1:], shown[1:], strict=True):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
