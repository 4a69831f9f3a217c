"""The rows of [LL17] Tables 2-3, their training recipes, and the network of each row.

Row -> model (:func:`build_model`); every model maps ``(images, p_init)`` to class scores:

- ``CNN``: :class:`~lkstn.learned.classify.AlignThenClassify` of an empty :class:`CSTN` (it only
  samples the perturbed input ``I(p_init)``) and the baseline CNN;
- ``STN``: :class:`STN` (one predictor resampling the crop ``I(p_init)``) + the classifier;
- ``c-STN-K``: :class:`CSTN` with ``K`` distinct predictors composing warps ([LL17] eq. (10));
- ``IC-STN-K``: :class:`ICSTN`, one predictor applied ``K`` times.

Glossary: ``row`` a line of Table 2/3 (``"IC-STN-4(a)"``); ``recipe`` optimizer, learning rates,
iterations; ``exp`` the :class:`Experiment` (dataset, rows, builders) a row belongs to.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from lkstn.learned.classify import AlignThenClassify
from lkstn.learned.stn import CSTN, ICSTN, STN

__all__ = ["SIGMA", "Experiment", "Recipe", "Row", "build_model"]

SIGMA = 3.5  # [LL17] Sec. 5.2: corner and translation noise, template pixels


@dataclass(frozen=True)
class Row:
    """One line of [LL17] Table 2 or 3.

    ``kind`` is ``"cnn"``, ``"stn"``, ``"cstn"`` or ``"icstn"``; ``predictor`` names the
    predictor builder's architecture (``None`` for a CNN); ``paper_error`` (percent) and
    ``paper_capacity`` are the paper's numbers, shown beside ours and never computed with.
    """

    name: str
    kind: Literal["cnn", "stn", "cstn", "icstn"]
    n_warps: int
    predictor: str | None
    paper_error: float
    paper_capacity: int

    @property
    def slug(self) -> str:
        """A file-name form of ``name``: ``IC-STN-4(a)`` -> ``ic-stn-4a``."""
        return self.name.lower().replace("(", "").replace(")", "")


@dataclass(frozen=True)
class Recipe:
    """Optimizer, learning rates and length of a training run."""

    name: str
    optimizer: Literal["sgd", "momentum", "adam"]
    lr_predictor: float
    lr_classifier: float
    n_steps: int
    batch_size: int = 100
    schedule: Literal["constant", "cosine"] = "constant"

    def __post_init__(self) -> None:
        if self.schedule == "cosine" and self.optimizer != "adam":
            raise ValueError(f"schedule='cosine' needs optimizer='adam', got {self.optimizer!r}")


@dataclass(frozen=True)
class Experiment:
    """A dataset, its table rows, model builders, recipes and figure settings."""

    name: str
    table: str
    rows: tuple[Row, ...]
    template_shape: tuple[int, int]
    predictor: Callable[..., nn.Module]  # (arch, generator=) -> nn.Module
    classifier: Callable[..., nn.Module]  # (generator=) -> nn.Module
    cnn: Callable[..., nn.Module]  # (arch, generator=) -> nn.Module
    capacity: Callable[[str], int]
    recipes: dict[str, Recipe]
    # (root, split, size) -> (N, C, h, w), (N,), note; size None: the template's
    load: Callable[
        [str | os.PathLike[str] | None, str, int | None], tuple[np.ndarray, np.ndarray, str]
    ]
    figure_rows: tuple[str, ...]  # Fig. 9/11: the models whose aligned means are shown
    figure_classes: tuple[int, ...]  # the classes shown in Figs. 8-11
    figures: tuple[str, str] = ("alignment", "mean_variance")  # PNG names of Figs. 8/10, 9/11
    quick_sizes: tuple[int, int] = (2000, 500)  # train / test images of --quick
    # --frame authors: images resized to N x N, the template frame a box (x0, y0, x1, y1) in them
    authors_frame: tuple[int, tuple[float, float, float, float]] | None = None
    standardize: bool = False  # the CLI's default input: per-image standardised or [0, 1]

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        names = ", ".join(r.name for r in self.rows)
        raise ValueError(f"rows: {name!r} is not a row of {self.table} ({names})")


def build_model(exp: Experiment, row: Row, generator: torch.Generator) -> AlignThenClassify:
    """The network of ``row``: ``(images (B, C, h, w), p_init (B, 8)) -> scores (B, n_classes)``."""
    shape = exp.template_shape
    if row.kind == "cnn":
        arch = () if row.predictor is None else (row.predictor,)
        return AlignThenClassify(
            CSTN([], template_shape=shape), exp.cnn(*arch, generator=generator)
        )
    preds = [exp.predictor(row.predictor, generator=generator) for _ in range(row.n_warps)]
    if row.kind == "stn":
        aligner = STN(preds[:1], template_shape=shape)  # resamples the crop I(p_init), eq. (8)
    elif row.kind == "cstn":
        aligner = CSTN(preds, template_shape=shape)  # K predictors, warps composed, eq. (10)
    else:
        aligner = ICSTN(preds[0], n_warps=row.n_warps, template_shape=shape)  # one, recurrent
    return AlignThenClassify(aligner, exp.classifier(generator=generator))
