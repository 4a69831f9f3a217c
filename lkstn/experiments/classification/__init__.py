"""Joint alignment/classification, [LL17] Secs. 5.2-5.3: model zoo, training runs, tables, figures.

One :class:`Experiment` per dataset (:mod:`lkstn.experiments.mnist` for Table 2,
:mod:`lkstn.experiments.gtsrb` for Table 3) lists its table rows; this package builds the model of
each row, trains it with a :class:`Recipe` on images perturbed on the fly with the paper's
homography noise (sigma 3.5 template pixels on the four corners plus a shared translation,
:mod:`lkstn.learned.streams`), evaluates it on the whole test set with one fixed-seed perturbation
per image, and writes ``row.json`` per row, ``results.json`` and ``table.md`` (the paper's numbers
beside ours, as display data only) and the figures of [LL17] Figs. 8-11.

Modules, one concern each:

- :mod:`~lkstn.experiments.classification.rows`: rows, recipes, experiments, the model of a row;
- :mod:`~lkstn.experiments.classification.dataset`: train and test images, standardisation;
- :mod:`~lkstn.experiments.classification.training`: a row trained in chunks, with wall times,
  time limits and resumes (``progress.jsonl``);
- :mod:`~lkstn.experiments.classification.report`: ``row.json``, ``results.json``, ``table.md``;
- :mod:`~lkstn.experiments.classification.figures`: [LL17] Figs. 8-11, time to accuracy;
- :mod:`~lkstn.experiments.classification.command`: the options and the run of
  ``lkstn reproduce mnist|gtsrb``.
"""

from __future__ import annotations

from lkstn.experiments.classification.command import add_arguments, load_model, machine, run
from lkstn.experiments.classification.dataset import load_data, standardize_images
from lkstn.experiments.classification.figures import (
    figure_alignment,
    figure_curves,
    figure_mean_variance,
    save_figure,
)
from lkstn.experiments.classification.report import (
    collect,
    row_summary,
    time_to_accuracy,
    write_report,
)
from lkstn.experiments.classification.rows import SIGMA, Experiment, Recipe, Row, build_model
from lkstn.experiments.classification.training import (
    cosine_schedule,
    row_progress,
    train_row,
)

__all__ = [
    "SIGMA",
    "Experiment",
    "Recipe",
    "Row",
    "add_arguments",
    "build_model",
    "collect",
    "cosine_schedule",
    "figure_alignment",
    "figure_curves",
    "figure_mean_variance",
    "load_data",
    "load_model",
    "machine",
    "row_progress",
    "row_summary",
    "run",
    "save_figure",
    "standardize_images",
    "time_to_accuracy",
    "train_row",
    "write_report",
]
