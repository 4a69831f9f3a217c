"""Resuming a training run: what its manifest compares, the checks, the global seeds.

:func:`run_identity` is what :func:`lkstn.learned.train.train` records in a run's manifest
(:mod:`lkstn.runs`) and compares on every resume: the configuration without the execution settings
(:data:`EXECUTION`), the model (its ``config``: class, warp, depth, update rule; and its parameter
shapes) and the data. :func:`resume_run` checks the checkpoint's own stored configuration too (a
checkpoint copied into a run, or a run written before manifests existed), including ``n_steps``
below the checkpoint's step, then loads it. :func:`seed_everything` seeds the global generators a
fresh run may use.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from lkstn import runs
from lkstn.learned.checkpoint import load_checkpoint, restore_checkpoint
from lkstn.learned.config import TrainConfig

if TYPE_CHECKING:
    from lkstn.learned.streams import AlignmentData, ClassificationData

__all__ = ["EXECUTION", "resume_run", "run_identity", "seed_everything"]

# TrainConfig fields that change how a run executes, not what it computes: free to differ on
# resume (n_steps may grow; workers, cuda_graph, tf32 change the last bits only)
EXECUTION = ("n_steps", "eval_every", "checkpoint_every", "progress", "fast_conv", "workers",
             "processes", "cuda_graph", "tf32", "nonfinite")  # fmt: skip


def run_identity(
    model: nn.Module,
    config: TrainConfig,
    data: AlignmentData | ClassificationData | None = None,
    data_identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a run's manifest compares: the configuration (without the execution settings), the
    model (its ``config``, class and parameter shapes) and the data (``data_identity``, or the
    shape, dtype and SHA-256 of every tensor of ``data``)."""
    if data_identity is None:
        data_identity = {}
        for name, value in vars(data).items():
            if isinstance(value, torch.Tensor):
                v = value.detach().cpu().contiguous()
                raw = v.view(torch.uint8).numpy()
                data_identity[name] = {"shape": list(v.shape), "dtype": str(v.dtype),
                                       "sha256": runs.digest(raw)}  # fmt: skip
    return {
        "config": {k: v for k, v in asdict(config).items() if k not in EXECUTION},
        "model": {
            **getattr(model, "config", {}),
            "class": type(model).__name__,
            "parameters": {k: list(v.shape) for k, v in model.state_dict().items()},
        },
        "data": data_identity,
    }


def resume_run(
    run: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, config: TrainConfig
) -> int:
    """Load ``run``'s checkpoint into ``model`` and ``optimizer`` after checking that it was
    written by this configuration; returns its step (0 without a checkpoint)."""
    path = run / "checkpoint.pt"
    if not path.exists():
        return 0
    device = next(model.parameters()).device
    ckpt = load_checkpoint(path, map_location=device)
    now = {k: v for k, v in asdict(config).items() if k not in EXECUTION}
    then = {k: v for k, v in ckpt.config.items() if k not in EXECUTION}
    diff = runs.differences({"config": then, "model": ckpt.model_config},
                            {"config": now, "model": getattr(model, "config", {})})  # fmt: skip
    if ckpt.step > config.n_steps:
        diff.append(f"n_steps: checkpoint at step {ckpt.step}, now {config.n_steps}")
    if diff:
        raise runs.RunMismatch(
            f"resume: {path} was written by another configuration ({'; '.join(diff)}); pass "
            "the run's settings, or fresh=True (--fresh) to start over"
        )
    restore_checkpoint(path, ckpt, model, optimizer)
    if ckpt.rng_state is not None:  # continue the process's global stream (dropout)
        torch.set_rng_state(ckpt.rng_state)
    return ckpt.step


def seed_everything(seed: int) -> None:
    """Seed the global generators a model may draw from (dropout, a user's NumPy or random)."""
    torch.manual_seed(seed % 2**64)  # any Python integer: torch takes 64 bits
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global state: what user code reads)
    random.seed(seed)
