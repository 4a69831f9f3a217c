"""Training one table row in chunks: wall time per evaluation, time limits, resumes.

Training runs in chunks of ``eval_every`` steps (one :func:`lkstn.learned.train.train` call each,
resuming from the run's checkpoint), so that a run can stop at a wall-time limit and its
``progress.jsonl`` holds the wall time of every evaluation: the training time plus the evaluation
time of this process, not counting time between a kill and the resume (the steps after the last
checkpoint of a killed run are redone and counted once). ``train``'s own ``log.jsonl`` has no wall
time of the whole run, only the instant of each record, hence the second file.

Decision: the "fast" recipe's cosine decay is applied by an optimizer step pre-hook that reads
Adam's own step count (:func:`cosine_schedule`), so that it resumes exactly.

Glossary: ``run_dir`` where one row's checkpoint and logs live; ``elapsed_s`` wall seconds of
training and evaluation; ``progress`` the records of ``progress.jsonl``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from lkstn import runs
from lkstn.experiments.classification.rows import SIGMA, Experiment, Recipe, Row, build_model
from lkstn.learned.checkpoint import load_checkpoint
from lkstn.learned.classify import AlignThenClassify
from lkstn.learned.resume import run_identity
from lkstn.learned.streams import ClassificationData
from lkstn.learned.train import TrainConfig, train

__all__ = ["checkpoint_step", "cosine_schedule", "row_progress", "train_row", "write_run_record"]


@contextmanager
def cosine_schedule(recipe: Recipe, n_steps: int) -> Iterator[None]:
    """While active, set each Adam group's lr to ``initial_lr * (1 + cos(pi t / T)) / 2``."""
    if recipe.schedule == "constant":
        yield
        return

    def hook(
        optimizer: torch.optim.Optimizer, args: tuple[object, ...], kwargs: dict[str, object]
    ) -> None:
        for group in optimizer.param_groups:
            base = group.setdefault("initial_lr", group["lr"])
            t = float(optimizer.state.get(group["params"][0], {}).get("step", 0))  # steps taken
            group["lr"] = base * 0.5 * (1.0 + math.cos(math.pi * min(t, n_steps) / n_steps))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def checkpoint_step(run_dir: Path) -> int:
    """The step of ``run_dir``'s checkpoint, 0 without one."""
    path = run_dir / "checkpoint.pt"
    return load_checkpoint(path).step if path.exists() else 0


def row_progress(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The progress of a row up to its checkpoint's step: ``(records of progress.jsonl, records
    rebuilt from log.jsonl)``.

    A kill after a chunk's checkpoint but before its ``progress.jsonl`` append leaves the chunk's
    evaluation in ``log.jsonl`` only: its record is rebuilt from the log (wall time from the log's
    timestamps, from the manifest's creation for the first chunk). A torn last line is ignored.
    """
    step = checkpoint_step(run_dir)
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
            write_run_record(run_dir, resumed, **run_record)
        step = checkpoint_step(run_dir)
        runs.truncate_records(run_dir / "progress.jsonl", keep=lambda r: r["step"] <= step)
        progress, rebuilt = row_progress(run_dir)
        for entry in rebuilt:  # chunks whose record a kill prevented
            runs.append_record(run_dir / "progress.jsonl", entry)
        progress += rebuilt
        elapsed = progress[-1]["elapsed_s"] if progress else 0.0
        while step < n_steps and (time_limit_s is None or elapsed < time_limit_s):
            target = min(n_steps, (step // eval_every + 1) * eval_every)
            start = time.perf_counter()
            with cosine_schedule(recipe, n_steps):
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
        load_checkpoint(run_dir / "checkpoint.pt", model)  # the state of the last chunk
    return model, progress


def write_run_record(run_dir: Path, resume: bool, **run: object) -> None:
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
