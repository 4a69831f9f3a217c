"""[LL17] Table 1's 20 trainings as batched sweeps: here, in processes, or as Ray tasks.

:func:`train_table1` trains every ``(sigma, depth)`` cell of :mod:`lkstn.experiments.planar`
with the recipe of :func:`~lkstn.experiments.planar.train_model` (same models, phases, learning
rates, data streams and run directories ``runs/sigma{s}/{name}/phase{i}``), but many cells at a
time with :func:`lkstn.learned.sweep.train_sweep`:

- ``executor="local"``: one job, all cells in one sweep per phase;
- ``executor="processes"`` or ``"ray"``: one job per sigma (a row of Fig. 7, five depths in one
  sweep), each in its own process on this machine's cores, or a Ray task that resumes from its
  cells' checkpoints if its worker dies (:mod:`lkstn.experiments.executors`).

A job returns each cell's state dict and the job's training seconds; the caller loads the state
into a fresh :func:`~lkstn.experiments.planar.build_model` and evaluates as before.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lkstn.errors import UsageError
from lkstn.experiments.executors import add_executor_arguments, resolve_auto, run_jobs

if TYPE_CHECKING:  # torch is imported on first use
    from lkstn.experiments.planar_setup import Recipe
    from lkstn.learned.train import TrainConfig

__all__ = ["add_sweep_arguments", "phase_config", "sweep_options", "train_cells", "train_table1"]

Cell = tuple[float, int]  # (sigma in the setup's unit, depth K)


def phase_config(
    recipe: Recipe, sigma: float, depth: int, phase: int, progress: bool = False
) -> TrainConfig:
    """The :class:`~lkstn.learned.train.TrainConfig` of one learning-rate phase of one model."""
    from lkstn.experiments.planar_setup import setup_of
    from lkstn.learned.train import TrainConfig

    steps = recipe.n_steps // len(recipe.phases)
    return TrainConfig(
        n_steps=steps,
        sigma=setup_of(recipe).template_sigma(sigma),
        batch_size=recipe.batch_size,
        optimizer="adam",
        lr_predictor=recipe.lr * recipe.phases[phase] / depth,
        seed=recipe.seed * 100 + phase,
        n_test=recipe.batch_size,
        eval_every=steps,
        checkpoint_every=min(steps, 500),
        progress=progress,
    )


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sweep batched|separate``, ``--executor auto|local|processes|ray``, ``--address``."""
    parser.add_argument(
        "--sweep",
        choices=("batched", "separate"),
        default="batched",
        help="train the models together (lkstn.learned.sweep) or one at a time",
    )
    add_executor_arguments(parser)


def sweep_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of ``run_experiment`` from those options (``UsageError`` if they clash)."""
    if args.executor not in ("auto", "local") and args.sweep != "batched":
        raise UsageError(f"--executor {args.executor} needs --sweep batched")
    if args.sweep != "batched":  # separate training runs here, one model after the other
        return {"sweep": args.sweep, "executor": "local", "address": args.address}
    return {"sweep": args.sweep, "executor": args.executor, "address": args.address}


def train_cells(
    cells: list[Cell], recipe: Recipe, out: str | Path, progress: bool = False
) -> dict[Cell, tuple[dict, float]]:
    """Train ``cells`` together (one sweep per phase); ``{cell: (state_dict, seconds)}``."""
    import torch

    from lkstn.experiments.planar import build_model, model_name
    from lkstn.experiments.planar_setup import setup_of
    from lkstn.learned.streams import AlignmentData
    from lkstn.learned.sweep import train_sweep

    prob = setup_of(recipe).problem()
    data = AlignmentData(
        torch.as_tensor(prob.image, dtype=torch.float32)[None],
        torch.as_tensor(prob.p_true, dtype=torch.float32),
    )
    models = [build_model(prob, depth, sigma, recipe) for sigma, depth in cells]
    runs = [Path(out) / "runs" / f"sigma{s:g}" / model_name(d) for s, d in cells]
    start = time.perf_counter()
    for i in range(len(recipe.phases)):  # fresh Adam per phase, as in train_model
        configs = [phase_config(recipe, s, d, i, progress=False) for s, d in cells]
        dirs = [run / f"phase{i}" for run in runs]
        train_sweep(models, configs, [data] * len(cells), dirs, resume=True, progress=progress)
    seconds = time.perf_counter() - start
    return {cell: (m.state_dict(), seconds) for cell, m in zip(cells, models, strict=True)}


def train_table1(
    recipe: Recipe,
    out: str | Path,
    *,
    executor: str = "auto",
    address: str | None = None,
    progress: bool = False,
) -> dict[Cell, tuple[dict, float]]:
    """Every cell of ``recipe`` (sigmas x depths); ``{(sigma, depth): (state_dict, seconds)}``."""
    cells = [(float(s), int(d)) for s in recipe.sigmas for d in recipe.depths]
    if executor == "auto":
        executor = resolve_auto(len(recipe.sigmas))
    if executor == "local":
        jobs = [(cells, recipe, str(out), progress)]
    else:  # one row (sigma) per task
        jobs = [([c for c in cells if c[0] == s], recipe, str(out), False) for s in recipe.sigmas]
    trained: dict[Cell, tuple[dict, float]] = {}
    for result in run_jobs(train_cells, jobs, executor=executor, address=address):
        trained.update(result)
    return trained
