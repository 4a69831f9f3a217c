"""Joint alignment/classification, [LL17] Secs. 5.2-5.3: model zoo, training runs, tables, figures.

One :class:`Experiment` per dataset (:mod:`lkstn.experiments.mnist` for Table 2,
:mod:`lkstn.experiments.gtsrb` for Table 3) lists its table rows; this module builds the model of
each row, trains it with a :class:`Recipe` on images perturbed on the fly with the paper's
homography noise (sigma 3.5 template pixels on the four corners plus a shared translation,
:mod:`lkstn.learned.streams`), evaluates it on the whole test set with one fixed-seed perturbation
per image, and writes ``row.json`` per row, ``results.json`` and ``table.md`` (the paper's numbers
beside ours, as display data only) and the figures of [LL17] Figs. 8-11.

Row -> model (``build_model``); every model maps ``(images, p_init)`` to class scores:

- ``CNN``: :class:`~lkstn.learned.stn.AlignThenClassify` of an empty :class:`CSTN` (it only
  samples the perturbed input ``I(p_init)``) and the baseline CNN;
- ``STN``: :class:`STN` (one predictor resampling the crop ``I(p_init)``) + the classifier;
- ``c-STN-K``: :class:`CSTN` with ``K`` distinct predictors composing warps ([LL17] eq. (10));
- ``IC-STN-K``: :class:`ICSTN`, one predictor applied ``K`` times.

Training runs in chunks of ``eval_every`` steps (one :func:`lkstn.learned.train.train` call each,
resuming from the run's checkpoint), so that a run can stop at a wall-time limit and its
``progress.jsonl`` holds the wall time of every evaluation: the training time plus the evaluation
time of this process, not counting time between a kill and the resume (the steps after the last
checkpoint of a killed run are redone and counted once).

Decisions: images are scaled to [0, 1]; the "fast" recipe's cosine decay is applied by an optimizer
step pre-hook that reads Adam's own step count (so it resumes exactly); the figures use the first
test image of each shown class, with its fixed test perturbation.

Glossary: ``row`` a line of Table 2/3 (``"IC-STN-4(a)"``); ``recipe`` optimizer, learning rates,
iterations; ``run_dir`` where one row's checkpoint and logs live; ``elapsed_s`` wall seconds of
training and evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from lkstn import runs
from lkstn.experiments import arguments as types
from lkstn.experiments.problems import box_warp
from lkstn.learned.predictors import count_parameters
from lkstn.learned.stn import CSTN, ICSTN, STN, AlignThenClassify
from lkstn.learned.streams import ClassificationData
from lkstn.learned.train import TrainConfig, TrainingDiverged, train
from lkstn.warps import Homography

__all__ = [
    "Experiment",
    "Recipe",
    "Row",
    "SIGMA",
    "build_model",
    "load_data",
    "standardize_images",
    "train_row",
]

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
    load: Callable[[Any, str, int | None], tuple[np.ndarray, np.ndarray, str]]  # (root, split,
    # size) -> (N, C, h, w), (N,), note; size None: the template's
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


def load_data(
    exp: Experiment,
    root: Any,
    *,
    quick: bool = False,
    seed: int = 0,
    frame: str = "own",
    standardize: bool = False,
) -> tuple[ClassificationData, dict[str, Any]]:
    """Train and test images of ``exp`` as float32 in [0, 1] (or standardised); ``--quick`` takes
    a fixed subset.

    ``frame="own"``: each image is its template frame (zeros outside). ``"authors"``: the images
    are resized to ``exp.authors_frame``'s size and the template frame is its box, so that the
    perturbed samples see the surroundings (the authors' GTSRB code: the central 36x36 box of
    50x50 images). ``standardize``: each image instead has zero mean and unit variance per
    channel over the whole image (:func:`standardize_images`), before any warp.
    """
    if frame not in ("own", "authors") or (frame == "authors" and exp.authors_frame is None):
        allowed = "'own' or 'authors'" if exp.authors_frame else "'own'"
        raise ValueError(f"frame must be {allowed} for {exp.name}, got {frame!r}")
    size, box = exp.authors_frame if frame == "authors" else (None, None)
    x, y, note = exp.load(root, "train", size)
    xt, yt, _ = exp.load(root, "test", size)
    if quick:
        rng = np.random.default_rng(seed)
        n_train, n_test = exp.quick_sizes
        tr = np.sort(rng.permutation(len(x))[:n_train])
        te = np.sort(rng.permutation(len(xt))[:n_test])
        x, y, xt, yt = x[tr], y[tr], xt[te], yt[te]
    data = ClassificationData(
        torch.as_tensor(x, dtype=torch.float32) / 255.0,
        torch.as_tensor(y, dtype=torch.long),
        torch.as_tensor(xt, dtype=torch.float32) / 255.0,
        torch.as_tensor(yt, dtype=torch.long),
        None if box is None else torch.as_tensor(box_warp(Homography(), box, (size, size))),
    )
    if box is not None:
        note += (f"; the template frame is the box {list(box)} of {size}x{size} images (the "
                 "authors' frame: the samples see the surroundings)")  # fmt: skip
    if standardize:
        data = replace(data, images=standardize_images(data.images),
                       test_images=standardize_images(data.test_images))  # fmt: skip
        note += ("; each image standardised per channel (zero mean, unit variance over the "
                 "whole image, before warping; zeros outside are its mean)")  # fmt: skip
    sha = runs.digest(*(np.ascontiguousarray(a).view(np.uint8) for a in (x, y, xt, yt)))
    info = {"note": note, "n_train": len(x), "n_test": len(xt), "quick_subset": quick,
            "frame": frame, "standardize": standardize, "sha256": sha}  # fmt: skip
    return data, info


def standardize_images(images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """``(N, C, h, w)`` -> a copy with each image and channel at zero mean and unit variance.

    As the authors' traffic-sign code does before warping (``tf.nn.moments`` over each image's
    height and width). A channel flatter than one grey level (standard deviation < 1/255, for
    intensities in [0, 1]) is divided by 1/255, so a flat image becomes zeros rather than NaN or
    amplified noise.
    """
    out = torch.empty_like(images)
    for i in range(0, images.shape[0], chunk):  # chunks: temporaries of one chunk at a time
        x = images[i : i + chunk]
        mean = x.mean((2, 3), keepdim=True)
        std = x.std((2, 3), correction=0, keepdim=True).clamp_min(1.0 / 255.0)
        torch.div(x - mean, std, out=out[i : i + chunk])
    return out


@contextmanager
def _schedule(recipe: Recipe, n_steps: int) -> Iterator[None]:
    """While active, set each Adam group's lr to ``initial_lr * (1 + cos(pi t / T)) / 2``."""
    if recipe.schedule == "constant":
        yield
        return

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group in optimizer.param_groups:
            base = group.setdefault("initial_lr", group["lr"])
            t = float(optimizer.state.get(group["params"][0], {}).get("step", 0))  # steps taken
            group["lr"] = base * 0.5 * (1.0 + math.cos(math.pi * min(t, n_steps) / n_steps))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def machine(device: str) -> dict[str, Any]:
    """Where a number was measured: :func:`lkstn.machine.fingerprint`, the device and its GPU."""
    from lkstn.machine import fingerprint

    fp = fingerprint()
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else None
    cpu = fp["cpu"]["model_name"]
    short = {"cpu_count": fp["cores"], "torch": torch.__version__, "cpu_details": fp.pop("cpu")}
    return {**fp, **short, "cpu": cpu, "device": device, "gpu": gpu}


def _checkpoint_step(run_dir: Path) -> int:
    from lkstn.learned.checkpoint import load_checkpoint

    path = run_dir / "checkpoint.pt"
    return load_checkpoint(path).step if path.exists() else 0


def row_progress(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The progress of a row up to its checkpoint's step: ``(records of progress.jsonl, records
    rebuilt from log.jsonl)``.

    A kill after a chunk's checkpoint but before its ``progress.jsonl`` append leaves the chunk's
    evaluation in ``log.jsonl`` only: its record is rebuilt from the log (wall time from the log's
    timestamps, from the manifest's creation for the first chunk). A torn last line is ignored.
    """
    step = _checkpoint_step(run_dir)
    progress = [r for r in runs.read_records(run_dir / "progress.jsonl") if r["step"] <= step]
    done = progress[-1]["step"] if progress else 0
    logged = [r for r in runs.read_records(run_dir / "log.jsonl") if r["step"] <= step]
    rebuilt: list[dict[str, Any]] = []
    elapsed = progress[-1]["elapsed_s"] if progress else 0.0
    for i, rec in enumerate(logged):
        if rec["step"] <= done:
            continue
        if i > 0:
            then = logged[i - 1]["time"]
        else:
            manifest = json.loads((run_dir / runs.MANIFEST).read_text())
            then = manifest["recorded"]["created"]
        elapsed += max(0.0, rec["time"] - then)
        entry = {"step": rec["step"], "elapsed_s": round(elapsed, 2),
                 "test_error": rec["test_error"], "test_loss": rec["test_loss"],
                 "train_loss": rec["train_loss"]}  # fmt: skip
        if "skipped_steps" in rec:
            entry["skipped_steps"] = rec["skipped_steps"]
        rebuilt.append(entry)
    return progress, rebuilt


def train_row(
    exp: Experiment,
    row: Row,
    recipe: Recipe,
    data: ClassificationData,
    run_dir: Path,
    *,
    n_steps: int,
    eval_every: int,
    time_limit_s: float | None = None,
    resume: bool = False,
    fresh: bool = False,
    device: str = "cpu",
    seed: int = 0,
    nonfinite: Literal["stop", "skip"] = "stop",
    cuda_graph: bool = True,
    tf32: bool = False,
    data_identity: dict[str, Any] | None = None,
    run_record: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[AlignThenClassify, list[dict[str, float]]]:
    """Train one row in chunks of ``eval_every`` steps; returns the model and its progress.

    Progress records: ``step``, ``elapsed_s`` (see the module docstring), ``test_error`` (%),
    ``test_loss``, ``train_loss`` (and ``skipped_steps`` with ``nonfinite="skip"``: see
    :class:`~lkstn.learned.train.TrainConfig`). ``run_dir`` is a run directory
    (:mod:`lkstn.runs`) whose manifest holds the row, the recipe, ``data_identity`` and the model:
    without ``resume`` or ``fresh`` a previous run there is refused, a resume of another run too.
    ``run_record`` (the command, the machine) is written to ``run.json`` once the run is open.
    """
    from lkstn.learned.resume import run_identity

    model = build_model(exp, row, torch.Generator().manual_seed(seed)).to(device)
    config = TrainConfig(
        n_steps=n_steps, sigma=SIGMA, batch_size=recipe.batch_size, optimizer=recipe.optimizer,
        lr_predictor=recipe.lr_predictor, lr_classifier=recipe.lr_classifier, seed=seed,
        eval_every=eval_every, checkpoint_every=eval_every, progress=False, nonfinite=nonfinite,
        cuda_graph=cuda_graph, tf32=tf32,
    )  # fmt: skip
    cosine_steps = n_steps if recipe.schedule == "cosine" else None  # the decay spans them
    identity = {"row": row.name, "recipe": asdict(recipe), "cosine_steps": cosine_steps,
                "data": data_identity}  # fmt: skip
    files = ("checkpoint.pt", "log.jsonl", "progress.jsonl", "run.json", "row.json")
    with runs.lock(run_dir):
        resumed = runs.open_run(run_dir, run_identity(model, config, data, identity),
                                resume=resume, fresh=fresh, files=files)  # fmt: skip
        if run_record is not None:
            _write_run(run_dir, resumed, **run_record)
        step = _checkpoint_step(run_dir)
        runs.truncate_records(run_dir / "progress.jsonl", keep=lambda r: r["step"] <= step)
        progress, rebuilt = row_progress(run_dir)
        for entry in rebuilt:  # chunks whose record a kill prevented
            runs.append_record(run_dir / "progress.jsonl", entry)
        progress += rebuilt
        elapsed = progress[-1]["elapsed_s"] if progress else 0.0
        while step < n_steps and (time_limit_s is None or elapsed < time_limit_s):
            target = min(n_steps, (step // eval_every + 1) * eval_every)
            start = time.perf_counter()
            with _schedule(recipe, n_steps):
                result = train(model, replace(config, n_steps=target), data, run_dir=run_dir,
                               resume=True, data_identity=identity)  # fmt: skip
            elapsed += time.perf_counter() - start
            step = target
            for rec in result.records[-1:]:
                entry = {"step": rec["step"], "elapsed_s": round(elapsed, 2),
                         "test_error": rec["test_error"], "test_loss": rec["test_loss"],
                         "train_loss": rec["train_loss"]}  # fmt: skip
                if "skipped_steps" in rec:  # every step skipped in this chunk (one record a chunk)
                    entry["skipped_steps"] = [s for r in result.records for s in r["skipped_steps"]]
                progress.append(entry)
                runs.append_record(run_dir / "progress.jsonl", entry)
                log(f"{exp.name} {row.name} [{recipe.name}] step {step}/{n_steps} "
                    f"test error {entry['test_error']:.3f}% ({elapsed / 60:.1f} min)")  # fmt: skip
    if step > 0:
        from lkstn.learned.checkpoint import load_checkpoint

        load_checkpoint(run_dir / "checkpoint.pt", model)  # the state of the last chunk
    return model, progress


def row_summary(
    exp: Experiment, row: Row, recipe: Recipe, progress: Sequence[dict[str, float]]
) -> dict[str, Any]:
    """What ``row.json`` holds: final test error, its step and wall time, the paper's numbers."""
    last = progress[-1] if progress else {"step": 0, "elapsed_s": 0.0, "test_error": None}
    reached = next((r for r in progress if r["test_error"] <= row.paper_error), None)
    return {
        "experiment": exp.name,
        "table": exp.table,
        "row": row.name,
        "recipe": asdict(recipe),
        "capacity": count_parameters(build_model(exp, row, torch.Generator())),  # as trained
        "paper": {"test_error": row.paper_error, "capacity": row.paper_capacity},
        "test_error": last["test_error"],
        "iterations": last["step"],
        "elapsed_s": last["elapsed_s"],
        "steps_per_s": last["step"] / last["elapsed_s"] if last["elapsed_s"] else None,
        "reached_paper_error": None
        if reached is None
        else {"step": reached["step"], "elapsed_s": reached["elapsed_s"]},
        "curve": [[r["step"], r["elapsed_s"], r["test_error"]] for r in progress],
        "skipped_steps": [s for r in progress for s in r.get("skipped_steps", [])],
    }


# -- figures ---------------------------------------------------------------------------------------


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
    from lkstn.viz import plot_grid

    fig = plot_grid(_to_numpy(torch.stack(rows)), by_rows=True, row_labels=labels)
    return _save(fig, path)


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
    from lkstn.viz import plot_mean_variance

    fig = plot_mean_variance(aligned, labels[keep.numpy()], classes=classes)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    """Save ``fig`` as a small PNG: 64 dpi, quantised to a 256-colour palette."""
    import matplotlib.pyplot as plt
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=64)
    plt.close(fig)
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    return path


# -- command line ----------------------------------------------------------------------------------


def add_arguments(parser: Any, exp: Experiment) -> None:
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
        help="on a GPU, replay each training step from a CUDA graph (default; 5x faster here)",
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


def run(exp: Experiment, args: Any) -> int:
    """``lkstn reproduce``: train the selected rows, then write the table, JSON and figures."""

    from lkstn.errors import UsageError

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


def _run_rows(exp: Experiment, args: Any, recipe: Recipe, n_steps: int, eval_every: int,
              out: Path) -> int:  # fmt: skip
    """:func:`run` once its arguments are checked and ``out`` is locked."""
    import sys

    from lkstn.data.errors import DatasetNotFoundError
    from lkstn.errors import UsageError

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
            model = _load_model(exp, row, run_dir, args.device, args.seed)
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


def _write_run(run_dir: Path, resume: bool, **run: Any) -> None:
    """Write ``run.json`` (how a row was trained); a resume keeps the first record, adds its own."""
    path = run_dir / "run.json"
    if resume and path.exists():
        first = json.loads(path.read_text())  # the manifest has checked the settings
        resumes = first.get("resumes", [])
        resumes.append({k: run[k] for k in ("command", "machine", "n_steps", "time_limit_min")})
        if "diverged" in first:  # this resume goes on from the last checkpoint before it
            resumes[-1]["after"] = f"diverged: {first.pop('diverged')}"
        run = {**first, "n_steps": run["n_steps"], "time_limit_min": run["time_limit_min"],
               "resumes": resumes}  # fmt: skip
    runs.write_atomic(path, json.dumps(run, indent=2))


def _load_model(
    exp: Experiment, row: Row, run_dir: Path, device: str, seed: int
) -> AlignThenClassify | None:
    from lkstn.learned.checkpoint import load_checkpoint

    if not (run_dir / "checkpoint.pt").exists():
        return None
    model = build_model(exp, row, torch.Generator().manual_seed(seed)).to(device)
    load_checkpoint(run_dir / "checkpoint.pt", model)
    return model.eval()


# -- results: JSON and Markdown --------------------------------------------------------------------


def collect(exp: Experiment, out: Path) -> list[dict[str, Any]]:
    """``row.json`` of every row with a run in ``out`` (rewritten from its logs), in table order."""
    rows = []
    for row in exp.rows:
        run_dir = out / row.slug
        if not (run_dir / "run.json").exists():
            continue
        run = json.loads((run_dir / "run.json").read_text())
        progress = sum(row_progress(run_dir), [])  # rebuilt from the checkpoint and log
        summary = row_summary(exp, row, Recipe(**run["recipe"]), progress)
        summary.update(run=run, finished=bool(progress) and progress[-1]["step"] >= run["n_steps"])
        runs.write_atomic(run_dir / "row.json", json.dumps(summary, indent=2))
        rows.append(summary)
    return rows


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.2f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


def write_report(exp: Experiment, out: Path, *, compare: Path | None = None) -> dict[str, Any]:
    """Write ``results.json`` and ``table.md`` in ``out`` from the runs found there."""
    rows = collect(exp, out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"experiment": exp.name, "table": exp.table, "sigma_px": SIGMA, "rows": rows}
    lines = [f"# {exp.table} ({exp.name}): classification error on the perturbed test set", ""]
    for r in rows[:1]:
        lines += _header(r["run"])
    lines += ["| Model | Test error, paper | Test error, ours | Capacity, paper | Capacity, ours "
              "| Iterations | Wall time | Reached paper error at |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        err = "-" if r["test_error"] is None else f"{r['test_error']:.3f} %"
        limit = r["run"].get("time_limit_min")
        done = "" if r["finished"] else " (running/stopped)"
        if not r["finished"] and limit and r["elapsed_s"] >= 60 * limit:
            done = f" (time limit {limit:g} min)"
        if r["run"].get("diverged"):
            done = " (diverged)"
        hit = r["reached_paper_error"]
        hit = "-" if hit is None else f"step {hit['step']}, {_fmt_time(hit['elapsed_s'])}"
        lines.append(f"| {r['row']} | {r['paper']['test_error']:.3f} % | {err} | "
                     f"{r['paper']['capacity']} | {r['capacity']} | {r['iterations']}{done} | "
                     f"{_fmt_time(r['elapsed_s'])} | {hit} |")  # fmt: skip
    lines += ["", "Paper numbers: [LL17] " + exp.table + ", 200K iterations (display only)."]
    if compare is not None:
        other = collect(exp, compare)
        report["compare"] = {"out": str(compare), "rows": other}
        lines += ["", *time_to_accuracy(rows, other)]
        if rows and other:
            _save(_figure_curves(rows, other), out / "figures" / "time_to_accuracy.png")
    runs.write_atomic(out / "results.json", json.dumps(report, indent=2))
    runs.write_atomic(out / "table.md", "\n".join(lines) + "\n")
    return report


def _header(run: dict[str, Any]) -> list[str]:
    """Markdown lines: recipe, data, machine and command of a run."""
    m, d = run["machine"], run["data"]
    device = m["device"] + (f" = {m['gpu']}" if m.get("gpu") else "")
    cosine = " (the cosine decay spans them)" if run["recipe"]["schedule"] == "cosine" else ""
    return [
        f"- recipe: `{json.dumps(run['recipe'])}`, seed {run['seed']}; "
        f"this run: {run['n_steps']} steps per row{cosine}",
        f"- data: {d['note']} ({d['n_train']} train / {d['n_test']} test images, one fixed "
        "perturbation each)",
        f"- machine: {m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads, "
        f"device {device}, load average {m['load_average']} at start), torch {m['torch']}",
        f"- command: `{run['command']}`",
        "",
    ]


def time_to_accuracy(rows: Sequence[dict], other: Sequence[dict]) -> list[str]:
    """Markdown: for each row in both runs, the error each reached within the same wall time."""
    lines = ["## Time to accuracy: this run against " + (other[0]["recipe"]["name"] if other
             else "-") + " for the same wall time", "",
             "| Model | Recipe | Iterations | Wall time | Test error | Reached paper error at |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    by_name = {r["row"]: r for r in other}
    for r in rows:
        o = by_name.get(r["row"])
        if o is None or not r["curve"]:
            continue
        budget = r["elapsed_s"]
        within = [c for c in o["curve"] if c[1] <= budget * 1.02] or o["curve"][:1]
        for rec, (step, t, err) in ((r, r["curve"][-1]), (o, within[-1])):
            hit = rec["reached_paper_error"]
            hit = "-" if hit is None else f"step {hit['step']}, {_fmt_time(hit['elapsed_s'])}"
            lines.append(f"| {r['row']} | {rec['recipe']['name']} | {step} | {_fmt_time(t)} | "
                         f"{err:.3f} % | {hit} |")  # fmt: skip
    return lines


def _figure_curves(rows: Sequence[dict], other: Sequence[dict]) -> Any:
    """Test error against wall time of every row of two runs, with the paper's error dotted."""
    from lkstn.viz import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for group, style in ((rows, "-"), (other, "--")):
        for r in group:
            curve = np.asarray(r["curve"], dtype=float).reshape(-1, 3)
            label = f"{r['row']}, {r['recipe']['name']} recipe"
            ax.plot(curve[:, 1] / 60, curve[:, 2], style, marker=".", label=label)
    for r in rows:
        ax.axhline(r["paper"]["test_error"], color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("test error (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
