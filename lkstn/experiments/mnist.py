"""[LL17] Table 2, Figs. 8-9: perturbed-MNIST classification with STN, c-STN and IC-STN.

``lkstn reproduce mnist [--rows ROW ...] [--recipe paper|fast] [--quick] [--resume]`` trains every
row of Table 2 on 28x28 MNIST digits perturbed on the fly with the paper's homography noise (sigma
3.5 px on the four corners plus a shared translation), tests on the 10,000 test digits with one
fixed-seed perturbation each, and writes ``table.md``/``results.json`` (the paper's numbers beside
ours) and ``figures/fig8_alignment.png``, ``figures/fig9_mean_variance.png``. The machinery is in
:mod:`lkstn.experiments.classification`.

Recipes: ``paper`` is [LL17] Sec. 5.2: plain SGD, constant learning rates ``1e-2`` (classifier) and
``1e-4`` (geometric predictors), batch 100, 200K iterations. ``fast`` (not in the paper; same
models and mathematics) is Adam with learning rates ``1e-3`` (classifier) and ``3e-4``
(predictors), cosine decay to zero over 20K iterations, batch 100.

Glossary: ``(a)``/``(b)`` the two capacity budgets of Table 2 (about 39K and 19K parameters).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from lkstn.experiments import classification as cl
from lkstn.experiments.classification import Experiment, Recipe, Row
from lkstn.learned import predictors

__all__ = ["MNIST", "add_arguments", "run"]

ROWS = (  # name, kind, warps, predictor, [LL17] Table 2 error (%) and capacity: display only
    Row("CNN(a)", "cnn", 0, "a", 6.597, 39079),
    Row("STN(a)", "stn", 1, "a", 4.944, 39048),
    Row("c-STN-1(a)", "cstn", 1, "a", 3.687, 39048),
    Row("c-STN-2(a)", "cstn", 2, "a2", 2.060, 38528),
    Row("c-STN-4(a)", "cstn", 4, "a4", 1.476, 37376),
    Row("IC-STN-2(a)", "icstn", 2, "a", 1.905, 39048),
    Row("IC-STN-4(a)", "icstn", 4, "a", 1.230, 39048),
    Row("CNN(b)", "cnn", 0, "b", 19.065, 19610),
    Row("STN(b)", "stn", 1, "b", 9.325, 18536),
    Row("c-STN-1(b)", "cstn", 1, "b", 8.545, 18536),
    Row("IC-STN-2(b)", "icstn", 2, "b", 3.717, 18536),
    Row("IC-STN-4(b)", "icstn", 4, "b", 1.703, 18536),
)

RECIPES = {
    "paper": Recipe("paper", "sgd", lr_predictor=1e-4, lr_classifier=1e-2, n_steps=200_000),
    "fast": Recipe(
        "fast", "adam", lr_predictor=3e-4, lr_classifier=1e-3, n_steps=20_000, schedule="cosine"
    ),  # fmt: skip
}


def _load(
    root: str | os.PathLike[str] | None, split: str, size: int | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    from lkstn.data.mnist import load_mnist

    if size not in (None, 28):
        raise ValueError(f"MNIST is read at 28x28 only, got size {size}")

    images, labels = load_mnist(root, split)  # (N, 28, 28) uint8
    return images[:, None], labels, "MNIST, official IDX files, 28x28"


MNIST = Experiment(
    name="mnist",
    table="Table 2",
    rows=ROWS,
    template_shape=(28, 28),
    predictor=predictors.mnist_predictor,
    classifier=predictors.mnist_classifier,
    cnn=predictors.mnist_cnn,
    capacity=predictors.table2_capacity,
    recipes=RECIPES,
    load=_load,
    figure_rows=("STN(a)", "c-STN-1(a)", "IC-STN-2(a)", "IC-STN-4(a)"),
    figure_classes=tuple(range(10)),
    figures=("fig8_alignment", "fig9_mean_variance"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lkstn reproduce mnist``."""
    cl.add_arguments(parser, MNIST)


def run(args: argparse.Namespace) -> int:
    """Train the selected rows of Table 2 and write the table, JSON and figures."""
    return cl.run(MNIST, args)
