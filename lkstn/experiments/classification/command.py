"""``lkstn reproduce mnist|gtsrb``: its options, and the run of the selected rows.

:func:`run` trains each selected row (:func:`~lkstn.experiments.classification.training.train_row`;
a row that diverges is recorded and the next one trained), then writes the table
(:func:`~lkstn.experiments.classification.report.write_report`) and the figures. ``run.json`` of
each row records the recipe, the data, the machine (:func:`machine`) and the command.

Glossary: ``args`` the parsed options; ``out`` the folder of the experiment's runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from lkstn import runs
from lkstn.data.errors import DatasetNotFoundError
from lkstn.errors import UsageError
from lkstn.experiments import arguments as types
from lkstn.experiments.classification.dataset import load_data
from lkstn.experiments.classification.figures import figure_alignment, figure_mean_variance
from lkstn.experiments.classification.report import write_report
from lkstn.experiments.classification.rows import Experiment, Recipe, Row, build_model
from lkstn.experiments.classification.training import train_row
from lkstn.learned.checkpoint import load_checkpoint
from lkstn.learned.classify import AlignThenClassify
from lkstn.learned.train import TrainingDiverged
from lkstn.machine import fingerprint

__all__ = ["add_arguments", "load_model", "machine", "run"]


def machine(device: str) -> dict[str, Any]:
    """Where a number was measured: :func:`lkstn.machine.fingerprint`, the device and its GPU."""
    fp = fingerprint()
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else None
    cpu = fp["cpu"]["model_name"]
    short = {"cpu_count": fp["cores"], "torch": torch.__version__, "cpu_details": fp.pop("cpu")}
    return {**fp, **short, "cpu": cpu, "device": device, "gpu": gpu}


def add_arguments(parser: argparse.ArgumentParser, exp: Experiment) -> None:
    """Options of ``lkstn reproduce mnist|gtsrb``."""
    names = [r.name for r in exp.rows]
    parser.add_argument(
        "--data", type=types.existing_path, default=None, help="data root (default: $LKSTN_DATA)"
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=names,
        default=names,
        metavar="ROW",
        help=f"rows of {exp.table} (default all): {', '.join(names)}",
    )
    parser.add_argument("--recipe", choices=sorted(exp.recipes), default="paper")
    if exp.authors_frame is not None:
        size, box = exp.authors_frame
        parser.add_argument(
            "--frame",
            choices=["own", "authors"],
            default="own",
            help=f"own: each image is the template frame (zeros outside); authors: images "
            f"resized to {size}x{size}, the template frame the box {list(box)}, as in the "
            "authors' code",
        )
    parser.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=exp.standardize,
        help="each image at zero mean and unit variance per channel before warping, as the "
        "authors' traffic-sign code; --no-standardize: intensities in [0, 1] (default: "
        f"{'--standardize' if exp.standardize else '--no-standardize'})",
    )
    parser.add_argument(
        "--iters",
        type=types.integer(1, types.MAX_STEPS),
        default=None,
        help="steps per row (default: recipe)",
    )
    parser.add_argument(
        "--lr-predictor", type=types.positive_real, default=None, help="override the recipe's rate"
    )
    parser.add_argument(
        "--lr-classifier", type=types.positive_real, default=None, help="override the recipe's rate"
    )
    parser.add_argument(
        "--eval-every",
        type=types.integer(1, types.MAX_STEPS),
        default=None,
        help="default 1000 (quick: 100)",
    )
    parser.add_argument(
        "--time-limit",
        type=types.positive_real,
        default=None,
        metavar="MINUTES",
        help="stop each row after this much wall time (checked every eval)",
    )
    parser.add_argument("--device", type=types.device, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--threads",
        type=types.integer(1, types.MAX_THREADS),
        default=None,
        help="torch.set_num_threads; on a CPU each batch is cut into one shard per thread",
    )
    parser.add_argument("--seed", type=types.seed, default=0, help=f"0..{types.MAX_SEED}")
    runs.add_arguments(parser, "the selected rows' runs in --out")
    parser.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="drop a batch whose loss is NaN/inf (no update) instead of stopping the row",
    )
    parser.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on a GPU, replay each training step from a CUDA graph (default; docs/mnist_gtsrb.md)",
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="on a GPU, let convolutions use TensorFloat-32 (default: plain float32, as the CPU)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="200 steps per row on a fixed subset of the data (smoke run)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="no training: tables and figures from the runs in --out",
    )
    parser.add_argument(
        "--compare",
        type=types.existing_path,
        default=None,
        metavar="OUT",
        help="another --out of the same rows: time-to-accuracy section",
    )
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument(
        "--out", type=types.output_dir, default=None, help="runs/<experiment>-<recipe>[-quick]"
    )


def run(exp: Experiment, args: argparse.Namespace) -> int:
    """``lkstn reproduce``: train the selected rows, then write the table, JSON and figures."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    recipe = exp.recipes[args.recipe]
    for name in ("lr_predictor", "lr_classifier"):
        value = getattr(args, name, None)
        if value is not None:
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
            recipe = replace(recipe, **{name: value})  # recorded in run.json with the recipe
    n_steps = args.iters if args.iters is not None else (200 if args.quick else recipe.n_steps)
    every = args.eval_every if args.eval_every is not None else (100 if args.quick else 1000)
    eval_every = min(n_steps, every)
    if n_steps < 1 or eval_every < 1:
        raise UsageError(f"--iters and --eval-every must be positive, got {n_steps}, {eval_every}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    out = Path(args.out or f"runs/{exp.name}-{recipe.name}{'-quick' if args.quick else ''}")
    with runs.lock(out):  # one writer per output folder
        return _run_rows(exp, args, recipe, n_steps, eval_every, out)


def _run_rows(exp: Experiment, args: argparse.Namespace, recipe: Recipe, n_steps: int,
              eval_every: int, out: Path) -> int:  # fmt: skip
    """:func:`run` once its arguments are checked and ``out`` is locked."""
    frame, standardize = getattr(args, "frame", "own"), args.standardize
    if args.report_only:  # the frame and input the runs were trained with
        for name in args.rows:
            path = out / exp.row(name).slug / "run.json"
            if path.exists():
                first = json.loads(path.read_text())
                frame, standardize = first.get("frame", "own"), first.get("standardize", False)
                break
    data, data_info = None, None
    if not (args.report_only and args.no_figures):
        try:
            data, data_info = load_data(exp, args.data, quick=args.quick, seed=args.seed,
                                        frame=frame, standardize=standardize)  # fmt: skip
        except DatasetNotFoundError as exc:
            raise UsageError(str(exc)) from None
        data = data.to(args.device, torch.float32)
    models: dict[str, AlignThenClassify] = {}
    for name in args.rows:
        row, run_dir = exp.row(name), out / exp.row(name).slug
        if args.report_only:
            model = load_model(exp, row, run_dir, args.device, args.seed)
            if model is not None:
                models[name] = model
            continue
        command = " ".join(["lkstn", *sys.argv[1:]])
        record = dict(recipe=asdict(recipe), n_steps=n_steps, eval_every=eval_every,
                      time_limit_min=args.time_limit, seed=args.seed, frame=frame,
                      standardize=standardize, data=data_info, machine=machine(args.device),
                      command=command)  # fmt: skip
        limit = None if args.time_limit is None else 60.0 * args.time_limit
        try:
            models[name], _ = train_row(
                exp, row, recipe, data, run_dir, n_steps=n_steps, eval_every=eval_every,
                time_limit_s=limit, resume=args.resume, fresh=args.fresh, device=args.device,
                seed=args.seed, nonfinite="skip" if args.skip_nonfinite else "stop",
                cuda_graph=args.cuda_graph, tf32=args.tf32, run_record=record,
                data_identity={**data_info, "frame": frame, "standardize": standardize},
            )  # fmt: skip
        except TrainingDiverged as exc:  # a failed row is a result: record it, train the next
            print(f"{exp.name} {name}: {exc}", file=sys.stderr)
            record = {**json.loads((run_dir / "run.json").read_text()), "diverged": str(exc)}
            runs.write_atomic(run_dir / "run.json", json.dumps(record, indent=2))
    report = write_report(exp, out, compare=None if args.compare is None else Path(args.compare))
    print(f"{exp.table}: {len(report['rows'])} rows -> {out / 'table.md'}")
    if data is not None and not args.no_figures and models:
        for fn, stem in zip((figure_alignment, figure_mean_variance), exp.figures, strict=True):
            path = fn(exp, data, models, out / "figures" / f"{stem}.png", seed=args.seed)
            if path is not None:
                print(f"figure -> {path}")
    return 0


def load_model(
    exp: Experiment, row: Row, run_dir: Path, device: str, seed: int
) -> AlignThenClassify | None:
    """The network of ``row`` with the weights of its checkpoint in ``run_dir`` (None without)."""
    if not (run_dir / "checkpoint.pt").exists():
        return None
    model = build_model(exp, row, torch.Generator().manual_seed(seed)).to(device)
    load_checkpoint(run_dir / "checkpoint.pt", model)
    return model.eval()
