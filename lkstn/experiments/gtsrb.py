"""[LL17] Table 3, Figs. 10-11: perturbed-GTSRB traffic-sign classification, STN to IC-STN-4.

``lkstn reproduce gtsrb [--rows ROW ...] [--recipe paper|fast] [--quick] [--resume]`` trains every
row of Table 3 on 36x36 RGB signs perturbed on the fly with the homography noise of [LL17] Sec. 5.2
(sigma 3.5 px on the four corners plus a shared translation, as the paper says: "the same
homography warp noise model"), tests on the 12,630 test signs with one fixed-seed perturbation
each, and writes ``table.md``/``results.json`` and ``figures/fig10_alignment.png``,
``figures/fig11_mean_variance.png``. The machinery is in :mod:`lkstn.experiments.classification`.

Data: the official layout gives ROI crops resized to 36x36. A prepared ``gtsrb*.npz`` of another
size (the shared copy is 32x32) is resampled to 36x36 with scikit-image's bilinear resize
(:func:`lkstn.data.gtsrb.resize_images`), and every table says so: the paper resized the
original crops, so numbers from a 32x32 copy are not strictly comparable. Each image is
standardised per channel before warping (zero mean, unit variance over the image), as the authors'
traffic-sign code does and the paper does not say; ``--no-standardize`` keeps [0, 1] intensities
(every GTSRB run made before 2026-11-27).

Recipes: ``paper`` is [LL17] Sec. 5.3: plain SGD, constant learning rates ``1e-3`` (classifier)
and ``1e-5`` (geometric predictor), batch 100, 200K iterations (the iteration count is given for
MNIST only and assumed the same). ``fast`` (not in the paper, and not tuned for GTSRB): Adam,
``1e-3`` (classifier) / ``1e-4`` (predictor), cosine decay over 20K iterations; the MNIST fast
predictor rate ``3e-4`` made the GTSRB STN diverge (NaN loss at step 534 of a 2000-step run).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

import numpy as np

from lkstn.experiments import classification as cl
from lkstn.experiments.classification import Experiment, Recipe, Row
from lkstn.learned import predictors

if TYPE_CHECKING:
    import torch

__all__ = ["GTSRB", "SIZE", "add_arguments", "run"]

SIZE = 36  # [LL17] Sec. 5.3: "rescale all images and generate perturbed samples of size 36x36"

ROWS = (  # name, kind, warps, predictor, [LL17] Table 3 error (%) and capacity: display only
    Row("CNN", "cnn", 0, None, 8.287, 200207),
    Row("STN", "stn", 1, "", 6.495, 197343),
    Row("c-STN-1", "cstn", 1, "", 5.011, 197343),
    Row("IC-STN-2", "icstn", 2, "", 4.122, 197343),
    Row("IC-STN-4", "icstn", 4, "", 3.184, 197343),
)

RECIPES = {
    "paper": Recipe("paper", "sgd", lr_predictor=1e-5, lr_classifier=1e-3, n_steps=200_000),
    "fast": Recipe(
        "fast", "adam", lr_predictor=1e-4, lr_classifier=1e-3, n_steps=20_000, schedule="cosine"
    ),  # fmt: skip
}


def _predictor(arch: str = "", *, generator: torch.Generator | None = None) -> predictors.ConvNet:
    return predictors.gtsrb_predictor(generator=generator)  # Table 3 has one predictor architecture


def _cnn(*, generator: torch.Generator | None = None) -> predictors.ConvNet:
    return predictors.gtsrb_cnn(generator=generator)


def _load(
    root: str | os.PathLike[str] | None, split: str, size: int | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    from lkstn.data.gtsrb import gtsrb_is_official, load_gtsrb, resize_images

    roi = size is None  # the authors' frame (a size) keeps the margin around the sign
    size = size or SIZE
    official = gtsrb_is_official(root, split)  # resized from the originals; an npz from its size
    images, labels = load_gtsrb(root, split, size=size if official else None, roi=roi)
    note = f"GTSRB, {size}x{size} RGB" + ("" if roi or not official else ", whole images")
    if images.shape[1:3] != (size, size):
        note += (f" resampled from a {images.shape[1]}x{images.shape[2]} copy "
                 "(skimage bilinear resize; the paper resized the original crops)")  # fmt: skip
        images = resize_images(images, size)
    return np.moveaxis(images, 3, 1), labels, note  # (N, 3, 36, 36)


GTSRB = Experiment(
    name="gtsrb",
    table="Table 3",
    rows=ROWS,
    template_shape=(SIZE, SIZE),
    predictor=_predictor,
    classifier=predictors.gtsrb_classifier,
    cnn=_cnn,
    capacity=predictors.table3_capacity,
    recipes=RECIPES,
    load=_load,
    figure_rows=("STN", "c-STN-1", "IC-STN-2", "IC-STN-4"),
    figure_classes=(1, 2, 4, 9, 12, 13, 14, 17, 25, 38),  # 14: stop sign ([LL17] Sec. 5.3)
    figures=("fig10_alignment", "fig11_mean_variance"),
    quick_sizes=(2000, 500),
    authors_frame=(50, (7.0, 7.0, 43.0, 43.0)),  # traffic-sign/options.py: sizeFull, bbox
    standardize=True,  # traffic-sign/train.py: (image - mean) / std per image and channel
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lkstn reproduce gtsrb``."""
    cl.add_arguments(parser, GTSRB)


def run(args: argparse.Namespace) -> int:
    """Train the selected rows of Table 3 and write the table, JSON and figures."""
    return cl.run(GTSRB, args)
