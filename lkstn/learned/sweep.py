"""Batched sweeps: many one-linear-layer IC-STNs trained in one process as one computation.

[LL17] Table 1 is 20 small trainings (5 depths x 4 sigma) of an IC-STN whose predictor is one
linear layer on the pixels, optionally behind fixed standardisation buffers ``(x - mu) / s``.
:func:`train_sweep` trains N such models in lockstep as one computation
(:class:`~lkstn.learned.stacked.LinearICSTNStack`: one ``grid_sample`` and one batched product
per warp for all models still running, the first sample shared by models that share a data
stream, no unused final sample), and runs Adam (or SGD) on the stacked parameters with one
learning rate per model: ``torch.optim.Adam``'s arithmetic (single-tensor form) with ``lr`` a
per-model tensor. On a CPU the step is dominated by ``grid_sample`` and its backward, whose cost
per sample batching does not change; the gains are the samples not computed, the per-operation
overhead, and kernels large enough to use more than one thread (``benchmarks/sweep_step.py``).

Each model keeps its own data stream (``step_generator(config.seed, step)`` at its ``sigma``, as
:func:`lkstn.learned.train.train` draws it), learning rate, run directory, ``log.jsonl`` and
``checkpoint.pt`` (the format of :mod:`lkstn.learned.checkpoint`, with a ``torch.optim.Adam``
state), in the run-directory format of :mod:`lkstn.runs` that :func:`~lkstn.learned.train.train`
writes: a ``manifest.json`` per model compared on resume, a lock, fsync'd log records; so a model
a sweep trained part-way resumes under ``train`` and the reverse. The function is
the one separate training computes, summed in another order (folded standardisation, larger
kernels): in float64 the trajectories agree to 1e-9 of the weights (``tests/learned/
test_sweep.py``); in float32 Adam's normalised steps amplify the rounding differences (~1e-2
relative after some hundred steps), so float32 results agree as two runs of one recipe do,
within the run-to-run spread (``docs/planar.md``). A resumed sweep is bit-identical to
an uninterrupted one: each model restarts from its own checkpoint, and a model whose checkpoint
is ahead of the others (a kill between two models' writes) takes no update until the sweep
reaches its step.

Glossary: ``N`` models, ``B`` batch size, ``P`` warp parameters, ``U`` distinct data streams,
``m``, ``v`` Adam's moments.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lkstn import runs
from lkstn.learned.checkpoint import save_checkpoint
from lkstn.learned.resume import resume_run, run_identity
from lkstn.learned.stacked import LinearICSTNStack, linear_parts
from lkstn.learned.stn import ICSTN
from lkstn.learned.streams import AlignmentData, step_generator
from lkstn.learned.train import TrainConfig, TrainingDiverged, TrainResult, evaluate

__all__ = ["train_sweep"]

_SHARED = ("n_steps", "batch_size", "n_test", "eval_every", "checkpoint_every", "optimizer")


def train_sweep(
    models: Sequence[ICSTN],
    configs: Sequence[TrainConfig],
    data: Sequence[AlignmentData],
    run_dirs: Sequence[str | Path] | None = None,
    *,
    resume: bool = False,
    fresh: bool = False,
    progress: bool = False,
) -> list[TrainResult]:
    """Train one-linear-layer IC-STNs in place, all at once; see the module docstring.

    Parameters
    ----------
    models : sequence of ICSTN
        ``N`` models, one warp and template frame, any depths (see :class:`LinearICSTNStack`).
    configs : sequence of TrainConfig
        One per model. ``n_steps``, ``batch_size``, ``n_test``, ``eval_every``,
        ``checkpoint_every`` and ``optimizer`` (``"adam"`` or ``"sgd"``) must agree; ``sigma``,
        ``lr_predictor`` and ``seed`` are each model's own. ``nonfinite`` must be ``"stop"``.
    data : sequence of AlignmentData
        One per model, all on the same image (``p_true`` may differ).
    run_dirs : sequence of paths, optional
        One run directory per model (``manifest.json``, ``log.jsonl``, ``checkpoint.pt``), as
        :func:`~lkstn.learned.train.train` writes it.
    resume : bool
        Continue each model from its own ``checkpoint.pt`` where one exists (its manifest must
        match, as for ``train``).
    fresh : bool
        Delete the runs in ``run_dirs`` first. Without ``resume`` or ``fresh``, a run directory
        that holds a run is refused.
    progress : bool
        A tqdm bar over the sweep's steps.

    Returns
    -------
    list of TrainResult
        One per model, in the order given.

    Raises
    ------
    TrainingDiverged
        When a model's loss becomes NaN or infinite (before its update).
    lkstn.runs.RunMismatch, lkstn.runs.RunExists, lkstn.runs.RunLocked, lkstn.runs.NotWritable
        As for :func:`~lkstn.learned.train.train`.
    """
    n = len(models)
    if len(configs) != n or len(data) != n or (run_dirs is not None and len(run_dirs) != n):
        raise ValueError("models, configs, data and run_dirs must have one entry per model")
    for name in _SHARED:
        if len({getattr(c, name) for c in configs}) > 1:
            raise ValueError(f"every config of a sweep needs the same {name}")
    if configs[0].optimizer not in ("adam", "sgd") or any(c.nonfinite != "stop" for c in configs):
        raise ValueError("train_sweep supports optimizer 'adam' or 'sgd' with nonfinite='stop'")
    if any(not isinstance(d, AlignmentData) for d in data):
        raise ValueError("data must be AlignmentData (one per model)")
    if any(not torch.equal(d.image, data[0].image) for d in data):
        raise ValueError("every model of a sweep must train on the same image")
    dirs = None if run_dirs is None else [Path(r) for r in run_dirs]
    with ExitStack() as held:
        for run in dirs or ():
            held.enter_context(runs.lock(run))
        return _sweep(models, configs, data, dirs, resume, fresh, progress)


def _sweep(models, configs, data, dirs, resume, fresh, progress) -> list[TrainResult]:
    """:func:`train_sweep` with its run directories (if any) locked."""
    n = len(models)
    cfg = configs[0]
    adams = [_adam(m, c) for m, c in zip(models, configs, strict=True)]
    starts = [0] * n
    for i, run in enumerate(dirs or ()):
        runs.open_run(run, run_identity(models[i], configs[i], data[i]), resume=resume, fresh=fresh)
        starts[i] = resume_run(run, models[i], adams[i], configs[i])
        runs.truncate_records(run / "log.jsonl", keep=lambda r, s=starts[i]: _step(r) <= s)
    like = linear_parts(models[0])[0].weight
    data = [d.to(like.device, like.dtype) for d in data]
    stack = LinearICSTNStack(models)
    order, N = stack.order, n
    cfgs = [configs[i] for i in order]
    moments = [_moments(adams[i], models[i]) for i in order]  # (W, b) x (exp_avg, exp_avg_sq)
    m1 = [torch.stack([mo[j] for mo in moments]) for j in range(4)]
    lr = torch.tensor([c.lr_predictor for c in cfgs], dtype=torch.float64)  # (N,), as Python's
    ordered = [data[i] for i in order]
    keys = [(c.sigma, c.seed, tuple(d.p_true.tolist())) for c, d in zip(cfgs, ordered, strict=True)]
    unique = list(dict.fromkeys(keys))
    stream = torch.tensor([unique.index(k) for k in keys])  # (N,)
    first_of = [keys.index(k) for k in unique]
    warp, shape = models[0].warp, models[0].template_shape
    tests = [d.test_set(warp, shape, c.sigma, c.batch_size, c.seed, c.n_test)
             for c, d in zip(cfgs, ordered, strict=True)]  # fmt: skip
    start_k = [starts[i] for i in order]
    begin = min(start_k)
    records: list[list[dict[str, float]]] = [[] for _ in range(n)]
    image = data[0].image
    bar = tqdm(range(begin, cfg.n_steps), initial=begin, total=cfg.n_steps,
               disable=not progress, desc=f"sweep of {n}")  # fmt: skip
    for step in bar:
        batches = [
            data[order[k]].batch(warp, shape, cfgs[k].sigma, cfg.batch_size,
                                 step_generator(cfgs[k].seed, step))
            for k in first_of
        ]  # fmt: skip
        p_init = torch.stack([b.p_init for b in batches])  # (U, B, P)
        target = torch.stack([b.target for b in batches])[stream]  # (N, B, P)
        p = stack(image, p_init, stream)  # (N, B, P)
        loss = (p - target).pow(2).sum(-1).mean(-1)  # (N,): each model's own mean loss
        losses = loss.detach().tolist()
        bad = [order[k] for k in range(N) if not math.isfinite(losses[k])]
        if bad:
            raise TrainingDiverged(
                f"loss is not finite at step {step} for model(s) {bad}: training diverged; the "
                "models hold their last checkpointed parameters only in their run directories"
            )
        gW, gb = torch.autograd.grad(loss.sum(), [stack.W, stack.b])
        active = [s <= step for s in start_k]
        with torch.no_grad():
            _update(stack, (gW, gb), m1, lr, step + 1, cfg.optimizer, active)
        done = step + 1
        live = [k for k in range(N) if active[k]]
        due = done % cfg.eval_every == 0 or done == cfg.n_steps
        save = dirs is not None and (done % cfg.checkpoint_every == 0 or done == cfg.n_steps)
        if due or save:
            stack.write_back()
        for k in live if due else ():
            i = order[k]
            record = {"step": done, "train_loss": losses[k],
                      **evaluate(models[i], data[i], tests[k]), "time": time.time()}  # fmt: skip
            records[i].append(record)
            if dirs is not None:
                runs.append_record(dirs[i] / "log.jsonl", record)
        for k in live if save else ():
            i = order[k]
            _fill_adam(adams[i], models[i], [m[k] for m in m1], done)
            save_checkpoint(dirs[i] / "checkpoint.pt", models[i], adams[i], step=done,
                            config=asdict(configs[i]))  # fmt: skip
    bar.close()
    stack.write_back()
    return [TrainResult(step=max(starts[i], cfg.n_steps), records=records[i]) for i in range(n)]


def _update(stack, grads, m1, lr: Tensor, t: int, optimizer: str, active: list[bool]) -> None:
    """One step of every model: ``torch.optim.Adam``'s arithmetic (single-tensor form, default
    betas and eps) or plain SGD, with a per-model ``lr``; inactive models keep their state."""
    keep = None if all(active) else torch.tensor(active)
    for j, (param, grad) in enumerate(zip((stack.W, stack.b), grads, strict=True)):
        view = (-1,) + (1,) * (param.ndim - 1)
        if optimizer == "sgd":
            new = param + (-lr).to(param.dtype).view(view) * grad
        else:
            beta1, beta2, eps = 0.9, 0.999, 1e-8
            m, v = m1[2 * j], m1[2 * j + 1]
            m_new = m.lerp(grad, 1 - beta1)
            v_new = (v * beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = (lr / (1 - beta1**t)).to(param.dtype).view(view)  # float64, then cast
            denom = (v_new.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
            new = param + (-step_size * m_new) / denom  # addcdiv's order: value * t1 / t2
            if keep is not None:
                m_new = torch.where(keep.view(view), m_new, m)
                v_new = torch.where(keep.view(view), v_new, v)
            m.copy_(m_new)
            v.copy_(v_new)
        param.copy_(new if keep is None else torch.where(keep.view(view), new, param))


def _adam(model: ICSTN, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer a separate :func:`~lkstn.learned.train.train` run would checkpoint."""
    params = list(model.parameters())
    if config.optimizer == "adam":
        return torch.optim.Adam([{"params": params, "lr": config.lr_predictor}])
    return torch.optim.SGD([{"params": params, "lr": config.lr_predictor}], lr=config.lr_predictor)


def _moments(opt: torch.optim.Optimizer, model: ICSTN) -> list[Tensor]:
    """``[m_W, v_W, m_b, v_b]`` from ``opt`` (zeros before its first step)."""
    linear = linear_parts(model)[0]
    out = []
    for param in (linear.weight, linear.bias):
        state = opt.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            out.append(state[key].detach().clone() if key in state else torch.zeros_like(param))
    return out


def _fill_adam(opt: torch.optim.Optimizer, model: ICSTN, moments: list[Tensor], step: int) -> None:
    """Put one model's stacked moments into its ``torch.optim.Adam`` (for its checkpoint)."""
    if not isinstance(opt, torch.optim.Adam):
        return
    linear = linear_parts(model)[0]
    for j, param in enumerate((linear.weight, linear.bias)):
        opt.state[param] = {
            "step": torch.tensor(float(step)),
            "exp_avg": moments[2 * j].clone(),
            "exp_avg_sq": moments[2 * j + 1].clone(),
        }


def _step(record: dict) -> float:
    """The step of a log record; ``inf`` (dropped) for a foreign one."""
    step = record.get("step")
    return float(step) if isinstance(step, int | float) else math.inf
