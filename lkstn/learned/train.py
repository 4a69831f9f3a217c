"""Training loop of the learned aligners ([LL17] Sec. 5): alignment or classification.

:func:`train` runs SGD (the paper), momentum SGD or Adam on batches perturbed on the fly with the
paper's noise model (:mod:`lkstn.learned.streams`):

- with :class:`~lkstn.learned.streams.AlignmentData` (planar alignment, Sec. 5.1) the model is an
  aligner (:class:`~lkstn.learned.stn.ICSTN`, ...) and the loss is the squared L2 distance between
  its final warp and ``p_true``;
- with :class:`~lkstn.learned.streams.ClassificationData` (MNIST/GTSRB, Secs. 5.2-5.3) the model
  maps ``(images, p_init)`` to class scores (:class:`~lkstn.learned.stn.AlignThenClassify`) and the
  loss is the cross-entropy; the aligner and the classifier get separate learning rates
  (MNIST ``1e-4`` / ``1e-2``, GTSRB ``1e-5`` / ``1e-3``).

Everything follows the model's device and dtype. Batch ``k`` is a function of ``(seed, k)`` and the
checkpoint holds the model, the optimizer and the step, so ``resume=True`` continues a killed run
bit for bit (on the same machine with the same ``torch.get_num_threads()`` and ``workers``: the
kernels' floating-point reductions depend on them). Which CPU kernel computes each layer is chosen
by timing at the first step (:mod:`lkstn.learned.accel.kernels`) and returned in
:attr:`TrainResult.kernels`; the choice is timed once per machine and kept in a file
(:func:`lkstn.learned.accel.kernels.cache_path`), so identical runs compute alike. On a CPU with
several intra-op threads each batch may be cut into ``workers`` shards (25 samples or more each)
whose forward and backward run in parallel threads (:mod:`lkstn.learned.accel.shards`) or
forked processes (:mod:`lkstn.learned.accel.forked`, Linux); by default, whether to shard, and
how, is measured at the start like the kernels, kept with them, and pinned on resume; on a GPU, with
``cuda_graph=True``, each step's forward and backward is replayed from a CUDA graph
(:mod:`lkstn.learned.accel.graphed`); the next batch is drawn while a GPU computes the current one.
Training runs in float32 without TensorFloat-32 unless ``tf32=True``. The test perturbations are
drawn once (fixed seed), so test errors are repeatable. A non-finite loss stops the run with
:class:`TrainingDiverged` before the update, leaving the last checkpoint intact; with
``nonfinite="skip"`` the batch is dropped instead (no update, counted in the log as
``skipped_steps``) and the run stops only after ``MAX_SKIPS_IN_A_ROW`` such batches in a row.

Run directory (:mod:`lkstn.runs`): ``manifest.json`` (the configuration, the model description with
its parameter shapes, the data identity, the seed and the code version; a resume that differs in any
of them is refused, :func:`run_identity`), ``log.jsonl`` (one line per evaluation, appended with
fsync; a resume cuts a torn line and the lines past the checkpoint), ``checkpoint.pt`` (latest,
written atomically), ``kernels.json`` (the CPU kernels chosen by measurement,
:mod:`lkstn.learned.accel.kernels`, written with each checkpoint and imposed again on resume, so
that a resumed run computes with the kernels it started with) and ``lock`` (one writer at a time). A
fresh run (no checkpoint) seeds every global generator it may use (torch, NumPy, Python ``random``)
from ``config.seed``; a resumed run restores torch's from the checkpoint; so dropout draws the same
masks in two identical runs.

Glossary: ``step`` optimizer steps taken; ``lr_predictor``/``lr_classifier`` the learning rates of
the geometric predictor(s) and of the classifier.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lkstn import runs
from lkstn.learned.accel.fast_cpu import fast_cpu_layers
from lkstn.learned.accel.forked import ForkedStep
from lkstn.learned.accel.graphed import GraphedStep
from lkstn.learned.accel.kernels import kernel_choices, pin_kernels
from lkstn.learned.accel.shards import ShardedStep, intra_op_threads, measured_workers
from lkstn.learned.checkpoint import save_checkpoint
from lkstn.learned.config import MAX_SKIPS_IN_A_ROW, TrainConfig, TrainingDiverged, TrainResult
from lkstn.learned.resume import resume_run, run_identity, seed_everything
from lkstn.learned.streams import AlignmentData, ClassificationData, step_generator

__all__ = [
    "MAX_SKIPS_IN_A_ROW",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "evaluate",
    "run_identity",
    "train",
]

KERNELS = "kernels.json"  # in the run directory: the CPU kernels chosen, pinned on resume
_WORKERS = 2  # step_generator purpose of the batch timed by measured_workers (0, 1: train, test)


def train(
    model: nn.Module,
    config: TrainConfig,
    data: AlignmentData | ClassificationData,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    fresh: bool = False,
    data_identity: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data``; see the module docstring.

    Parameters
    ----------
    model : nn.Module
        An aligner (alignment) or ``(images, p_init) -> scores`` (classification).
    config : TrainConfig
    data : AlignmentData or ClassificationData
    run_dir : path, optional
        Where the manifest, log and checkpoints go (none without it).
    resume : bool
        Continue the run in ``run_dir`` (model, optimizer, step and the global torch RNG state of
        its checkpoint); start afresh when it holds none. The run's manifest and the checkpoint's
        configuration must match ``model``, ``config`` (apart from ``n_steps`` >= the
        checkpoint's step and the execution settings
        :data:`lkstn.learned.resume.EXECUTION`) and ``data``.
    fresh : bool
        Delete the run in ``run_dir`` first. Without ``resume`` or ``fresh``, a ``run_dir`` that
        holds a run is refused.
    data_identity : dict, optional
        What identifies ``data`` in the manifest (default: shapes, dtypes and SHA-256 of its
        tensors, :func:`run_identity`).

    Raises
    ------
    TrainingDiverged
        When the loss becomes NaN or infinite.
    lkstn.runs.RunMismatch, lkstn.runs.RunExists, lkstn.runs.RunLocked, lkstn.runs.NotWritable
        A resume of another run, a run that exists, another writer, a failed write.
    """
    if not isinstance(data, AlignmentData | ClassificationData):
        raise ValueError(f"data must be AlignmentData or ClassificationData, got {type(data)}")
    aligner = getattr(model, "aligner", model)
    if not hasattr(aligner, "warp") or not hasattr(aligner, "template_shape"):
        raise ValueError("model must be an aligner or hold one as model.aligner")
    if next(model.parameters(), None) is None:
        raise ValueError("model has no parameters to train")
    if run_dir is None:
        return _train(model, config, data, None, resume, fresh, data_identity)
    with runs.lock(run_dir):
        return _train(model, config, data, Path(run_dir), resume, fresh, data_identity)


def _train(model, config, data, run, resume, fresh, data_identity) -> TrainResult:
    """:func:`train` with the run directory (if any) locked: the training loop."""
    first = next(model.parameters())
    device, dtype = first.device, first.dtype
    optimizer = _optimizer(model, config)
    start = _open_run(run, model, optimizer, config, data, resume, fresh, data_identity)
    if start == 0:
        seed_everything(config.seed)
    if start > 0 and (run / KERNELS).exists():  # the kernels and shards the run chose
        pin_kernels(json.loads((run / KERNELS).read_text()))
    if config.fast_conv and device.type == "cpu":
        fast_cpu_layers(model)
    data = data.to(device, dtype)
    aligner = getattr(model, "aligner", model)
    warp, shape = aligner.warp, aligner.template_shape
    if config.workers is None:  # shards or not, as measured here (pinned again on resume)
        sample = data.batch(warp, shape, config.sigma, config.batch_size,
                            step_generator(config.seed, 0, _WORKERS))  # fmt: skip
        workers, processes = measured_workers(model, data.loss, sample)
        config = replace(config, workers=workers, processes=processes)
    test = data.test_set(warp, shape, config.sigma, config.batch_size, config.seed, config.n_test)
    step_fn = _step_function(model, data, config, device)
    guard = _NonFiniteGuard(config, run, last_saved=start or None)
    records: list[dict[str, float]] = []
    model.train()
    bar = tqdm(range(start, config.n_steps), initial=start, total=config.n_steps,
               disable=not config.progress, desc=type(aligner).__name__)  # fmt: skip

    def draw(step: int):
        return data.batch(warp, shape, config.sigma, config.batch_size,
                          step_generator(config.seed, step))  # fmt: skip

    try:
        with intra_op_threads(1 if config.workers > 1 else None), _tf32(config.tf32):
            batch = draw(start) if start < config.n_steps else None
            for step in bar:
                optimizer.zero_grad(set_to_none=True)
                loss, outputs = step_fn(batch)  # forward and backward
                if step + 1 < config.n_steps:  # drawn while an accelerator computes this step
                    batch = draw(step + 1)
                if guard.admits(loss, step):  # else skipped; TrainingDiverged stops the run
                    optimizer.step()
                done = step + 1
                if _due(done, 10, config.n_steps):
                    _show_progress(bar, loss, outputs, data, warp, shape)
                if _due(done, config.eval_every, config.n_steps):
                    records.append(_evaluation(model, data, test, done, loss, guard))
                    if run is not None:
                        runs.append_record(run / "log.jsonl", records[-1])
                if run is not None and _due(done, config.checkpoint_every, config.n_steps):
                    save_checkpoint(run / "checkpoint.pt", model, optimizer, step=done,
                                    config=asdict(config))  # fmt: skip
                    runs.write_atomic(run / KERNELS, json.dumps(kernel_choices(), indent=1))
                    guard.last_saved = done
    finally:
        bar.close()
        step_fn.close()
    return TrainResult(step=max(start, config.n_steps), records=records, kernels=kernel_choices())


def _open_run(run, model, optimizer, config, data, resume, fresh, data_identity) -> int:
    """Open (or resume) the run in ``run``; its step: the checkpoint's, 0 for a fresh run."""
    if run is None:
        return 0
    runs.open_run(run, run_identity(model, config, data, data_identity), resume=resume,
                  fresh=fresh)  # fmt: skip
    start = resume_run(run, model, optimizer, config)
    runs.truncate_records(run / "log.jsonl", keep=lambda r: _record_step(r) <= start)
    return start


def _step_function(model, data, config, device) -> ShardedStep | ForkedStep | GraphedStep:
    """One step's forward and backward: replayed from a CUDA graph, or in CPU shards (threads
    or processes)."""
    if config.cuda_graph and device.type == "cuda" and config.workers == 1:
        return GraphedStep(model, data.loss)
    if config.processes and config.workers > 1:
        return ForkedStep(model, data.loss, config.workers)
    return ShardedStep(model, data.loss, config.workers)


def _evaluation(model, data, test, done, loss, guard) -> dict[str, Any]:
    """The log record of step ``done``: train loss, test loss and errors, skipped steps, time."""
    record = {"step": done, "train_loss": loss.item(), **evaluate(model, data, test)}
    if guard.config.nonfinite == "skip":  # the steps skipped since the last record
        record["skipped_steps"] = guard.take_skipped()
    record["time"] = time.time()
    return record


def _due(done: int, every: int, n_steps: int) -> bool:
    """Whether something done every ``every`` steps (and at the last one) is due now."""
    return done % every == 0 or done == n_steps


def _show_progress(bar, loss, outputs, data, warp, shape) -> None:
    """The loss and the training error of this step on the progress bar."""
    err = torch.cat([data.errors(o, b, warp, shape)["error"] for o, b in outputs]).mean()
    bar.set_postfix(loss=f"{loss.item():.4g}", error=f"{err.item():.4g}", refresh=False)


@dataclass
class _NonFiniteGuard:
    """What a non-finite loss does (``config.nonfinite``): stop the run, or skip the batch."""

    config: TrainConfig
    run: Path | None
    last_saved: int | None  # the step of the last checkpoint written
    in_a_row: int = 0
    skipped: list[int] = field(default_factory=list)

    def admits(self, loss: torch.Tensor, step: int) -> bool:
        """Whether the optimizer may step on ``loss``; raises :class:`TrainingDiverged`."""
        finite = bool(torch.isfinite(loss))
        self.in_a_row = 0 if finite else self.in_a_row + 1
        if not finite and (self.config.nonfinite == "stop" or self.in_a_row >= MAX_SKIPS_IN_A_ROW):
            raise TrainingDiverged(self._message(loss, step))
        if not finite:  # nonfinite="skip": this batch changes nothing
            self.skipped.append(step)
        return finite

    def take_skipped(self) -> list[int]:
        """The steps skipped since the last call."""
        skipped, self.skipped = self.skipped, []
        return skipped

    def _message(self, loss: torch.Tensor, step: int) -> str:
        where = "none (no run_dir)" if self.run is None else "none written yet"
        if self.run is not None and self.last_saved is not None:
            where = f"{self.run / 'checkpoint.pt'} (step {self.last_saved})"
        c = self.config
        return (
            f"loss is {loss.item()} at step {step}"
            + (f" ({self.in_a_row} batches in a row)" if self.in_a_row > 1 else "")
            + f": training diverged. The model holds the parameters of step {step}; "
            f"last checkpoint: {where}. Lower the learning rates (lr_predictor="
            f"{c.lr_predictor}, lr_classifier={c.lr_classifier})."
        )


@contextlib.contextmanager
def _tf32(allow: bool) -> Iterator[None]:
    """Allow or forbid TensorFloat-32 in cuDNN and cuBLAS for the block, then restore."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Two parameter groups when ``model`` has ``aligner`` and ``classifier``, else one."""
    if hasattr(model, "aligner") and hasattr(model, "classifier"):
        groups = [
            {"params": list(model.aligner.parameters()), "lr": config.lr_predictor},
            {"params": list(model.classifier.parameters()), "lr": config.lr_classifier},
        ]
    else:
        groups = [{"params": list(model.parameters()), "lr": config.lr_predictor}]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups)
    momentum = config.momentum if config.optimizer == "momentum" else 0.0
    return torch.optim.SGD(groups, lr=config.lr_predictor, momentum=momentum)


def evaluate(model: nn.Module, data, test) -> dict[str, float]:
    """Mean test loss and errors over the fixed test perturbations (eval mode, no gradients)."""
    aligner = getattr(model, "aligner", model)
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    try:
        with torch.no_grad():
            for batch in test:
                out = model(batch.images, batch.p_init)
                m = len(batch.target)
                sums["test_loss"] = sums.get("test_loss", 0.0) + data.loss(out, batch).item() * m
                for key, v in data.errors(out, batch, aligner.warp, aligner.template_shape).items():
                    sums[f"test_{key}"] = sums.get(f"test_{key}", 0.0) + v.sum().item()
                n += m
    finally:
        model.train(was_training)
    return {key: value / n for key, value in sums.items()}


def _record_step(record: dict[str, Any]) -> float:
    """The step of a log record; ``inf`` (dropped) for a foreign one."""
    step = record.get("step")
    return float(step) if isinstance(step, int | float) else math.inf
