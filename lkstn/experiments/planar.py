"""Planar alignment with one linear layer unfolded K times ([LL17] Sec. 5.1, Table 1, Figs. 6-7).

The task: a 50 x 50 grey template sampled from a box of an image (the *setup*,
:mod:`lkstn.experiments.planar_setup`: ``chelsea``, the default, or ``paper``, the Caffe image of
[LL17]), affine starts ``p_init = compose(p_true, delta)`` drawn with the paper's noise model at
``sigma`` in {2.5, 5, 7.5, 10} (template pixels for ``chelsea``, image pixels for ``paper``,
converted to template pixels where the noise is drawn), and IC-STNs whose geometric
predictor is a single linear layer on the pixels, unfolded K = 1 (= c-STN-1), 2, 3, 4 and 6 times
during training ([LL17] eq. (10) update, ``p <- compose(dp, p)``), trained on the squared L2
distance between the final warp and ``p_true`` with batches of 100 drawn on the fly.

Our recipe (the paper states only "SGD, batch 100"; these are our choices, see docs/planar.md)
    * Input standardisation folded into the linear layer: ``dp = W ((I(p) - mu) / s) + b`` with
      ``mu`` the mean crop and ``s`` the pixel standard deviation of 1000 crops at the training
      sigma (fixed buffers, still one affine map of the pixels).
    * Adam (batch 100), learning rate ``lr / K``: the gradient through K compositions grows with
      K, and a deep unfolding diverged at the shallow rate. A piecewise-constant schedule of
      ``phases`` (x1, x0.3, x0.1, x0.03 of the rate, equal numbers of steps), one
      :func:`lkstn.learned.train.train` call per phase with a fresh Adam, so each phase has its own
      run directory and a killed run resumes where it stopped; a finished phase is skipped.
    * ``torch.set_num_threads(1)`` in :func:`run` (``--threads``): the tensors are so small that
      the per-op cost of sharing them between threads outweighs the parallelism, the more so on
      a machine whose cores are busy with other work (``docs/planar.md``).

Evaluation: a fixed test set per sigma (``fixed_starts``, 1000 starts, seed ``seed + 1``), shared
by every model; Table 1 reports the mean parameter L2 error (canonical units) and the mean corner
error, in template px and in image px, after K warps; Fig. 7 continues every network, and LK,
CompositionalLK, ICLK and SDM, past the trained depth (:mod:`lkstn.experiments.curves`).

Glossary: ``K`` unfolded warps (depth), ``sigma`` perturbation in the setup's unit, ``mu, s`` the
standardisation.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from lkstn import runs
from lkstn.experiments import arguments as types
from lkstn.experiments.convergence import finite_or_none, fixed_starts
from lkstn.experiments.curves import ErrorCurves, error_curves
from lkstn.experiments.planar_report import figure6, figure7, machine, table1_markdown
from lkstn.experiments.planar_setup import (
    PAPER_TABLE1,
    QUICK,
    SETUPS,
    SHAPE,
    Recipe,
    model_name,
    setup_of,
)
from lkstn.experiments.planar_sweep import add_sweep_arguments, sweep_options
from lkstn.machine import fingerprint
from lkstn.perturb import perturb
from lkstn.problems import PlanarProblem
from lkstn.result import Aligner
from lkstn.sampling import warp_image

__all__ = [
    "PAPER_TABLE1",
    "Recipe",
    "add_arguments",
    "build_model",
    "model_name",
    "run",
    "table1_markdown",
    "run_experiment",
    "run_identity",
    "train_model",
]


@functools.cache
def _standardise_class():
    """The module class ``(x - mu) / s`` (made on first use: torch is imported lazily)."""
    import torch
    from torch import nn

    class Standardise(nn.Module):
        """``(x - mu) / s`` with fixed buffers: with the next linear layer, one affine map."""

        def __init__(self, mu: np.ndarray, s: float) -> None:
            super().__init__()
            self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float32))  # (h, w)
            self.register_buffer("s", torch.tensor(s, dtype=torch.float32))

        def forward(self, x):
            return (x - self.mu) / self.s

    return Standardise


def build_model(prob: PlanarProblem, depth: int, sigma: float, recipe: Recipe):
    """An IC-STN with one (standardised) linear layer, ``n_warps = depth``, float32; ``sigma``
    is in the unit of ``recipe.setup``."""
    from torch import nn

    from lkstn.learned.predictors import LinearPredictor
    from lkstn.learned.stn import ICSTN

    rng = np.random.default_rng([recipe.seed, 7, int(sigma * 1000)])
    px = setup_of(recipe).template_sigma(sigma)
    starts = perturb(prob.warp, prob.p_true, px, SHAPE, rng, n=recipe.n_stats)  # (n, P)
    crops = warp_image(prob.image, prob.warp, starts, SHAPE)  # (n, h, w)
    standardise = _standardise_class()(crops.mean(0), float(crops.std()))
    predictor = nn.Sequential(standardise, LinearPredictor(SHAPE, prob.warp.n_params))
    return ICSTN(predictor, warp=prob.warp, n_warps=depth, template_shape=SHAPE, update="eq10")


def train_model(
    model, prob: PlanarProblem, sigma: float, recipe: Recipe, run_dir: Path, progress: bool = False
) -> float:
    """Train ``model`` in place, one :func:`train` call per phase (finished phases are loaded, not
    rerun); returns the training wall time summed over every process that trained it (each
    resumed run adds its own), in seconds."""
    import torch

    from lkstn.experiments.planar_sweep import phase_config
    from lkstn.learned.streams import AlignmentData
    from lkstn.learned.train import train

    data = AlignmentData(
        torch.as_tensor(prob.image, dtype=torch.float32)[None],
        torch.as_tensor(prob.p_true, dtype=torch.float32),
    )
    start = time.perf_counter()
    for i in range(len(recipe.phases)):  # fresh Adam per phase, its own stream and run dir
        config = phase_config(recipe, sigma, model.n_warps, i, progress)
        train(model, config, data, run_dir=run_dir / f"phase{i}", resume=True)
    timing = run_dir / "seconds.jsonl"  # one record per process that trained it, appended
    runs.append_record(timing, {"seconds": time.perf_counter() - start})
    return sum(r["seconds"] for r in runs.read_records(timing))


def _aligners(prob: PlanarProblem, sigma: float, recipe: Recipe) -> dict[str, Aligner]:
    """The classical aligners of Fig. 7 on the same template (SDM fitted at ``sigma``)."""
    from lkstn.classical.iclk import ICLK
    from lkstn.classical.lk import LK, CompositionalLK
    from lkstn.classical.sdm import SDM

    kw = {"warp": prob.warp, "n_iter": recipe.n_curve, "tol": 1e-6}
    sdm = SDM(template_shape=SHAPE, warp=prob.warp, n_stages=4, alpha=10.0)
    sdm.fit_perturbed(
        prob.image,
        prob.p_true,
        setup_of(recipe).template_sigma(sigma),
        recipe.n_sdm,
        np.random.default_rng(recipe.seed),
    )
    return {
        "LK": LK(prob.template, **kw),
        "CompositionalLK": CompositionalLK(prob.template, **kw),
        "ICLK": ICLK(prob.template, **kw),
        "SDM-4": sdm,
    }


def run_experiment(out: str | Path, recipe: Recipe | None = None, *, progress: bool = False,
                   log=print, resume: bool = False, fresh: bool = False, sweep: str = "batched",
                   executor: str = "auto",
                   address: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Train every (sigma, depth), evaluate on fixed test sets, write figures and JSON to ``out``.

    ``out`` is a run directory (:mod:`lkstn.runs`, manifest :func:`run_identity`): ``resume``
    continues it (refused if made with other settings), ``fresh`` deletes it first, neither
    refuses an existing run. ``sweep="batched"`` trains the cells together
    (:mod:`lkstn.experiments.planar_sweep`, on ``executor``), ``"separate"`` one after the
    other. Returns the JSON-ready record (also written to ``out/planar.json``; it,
    ``table1.md`` and the figures are rebuilt at every run).
    """
    out, recipe = Path(out), recipe or Recipe()
    prob = setup_of(recipe).problem()
    with runs.lock(out):
        runs.open_run(out, run_identity(recipe, prob), resume=resume, fresh=fresh,
                      files=("runs", "planar.json", "table1.md"))  # fmt: skip
        return _run_locked(out, prob, recipe, progress, log, (sweep, executor, address))


def run_identity(recipe: Recipe, prob: PlanarProblem) -> dict[str, Any]:
    """What an output folder's manifest compares: the recipe, the image (SHA-256), the box.

    The setup's name is left out of the recipe: the image and ``p_true`` already say which setup
    it is, and runs made before setups existed still resume.
    """
    image = {"shape": list(prob.image.shape), "sha256": runs.digest(prob.image.tobytes())}
    recipe_fields = {k: v for k, v in asdict(recipe).items() if k != "setup"}
    return {"experiment": "planar", "recipe": recipe_fields, "image": image,
            "p_true": prob.p_true.tolist()}  # fmt: skip


def _run_locked(out: Path, prob: PlanarProblem, recipe: Recipe, progress: bool, log,
                how: tuple[str, str, str | None]) -> dict:  # fmt: skip
    """:func:`run_experiment` with ``out`` open and locked; ``how`` = (sweep, executor, address)."""
    sweep, executor, address = how
    t0 = time.perf_counter()
    setup = setup_of(recipe)
    figure6(prob, out, recipe)
    table: dict[str, dict[str, dict[str, float]]] = {}
    curves: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    trained = {}
    if sweep == "batched":
        from lkstn.experiments.planar_sweep import train_table1

        trained = train_table1(recipe, out, executor=executor, address=address, progress=progress)
    for sigma in recipe.sigmas:
        px = setup.template_sigma(sigma)
        test = fixed_starts(prob.warp, prob.p_true, px, SHAPE, recipe.n_test, recipe.seed + 1)
        models = {}
        for depth in recipe.depths:
            name = model_name(depth)
            model = build_model(prob, depth, sigma, recipe)
            if trained:  # batched: the sweep's seconds, shared by its cells
                model.load_state_dict(trained[(float(sigma), depth)][0])
                seconds[f"{name} sigma={sigma:g}"] = trained[(float(sigma), depth)][1]
            else:
                seconds[f"{name} sigma={sigma:g}"] = train_model(
                    model, prob, sigma, recipe, out / "runs" / f"sigma{sigma:g}" / name, progress
                )
            models[name] = model
            took = seconds[f"{name} sigma={sigma:g}"]
            log(f"trained {name} at sigma={sigma:g} {setup.sigma_unit} ({took:.0f} s)")
        nets = error_curves(models, prob.image, prob.p_true, test, recipe.n_curve)
        classical = error_curves(
            _aligners(prob, sigma, recipe),
            prob.image,
            prob.p_true,
            test,
            recipe.n_curve,
            warp=prob.warp,
            template_shape=SHAPE,
        )
        both = _merge(nets, classical)
        curves[f"{sigma:g}"] = both.to_dict()
        for depth in recipe.depths:
            name = model_name(depth)
            row = table.setdefault(name, {})
            row[f"{sigma:g}"] = {
                "param_l2": both.mean_param_l2[name][depth],
                "corner_px": both.mean_corner_px[name][depth],
                "corner_image_px": setup.image_px(both.mean_corner_px[name][depth]),
                "paper": PAPER_TABLE1.get(name, {}).get(float(sigma)),
            }
        figure7(
            both, {model_name(d): d for d in recipe.depths}, f"{sigma:g} {setup.sigma_unit}", out
        )
    total = time.perf_counter() - t0
    record = {
        "recipe": asdict(recipe),
        "setup": setup.describe(),
        "table1": table,
        "paper_table1_published_values_for_display": {
            k: {f"{s:g}": v for s, v in row.items()} for k, row in PAPER_TABLE1.items()
        },
        "curves": curves,
        "train_seconds": seconds,
        "sweep": sweep,
        "total_seconds": total,
        "machine": machine(),
        "fingerprint": fingerprint(),
    }
    record = finite_or_none(record)  # a diverged estimate is inf: null in the JSON
    runs.write_atomic(out / "planar.json", json.dumps(record, indent=2))
    runs.write_atomic(out / "table1.md", table1_markdown(record))
    log(table1_markdown(record))
    log(f"total {total:.0f} s -> {out}")
    return record


def _merge(a: ErrorCurves, b: ErrorCurves) -> ErrorCurves:
    fields = (
        "mean_corner_px",
        "median_corner_px",
        "mean_param_l2",
        "fraction_converged",
        "seconds",
    )
    return replace(a, **{f: {**getattr(a, f), **getattr(b, f)} for f in fields})


def _at_least(minimum: int):
    """An argparse type: an integer >= ``minimum`` (else exit code 2 with a one-line message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lkstn reproduce planar``."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one sigma (5 px), depths 1/2/4, 480 steps: about a minute",
    )
    parser.add_argument(
        "--setup",
        choices=sorted(SETUPS),
        default="chelsea",
        help="chelsea: skimage's cat, sigma in template px; paper: the Caffe cat.jpg of [LL17]"
        " with the box of its Fig. 6, sigma in image px (docs/planar.md)",
    )
    parser.add_argument(
        "--out", type=types.output_dir, default="out/planar", help="output folder (runs/ inside)"
    )
    parser.add_argument(
        "--steps",
        type=_at_least(4),
        default=None,
        help="training steps per model, split evenly over the 4 learning-rate phases",
    )
    parser.add_argument(
        "--threads", type=types.integer(1, types.MAX_THREADS), default=1, help="torch threads"
    )
    parser.add_argument("--seed", type=types.seed, default=0, help=f"0..{types.MAX_SEED}")
    parser.add_argument("--progress", action="store_true", help="tqdm bars while training")
    runs.add_arguments(parser)
    add_sweep_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``lkstn reproduce planar``: the whole experiment (or ``--quick``); returns 0."""
    import torch

    torch.set_num_threads(args.threads)
    recipe = replace(QUICK if args.quick else Recipe(), seed=args.seed, setup=args.setup)
    if args.steps is not None:
        recipe = replace(recipe, n_steps=args.steps)
    run_experiment(args.out, recipe, progress=args.progress, resume=args.resume,
                   fresh=args.fresh, **sweep_options(args))  # fmt: skip
    return 0
