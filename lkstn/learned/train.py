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
kernels' floating-point reductions depend on them). On a CPU each batch is cut into ``workers``
shards (default: one per thread, 25 samples or more each) whose forward and backward run in
parallel threads (:mod:`lkstn.learned.shards`); on a GPU, with ``cuda_graph=True``, each
step's forward and backward is replayed from a CUDA graph (:mod:`lkstn.learned.graphed`); the
next batch is drawn while a GPU computes the current one. Training runs in float32 without
TensorFloat-32 unless ``tf32=True``. The test perturbations are drawn once (fixed seed), so test
errors are repeatable. A non-finite loss stops the run with :class:`TrainingDiverged` before the
update, leaving the last checkpoint intact; with
``nonfinite="skip"`` the batch is dropped instead (no update, counted in the log as
``skipped_steps``) and the run stops only after ``MAX_SKIPS_IN_A_ROW`` such batches in a row.

Run directory (:mod:`lkstn.runs`): ``manifest.json`` (the configuration, the model description
with its parameter shapes, the data identity, the seed and the code version; a resume that differs
in any of them is refused, :func:`run_identity`), ``log.jsonl`` (one line per evaluation, appended
with fsync; a resume cuts a torn line and the lines past the checkpoint), ``checkpoint.pt``
(latest, written atomically) and ``lock`` (one writer at a time). A fresh run (no checkpoint)
seeds every global generator it may use (torch, NumPy, Python ``random``) from ``config.seed``; a
resumed run restores torch's from the checkpoint; so dropout draws the same masks in two
identical runs.

Glossary: ``step`` optimizer steps taken; ``lr_predictor``/``lr_classifier`` the learning rates of
the geometric predictor(s) and of the classifier.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from lkstn import runs
from lkstn.learned.checkpoint import save_checkpoint
from lkstn.learned.fast_cpu import fast_cpu_layers
from lkstn.learned.graphed import GraphedStep
from lkstn.learned.resume import resume_run, run_identity, seed_everything
from lkstn.learned.shards import ShardedStep, default_workers, intra_op_threads
from lkstn.learned.streams import AlignmentData, ClassificationData, step_generator

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "evaluate",
    "run_identity",
    "train",
]

_OPTIMIZERS = ("sgd", "momentum", "adam")
MAX_SKIPS_IN_A_ROW = 10  # nonfinite="skip": this many non-finite batches in a row stop the run


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model holds the parameters of the last good step."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (recorded in the run manifest and checkpoints).

    Attributes
    ----------
    n_steps : int
        Total optimizer steps (a resumed run continues up to it).
    sigma : float
        Perturbation scale in template pixels ([LL17]: 2.5-10 planar, 3.5 MNIST; the
        authors' MNIST code uses 0.25 canonical units, 3.375 px at 28 x 28).
    batch_size : int
        Perturbed samples per step (the paper: 100).
    optimizer : "sgd", "momentum" or "adam"
        Plain SGD is the paper's.
    lr_predictor, lr_classifier : float
        Learning rates of the aligner's parameters and of the classifier's.
    momentum : float
        For ``"momentum"``.
    seed : int
        Seeds the training stream and the test perturbations.
    n_test : int
        Test starts of an alignment run (a classification run uses its whole test set).
    eval_every, checkpoint_every : int
        Steps between evaluations / checkpoints (the last step always gets both).
    progress : bool
        Show a tqdm progress bar with the loss and the training error.
    fast_conv : bool
        On CPU, switch the model's convolution and 2x2 pooling layers to their fast CPU form
        (:func:`~lkstn.learned.fast_cpu.fast_cpu_layers`: same function and gradients,
        in place).
    workers : int or None
        Split each batch into this many shards, whose forward and backward run in parallel
        threads with one intra-op thread each (:mod:`lkstn.learned.shards`: the batch's
        gradient, summed in a fixed order). ``None``: ``torch.get_num_threads()`` on a CPU (at
        most one shard per 25 samples), 1 on other devices. Results depend on it in the last
        bits, so resume with the same value.
    cuda_graph : bool
        On a CUDA device, capture each step's forward and backward into a CUDA graph at the
        first step and replay it (:class:`~lkstn.learned.graphed.GraphedStep`: the same
        kernels, without the host's launch overhead: 5.6x the eager steps/s of MNIST
        IC-STN-4(a) on an H200). Graphed training follows eager training to float64 rounding
        (``tests/learned/test_graphed.py``, passed on an H200). Ignored on a CPU.
    tf32 : bool
        Let cuDNN convolutions and cuBLAS matrix products use TensorFloat-32 (10-bit mantissa)
        during training. PyTorch allows it for convolutions by default; here it is off, so a GPU
        computes the float32 function the CPU computes (set for the duration of :func:`train`,
        then restored).
    nonfinite : "stop" or "skip"
        What a batch with a NaN or infinite loss does: stop the run (:class:`TrainingDiverged`)
        or drop the batch without an update, as mixed-precision training drops a step whose
        gradients overflowed (the run still stops after ``MAX_SKIPS_IN_A_ROW`` in a row: the
        model itself is then broken). A homography that a prediction folds through the plane
        at infinity makes one sample's loss NaN; ``"skip"`` lets a long run go past it.
    """

    n_steps: int
    sigma: float
    batch_size: int = 100
    optimizer: Literal["sgd", "momentum", "adam"] = "sgd"
    lr_predictor: float = 1e-4
    lr_classifier: float = 1e-2
    momentum: float = 0.9
    seed: int = 0
    n_test: int = 1000
    eval_every: int = 1000
    checkpoint_every: int = 1000
    progress: bool = True
    fast_conv: bool = True
    workers: int | None = None
    cuda_graph: bool = True
    tf32: bool = False
    nonfinite: Literal["stop", "skip"] = "stop"

    def __post_init__(self) -> None:
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise ValueError(f"workers must be a positive integer or None, got {self.workers!r}")
        for name in ("n_steps", "batch_size", "n_test", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("sigma", "lr_predictor", "lr_classifier", "momentum"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite must be 'stop' or 'skip', got {self.nonfinite!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns: the final step and every evaluation record."""

    step: int
    records: list[dict[str, float]] = field(default_factory=list)

    @property
    def last(self) -> dict[str, float]:
        """The final evaluation."""
        return self.records[-1] if self.records else {}


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
    """:func:`train` with the run directory (if any) locked."""
    first = next(model.parameters())
    device, dtype = first.device, first.dtype
    workers = config.workers or default_workers(model, config.batch_size)
    config = replace(config, workers=workers)  # as saved
    start = 0
    optimizer = _optimizer(model, config)
    if run is not None:
        identity = run_identity(model, config, data, data_identity)
        runs.open_run(run, identity, resume=resume, fresh=fresh)
        start = resume_run(run, model, optimizer, config)
        runs.truncate_records(run / "log.jsonl", keep=lambda r: _record_step(r) <= start)
    if start == 0:
        seed_everything(config.seed)
    if config.fast_conv and device.type == "cpu":
        fast_cpu_layers(model)
    data = data.to(device, dtype)
    aligner = getattr(model, "aligner", model)
    warp, shape = aligner.warp, aligner.template_shape
    test = data.test_set(warp, shape, config.sigma, config.batch_size, config.seed, config.n_test)
    records: list[dict[str, float]] = []
    last_saved = start or None
    workers = config.workers
    if config.cuda_graph and device.type == "cuda" and workers == 1:
        step_fn: ShardedStep | GraphedStep = GraphedStep(model, data.loss)
    else:
        step_fn = ShardedStep(model, data.loss, workers)
    model.train()
    bar = tqdm(range(start, config.n_steps), initial=start, total=config.n_steps,
               disable=not config.progress, desc=type(aligner).__name__)  # fmt: skip

    def draw(step: int):
        return data.batch(warp, shape, config.sigma, config.batch_size,
                          step_generator(config.seed, step))  # fmt: skip

    try:
        with intra_op_threads(1 if workers > 1 else None), _tf32(config.tf32):
            batch = draw(start) if start < config.n_steps else None
            in_a_row, skipped = 0, []
            for step in bar:
                optimizer.zero_grad(set_to_none=True)
                loss, outputs = step_fn(batch)
                if step + 1 < config.n_steps:  # drawn while an accelerator computes this step
                    batch = draw(step + 1)
                finite = bool(torch.isfinite(loss))
                in_a_row = 0 if finite else in_a_row + 1
                if not finite and (config.nonfinite == "stop" or in_a_row >= MAX_SKIPS_IN_A_ROW):
                    where = "none (no run_dir)" if run is None else "none written yet"
                    if run is not None and last_saved is not None:
                        where = f"{run / 'checkpoint.pt'} (step {last_saved})"
                    raise TrainingDiverged(
                        f"loss is {loss.item()} at step {step}"
                        + (f" ({in_a_row} batches in a row)" if in_a_row > 1 else "")
                        + f": training diverged. The model holds the parameters of step {step}; "
                        f"last checkpoint: {where}. Lower the learning rates (lr_predictor="
                        f"{config.lr_predictor}, lr_classifier={config.lr_classifier})."
                    )
                if finite:
                    optimizer.step()
                else:  # nonfinite="skip": this batch changes nothing
                    skipped.append(step)
                done = step + 1
                if done % 10 == 0 or done == config.n_steps:
                    err = torch.cat(
                        [data.errors(o, b, warp, shape)["error"] for o, b in outputs]
                    ).mean()
                    bar.set_postfix(loss=f"{loss.item():.4g}", error=f"{err.item():.4g}",
                                    refresh=False)  # fmt: skip
                if done % config.eval_every == 0 or done == config.n_steps:
                    record = {"step": done, "train_loss": loss.item(),
                              **evaluate(model, data, test)}  # fmt: skip
                    if config.nonfinite == "skip":  # the steps skipped since the last record
                        record["skipped_steps"] = skipped
                        skipped = []
                    record["time"] = time.time()
                    records.append(record)
                    if run is not None:
                        runs.append_record(run / "log.jsonl", record)
                if run is not None and (
                    done % config.checkpoint_every == 0 or done == config.n_steps
                ):
                    save_checkpoint(run / "checkpoint.pt", model, optimizer, step=done,
                                    config=asdict(config))  # fmt: skip
                    last_saved = done
    finally:
        bar.close()
        step_fn.close()
    return TrainResult(step=max(start, config.n_steps), records=records)


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
