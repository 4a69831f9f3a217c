"""What configures a training run and what it returns: :class:`TrainConfig`, :class:`TrainResult`,
and :class:`TrainingDiverged`, raised when the loss becomes NaN or infinite.

:func:`lkstn.learned.train.train` runs them (and re-exports these names); the configuration is
recorded in the run's manifest and checkpoints (:mod:`lkstn.learned.resume`).

Glossary: ``step`` optimizer steps taken; ``lr_predictor``/``lr_classifier`` the learning rates of
the geometric predictor(s) and of the classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["MAX_SKIPS_IN_A_ROW", "TrainConfig", "TrainResult", "TrainingDiverged"]

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
        (:func:`~lkstn.learned.accel.fast_cpu.fast_cpu_layers`: same function and gradients,
        in place).
    workers : int or None
        Split each batch into this many shards, whose forward and backward run in parallel
        threads with one intra-op thread each (:mod:`lkstn.learned.accel.shards`: the batch's
        gradient, summed in a fixed order). ``None``: on a CPU with several intra-op threads,
        ``torch.get_num_threads()`` shards (at most one per 25 samples) or 1, whichever steps
        faster on this machine (:func:`~lkstn.learned.accel.shards.measured_workers`); 1 on
        other devices. Results depend on it in the last
        bits, so resume with the same value.
    processes : bool or None
        Run the shards after the first in forked worker processes instead of threads
        (:class:`~lkstn.learned.accel.forked.ForkedStep`, Linux only): the same gradient bit for
        bit, without the GIL between shards. ``None``: as measured with ``workers=None``,
        threads when ``workers`` is given.
    cuda_graph : bool
        On a CUDA device, capture each step's forward and backward into a CUDA graph at the
        first step and replay it (:class:`~lkstn.learned.accel.graphed.GraphedStep`: the same
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
    processes: bool | None = None
    cuda_graph: bool = True
    tf32: bool = False
    nonfinite: Literal["stop", "skip"] = "stop"

    def __post_init__(self) -> None:
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise ValueError(f"workers must be a positive integer or None, got {self.workers!r}")
        if self.processes is not None and not isinstance(self.processes, bool):
            raise ValueError(f"processes must be True, False or None, got {self.processes!r}")
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
    """What :func:`train` returns: the final step, every evaluation record, the kernels used.

    ``kernels``: the CPU kernels chosen by measurement in this process
    (:func:`lkstn.learned.accel.kernels.kernel_choices`: layer key -> kernel name); empty where none
    was chosen (a GPU, ``fast_conv=False``).
    """

    step: int
    records: list[dict[str, float]] = field(default_factory=list)
    kernels: dict[str, str] = field(default_factory=dict)

    @property
    def last(self) -> dict[str, float]:
        """The final evaluation."""
        return self.records[-1] if self.records else {}
