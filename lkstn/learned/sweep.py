"""Batched sweeps: many one-linear-layer IC-STNs trained in one process as one computation.

[LL17] Table 1 is 20 small trainings (5 depths x 4 sigma) of an IC-STN whose predictor is one
linear layer on the pixels, optionally behind fixed standardisation buffers ``(x - mu) / s``.
Trained one at a time, each step is a few tensor operations on 100 samples and the machine is
mostly paying per-operation overhead. :func:`train_sweep` trains N such models in lockstep:

- the N predictors are stacked, ``W`` ``(N, P, D)`` and ``b`` ``(N, P)``, and the
  standardisation is folded into them, ``dp = (W / s) x + (b - (W / s) mu)`` (the same affine
  map, [LL17] eq. (5)-(6); the trained parameters are still ``W`` and ``b``, so Adam sees the
  gradients a separate training sees);
- models are ordered by depth (most warps first), so the models still running at warp ``k``
  are a prefix of the stack and every warp is one ``grid_sample`` over ``a_k * B`` samples and
  one batched matrix product ([LL17] eq. (10): ``M(p) <- M(dp) M(p)``);
- the first sample ``I(p_init)`` needs no gradient and is computed once per distinct data
  stream (Table 1's five depths at one sigma share one stream);
- the warp grid is built as a broadcast sum (``x = M00 u + M01 v + M02``) rather than a product
  with an inner dimension of 3, and the unused final sample ``I(p)`` of a c-STN is skipped;
- Adam (or SGD) runs on the stacked tensors with one learning rate per model, the arithmetic of
  ``torch.optim.Adam`` (single-tensor form) with ``lr`` a per-model tensor.

Each model keeps its own data stream (``step_generator(config.seed, step)`` at its ``sigma``, as
:func:`lkstn.learned.train.train` draws it), learning rate, run directory, ``log.jsonl`` and
``checkpoint.pt`` (the format of :mod:`lkstn.learned.checkpoint`, with a ``torch.optim.Adam``
state, so a model checkpointed by a sweep resumes under ``train`` and back). The result equals
separate training up to float32 rounding: the folded layer and the larger kernels sum in another
order (``tests/learned/test_sweep.py`` states the tolerance). A resumed sweep is bit-identical to
an uninterrupted one: each model restarts from its own checkpoint, and a model whose checkpoint
is ahead of the others (a kill between two models' writes) takes no update until the sweep
reaches its step.

Glossary: ``N`` models, ``B`` batch size, ``P`` warp parameters, ``D = C h w`` pixels of a
sample, ``a_k`` models with more than ``k`` warps, ``U`` distinct data streams.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from lkstn.learned._torch_warp import WarpSampler
from lkstn.learned.checkpoint import load_checkpoint, save_checkpoint
from lkstn.learned.predictors import LinearPredictor
from lkstn.learned.stn import ICSTN
from lkstn.learned.streams import AlignmentData, step_generator
from lkstn.learned.train import TrainConfig, TrainingDiverged, TrainResult

__all__ = ["LinearICSTNStack", "train_sweep"]

_SHARED = ("n_steps", "batch_size", "n_test", "eval_every", "checkpoint_every", "optimizer")


def _linear_parts(model: nn.Module) -> tuple[nn.Linear, Tensor | None, Tensor | None]:
    """``(linear, mu, s)`` of an IC-STN whose predictor is ``LinearPredictor`` or
    ``Sequential(standardise, LinearPredictor)`` (``standardise`` with buffers ``mu``, ``s``)."""
    if not isinstance(model, ICSTN) or model.update != "eq10":
        raise ValueError("train_sweep takes ICSTN models with update='eq10'")
    f = model.predictor
    if isinstance(f, LinearPredictor):
        return f.linear, None, None
    if (
        isinstance(f, nn.Sequential)
        and len(f) == 2
        and isinstance(f[1], LinearPredictor)
        and isinstance(getattr(f[0], "mu", None), Tensor)
        and isinstance(getattr(f[0], "s", None), Tensor)
        and not list(f[0].parameters())
    ):
        return f[1].linear, f[0].mu, f[0].s
    raise ValueError(
        "train_sweep takes IC-STNs whose predictor is LinearPredictor or "
        f"Sequential(standardise, LinearPredictor), got {type(f).__name__}"
    )


class _Grid(torch.autograd.Function):
    """``A (n, r, 3) -> A G`` laid out ``(n, h, w, r)``, ``G`` the homogeneous grid ``(3, h w)``.

    Forward: a broadcast sum over rows and columns (``x = A00 u + A01 v + A02``: no product with
    an inner dimension of 3). Backward: ``dA = dX K`` with ``K = kron(G^T, I_r)`` ``(h w r, 3 r)``,
    one matrix product over the whole batch instead of autograd's two strided reductions.
    """

    @staticmethod
    def forward(ctx, A: Tensor, G: Tensor, K: Tensor, shape: tuple[int, int]) -> Tensor:
        h, w = shape
        ctx.save_for_backward(K)
        u, v = G[0, :w], G[1, ::w]  # canonical column / row positions
        cols = A[:, :, 0, None] * u  # (n, r, w)
        lines = A[:, :, 1, None] * v + A[:, :, 2, None]  # (n, r, h)
        xyz = cols[:, :, None, :] + lines[:, :, :, None]  # (n, r, h, w): rows contiguous
        return xyz.permute(0, 2, 3, 1)  # (n, h, w, r)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (K,) = ctx.saved_tensors
        n, h, w, r = grad.shape
        dA = grad.reshape(n, h * w * r) @ K  # (n, 3 r): dA[c r + i] = sum_k G[c, k] dX[k r + i]
        return dA.view(n, 3, r).transpose(1, 2), None, None, None


class LinearICSTNStack(nn.Module):
    """N one-linear-layer IC-STNs of one warp and template frame as one batched forward.

    Parameters
    ----------
    models : sequence of ICSTN
        Predictors ``LinearPredictor`` (optionally behind ``(x - mu) / s`` buffers); any depths.
        Their weights are copied in; :meth:`write_back` copies them out.

    Attributes
    ----------
    order : list of int
        Stack position -> index in ``models`` (deepest first).
    """

    def __init__(self, models: Sequence[ICSTN]) -> None:
        super().__init__()
        if not models:
            raise ValueError("models must not be empty")
        first = models[0]
        for m in models:
            if m.warp.name != first.warp.name or m.template_shape != first.template_shape:
                raise ValueError("every model of a sweep needs the same warp and template_shape")
        self.models = list(models)
        self.order = sorted(range(len(models)), key=lambda i: -models[i].n_warps)
        parts = [_linear_parts(models[i]) for i in self.order]
        like = parts[0][0].weight
        D = like.shape[1]
        self.W = nn.Parameter(torch.stack([p[0].weight.detach() for p in parts]).clone())
        self.b = nn.Parameter(torch.stack([p[0].bias.detach() for p in parts]).clone())
        mu = [like.new_zeros(D) if p[1] is None else p[1].reshape(-1).to(like) for p in parts]
        s = [like.new_ones(()) if p[2] is None else p[2].to(like) for p in parts]
        self.register_buffer("mu", torch.stack(mu))  # (N, D)
        self.register_buffer("s", torch.stack(s))  # (N,)
        self.depths = [models[i].n_warps for i in self.order]
        self.sampler = WarpSampler(first.warp, first.template_shape).to(like)
        self._kron: Tensor | None = None

    def write_back(self) -> None:
        """Copy the stacked ``W``, ``b`` into the models' own layers."""
        with torch.no_grad():
            for k, i in enumerate(self.order):
                linear = _linear_parts(self.models[i])[0]
                linear.weight.copy_(self.W[k])
                linear.bias.copy_(self.b[k])

    def grid(self, M: Tensor) -> Tensor:
        """Sampling grid ``W(x; p)``, ``(n, 3, 3) -> (n, h, w, 2)``."""
        S = self.sampler
        h, w = S.template_shape
        r = 3 if S.warp.projective else 2
        if self._kron is None or self._kron.dtype != M.dtype or self._kron.device != M.device:
            eye = torch.eye(r, dtype=M.dtype, device=M.device)
            self._kron = torch.kron(S.grid.T.to(M).contiguous(), eye)  # (h w r, 3 r)
        xyz = _Grid.apply(M[:, :r], S.grid, self._kron, (h, w))  # (n, h, w, r)
        return xyz[..., :2] / xyz[..., 2:] if S.warp.projective else xyz

    def sample(self, image: Tensor, M: Tensor) -> Tensor:
        """``I(p)`` flattened, ``(n, 3, 3) -> (n, D)``; ``image`` ``(1, C, H, W)``."""
        n = M.shape[0]
        out = F.grid_sample(
            image.expand(n, *image.shape[1:]), self.grid(M), mode="bilinear",
            padding_mode="zeros", align_corners=True,
        )  # fmt: skip  # [LL17] eq. (1)
        return out.reshape(n, -1)

    def forward(self, image: Tensor, p_init: Tensor, stream: Tensor) -> Tensor:
        """Final warps ``(N, B, P)`` in stack order.

        ``image`` ``(1, C, H, W)``; ``p_init`` ``(U, B, P)``, one set of starts per distinct
        stream; ``stream`` ``(N,)`` the stream of each stacked model.
        """
        S, N = self.sampler, len(self.depths)
        U, B, P = p_init.shape
        Wf = self.W / self.s[:, None, None]  # (N, P, D): the standardisation folded in
        bf = self.b - (Wf @ self.mu[:, :, None])[..., 0]  # (N, P)
        M0 = S.matrix(p_init.reshape(U * B, P))  # (U*B, 3, 3)
        x = self.sample(image, M0).view(U, B, -1)[stream]  # (N, B, D): I(p_init), no gradient
        M = M0.view(U, B, 3, 3)[stream]  # (N, B, 3, 3)
        for k in range(max(self.depths)):
            a = sum(d > k for d in self.depths)  # the models still running: a prefix
            if k > 0:
                x = self.sample(image, M[:a].reshape(a * B, 3, 3)).view(a, B, -1)
            dp = torch.baddbmm(bf[:a, None, :], x[:a], Wf[:a].transpose(1, 2))  # (a, B, P)
            dM = S.matrix(dp.reshape(a * B, P))
            Ma = S.compose(dM, M[:a].reshape(a * B, 3, 3)).view(a, B, 3, 3)  # [LL17] eq. (10)
            M = Ma if a == N else torch.cat([Ma, M[a:]])
        return S.params(M.reshape(N * B, 3, 3)).view(N, B, P)


def train_sweep(
    models: Sequence[ICSTN],
    configs: Sequence[TrainConfig],
    data: Sequence[AlignmentData],
    run_dirs: Sequence[str | Path] | None = None,
    *,
    resume: bool = True,
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
        One run directory per model (``config.json``, ``log.jsonl``, ``checkpoint.pt``).
    resume : bool
        Continue each model from its own ``checkpoint.pt`` where one exists.
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
    runs = None if run_dirs is None else [Path(r) for r in run_dirs]
    cfg = configs[0]
    like = _linear_parts(models[0])[0].weight
    data = [d.to(like.device, like.dtype) for d in data]
    starts = [0] * n
    adams = [_adam(m, c) for m, c in zip(models, configs, strict=True)]
    for i in range(n):
        path = None if runs is None else runs[i] / "checkpoint.pt"
        if resume and path is not None and path.exists():
            starts[i] = load_checkpoint(path, models[i], adams[i]).step
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
    if runs is not None:
        for i in range(n):
            _start_log(runs[i], configs[i], models[i], starts[i])
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
        evaluate = done % cfg.eval_every == 0 or done == cfg.n_steps
        save = runs is not None and (done % cfg.checkpoint_every == 0 or done == cfg.n_steps)
        if evaluate or save:
            stack.write_back()
        for k in live if evaluate else ():
            i = order[k]
            record = {"step": done, "train_loss": losses[k],
                      **_evaluate(models[i], data[i], tests[k]), "time": time.time()}  # fmt: skip
            records[i].append(record)
            if runs is not None:
                with open(runs[i] / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
        for k in live if save else ():
            i = order[k]
            _fill_adam(adams[i], models[i], [m[k] for m in m1], done)
            save_checkpoint(runs[i] / "checkpoint.pt", models[i], adams[i], step=done,
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
    linear = _linear_parts(model)[0]
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
    linear = _linear_parts(model)[0]
    for j, param in enumerate((linear.weight, linear.bias)):
        opt.state[param] = {
            "step": torch.tensor(float(step)),
            "exp_avg": moments[2 * j].clone(),
            "exp_avg_sq": moments[2 * j + 1].clone(),
        }


def _evaluate(model: ICSTN, data: AlignmentData, test) -> dict[str, float]:
    """Mean test loss and errors of one model over its fixed test starts (eval, no gradients)."""
    sums: dict[str, float] = {}
    n = 0
    model.eval()
    with torch.no_grad():
        for batch in test:
            out = model(batch.images, batch.p_init)
            m = len(batch.target)
            sums["test_loss"] = sums.get("test_loss", 0.0) + data.loss(out, batch).item() * m
            for key, v in data.errors(out, batch, model.warp, model.template_shape).items():
                sums[f"test_{key}"] = sums.get(f"test_{key}", 0.0) + v.sum().item()
            n += m
    model.train()
    return {key: value / n for key, value in sums.items()}


def _start_log(run: Path, config: TrainConfig, model: ICSTN, start: int) -> None:
    """``config.json``; drop ``log.jsonl`` lines past the checkpoint (they will recur)."""
    run.mkdir(parents=True, exist_ok=True)
    meta = {"config": asdict(config), "model": model.config, "trained_by": "train_sweep"}
    (run / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    log = run / "log.jsonl"
    if log.exists():
        kept = []
        for line in log.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= start:
                    kept.append(line)
            except (ValueError, TypeError, KeyError):
                pass  # a torn line (killed mid-write)
        log.write_text("".join(ln + "\n" for ln in kept))
