"""Tests for lkstn.learned.sweep: stacked forward, batched == separate training, exact resume."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch
from skimage import data as skdata
from skimage import transform
from torch import nn

from lkstn.learned.checkpoint import load_checkpoint
from lkstn.learned.predictors import LinearPredictor
from lkstn.learned.stacked import LinearICSTNStack
from lkstn.learned.stn import ICSTN
from lkstn.learned.streams import AlignmentData, step_generator
from lkstn.learned.sweep import train_sweep
from lkstn.learned.train import TrainConfig, train
from lkstn.warps import Affine, Homography

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (12, 12)
# (depth, sigma px, seed): models 0 and 3 share a data stream, as Table 1's depths at one sigma do
SPEC = [(1, 1.0, 5), (3, 1.5, 6), (2, 0.5, 7), (2, 1.0, 5)]


class Standardise(nn.Module):
    """``(x - mu) / s`` with fixed buffers (the planar experiment's input layer)."""

    def __init__(self, mu: torch.Tensor, s: float) -> None:
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("s", torch.tensor(s))

    def forward(self, x):
        return (x - self.mu) / self.s


def image_data(dtype=torch.float32) -> AlignmentData:
    """A 40 x 40 camera image; the template box is its central 24 x 24 region."""
    image = transform.resize(skdata.camera().astype(float) / 255, (40, 40), anti_aliasing=True)
    p_true = torch.tensor([-0.4, 0.0, 0.0, 0.0, -0.4, 0.0])  # affine box, half the image
    return AlignmentData(torch.as_tensor(image)[None, None].to(dtype), p_true.to(dtype))


def make_models(seed: int = 0, warp=None, dtype=torch.float32) -> list[ICSTN]:
    """The models of SPEC; the first has a plain LinearPredictor, the others standardise."""
    gen = torch.Generator().manual_seed(seed)
    warp = warp or Affine()
    models = []
    for k, (depth, _, _) in enumerate(SPEC):
        linear = LinearPredictor(SHAPE, warp.n_params)
        with torch.no_grad():  # small random weights: every warp moves (zero weights do not)
            linear.linear.weight.normal_(0, 1e-3, generator=gen)
        mu = 0.5 + 0.1 * torch.rand(1, *SHAPE, generator=gen)
        f = linear if k == 0 else nn.Sequential(Standardise(mu, 0.2 + 0.05 * k), linear)
        models.append(ICSTN(f, warp=warp, n_warps=depth, template_shape=SHAPE).to(dtype))
    return models


def configs(n_steps: int, **kw) -> list[TrainConfig]:
    base = dict(n_steps=n_steps, batch_size=16, optimizer="adam", n_test=32, eval_every=4,
                checkpoint_every=4, progress=False, workers=1)  # fmt: skip
    return [
        TrainConfig(sigma=s, seed=seed, lr_predictor=1e-3 / d, **{**base, **kw})
        for d, s, seed in SPEC
    ]


@pytest.mark.parametrize("warp", [Affine(), Homography()], ids=["affine", "homography"])
def test_stacked_forward_and_gradient_equal_each_model(warp) -> None:
    # float64: the stack computes the same function in another order (folded standardisation,
    # batched products), so the two agree to a few float64 roundings, ~1e-15 relative
    data = image_data(torch.float64)
    data = AlignmentData(data.image, torch.zeros(warp.n_params, dtype=torch.float64) - 0.0)
    models = make_models(warp=warp, dtype=torch.float64)
    stack = LinearICSTNStack(models)
    assert [models[i].n_warps for i in stack.order] == sorted((d for d, *_ in SPEC), reverse=True)
    batches = [data.batch(warp, SHAPE, SPEC[i][1], 8, step_generator(SPEC[i][2], 0))
               for i in stack.order]  # fmt: skip
    p_init = torch.stack([b.p_init for b in batches]).double()  # one stream per model here
    p = stack(data.image, p_init, torch.arange(len(models)))
    target = torch.stack([b.target for b in batches])
    grads = torch.autograd.grad((p - target).pow(2).sum(-1).mean(-1).sum(), [stack.W, stack.b])
    for k, i in enumerate(stack.order):
        out = models[i](data.image, p_init[k])
        assert torch.allclose(p[k], out.p, rtol=0, atol=1e-13)
        loss = (out.p - target[k]).pow(2).sum(-1).mean()
        linear = models[i].predictor if i == 0 else models[i].predictor[1]
        gW, gb = torch.autograd.grad(loss, [linear.linear.weight, linear.linear.bias])
        scale = float(gW.abs().max())
        assert scale > 0  # the check below is not vacuous
        assert torch.allclose(grads[0][k], gW, rtol=0, atol=1e-12 * scale)
        assert torch.allclose(grads[1][k], gb, rtol=0, atol=1e-12 * float(gb.abs().max()))


def test_grid_gradient_against_finite_differences() -> None:
    stack = LinearICSTNStack(make_models(dtype=torch.float64))
    M = torch.eye(3, dtype=torch.float64).repeat(3, 1, 1) + 0.05 * torch.randn(3, 3, 3).double()
    M.requires_grad_()
    assert torch.autograd.gradcheck(stack.grid, (M,))
    xy = stack.grid(M)  # against the matrix product W(x; p) = M [u, v, 1]^T
    G = stack.sampler.grid  # (3, h*w)
    ref = (M[:, :2] @ G).view(3, 2, *SHAPE).permute(0, 2, 3, 1)
    assert torch.allclose(xy, ref, atol=1e-14)


def test_four_models_batched_equal_four_trained_one_at_a_time() -> None:
    # float64, so that the comparison sees the algorithm and not float32 chaos: the stack sums in
    # another order (~1e-16 relative per operation), and Adam's normalised steps let such
    # differences grow over the steps; after 24 steps they stay below 1e-9 of the weights. In
    # float32 the same test drifts to ~1e-2 relative within a few hundred steps (Adam divides
    # near-zero gradients by their own size), which is why Table 1 is compared by spread.
    data = image_data(torch.float64)
    together = make_models(dtype=torch.float64)
    alone = copy.deepcopy(together)
    train_sweep(together, configs(24), [data] * len(SPEC))
    for model, config in zip(alone, configs(24), strict=True):
        train(model, config, data)
    moved = 0.0
    for a, b, before in zip(together, alone, make_models(dtype=torch.float64), strict=True):
        for x, y, x0 in zip(a.parameters(), b.parameters(), before.parameters(), strict=True):
            scale = float(y.abs().max())
            moved = max(moved, float((y - x0).abs().max()) / scale)
            assert torch.allclose(x, y, rtol=0, atol=1e-9 * scale)
    assert moved > 1e-2  # the models trained: the tolerance is far below what training changed


def test_sigkill_between_checkpoints_then_resume_is_bit_identical(tmp_path) -> None:
    straight = make_models()
    train_sweep(straight, configs(12), [image_data()] * len(SPEC),
                [tmp_path / "a" / str(i) for i in range(len(SPEC))])  # fmt: skip
    # A fresh process trains the same sweep and is SIGKILLed before its 7th checkpoint write:
    # two models have step-8 checkpoints, two still step 4.
    script = textwrap.dedent(f"""
        import os, signal, sys
        import torch
        torch.set_num_threads({torch.get_num_threads()})
        sys.path.insert(0, {str(__file__.rsplit("/", 1)[0])!r})
        from test_sweep import SPEC, configs, image_data, make_models
        import lkstn.learned.sweep as sweep
        saves, save = [], sweep.save_checkpoint
        def dying_save(*args, **kw):
            saves.append(1)
            if len(saves) == 7:
                os.kill(os.getpid(), signal.SIGKILL)
            return save(*args, **kw)
        sweep.save_checkpoint = dying_save
        sweep.train_sweep(make_models(), configs(12), [image_data()] * len(SPEC),
                          [{str(tmp_path / "b")!r} + f"/{{i}}" for i in range(len(SPEC))])
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=300)
    assert proc.returncode == -9
    runs = [tmp_path / "b" / str(i) for i in range(len(SPEC))]
    steps = sorted(load_checkpoint(r / "checkpoint.pt").step for r in runs)
    assert steps == [4, 4, 8, 8]
    resumed = make_models(seed=123)  # different weights: everything must come from disk
    train_sweep(resumed, configs(12), [image_data()] * len(SPEC), runs, resume=True)
    for a, b in zip(straight, resumed, strict=True):
        for x, y in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(x, y)
    for i in range(len(SPEC)):
        logs = [
            [{k: v for k, v in json.loads(ln).items() if k != "time"}
             for ln in (root / str(i) / "log.jsonl").read_text().splitlines()]
            for root in (tmp_path / "a", tmp_path / "b")
        ]  # fmt: skip
        assert logs[0] == logs[1]
        assert [r["step"] for r in logs[1]] == [4, 8, 12]


def test_a_sweep_checkpoint_resumes_under_train(tmp_path) -> None:
    data = image_data()
    straight = make_models()[1]
    train(straight, configs(8)[1], data)
    models = make_models()
    runs = [tmp_path / str(i) for i in range(len(SPEC))]
    train_sweep(models, configs(4), [data] * len(SPEC), runs)
    resumed = make_models(seed=9)[1]
    train(resumed, configs(8)[1], data, run_dir=runs[1], resume=True)
    for x, y in zip(straight.parameters(), resumed.parameters(), strict=True):
        # the first 4 steps were the stack's float32 arithmetic, the last 4 train's
        assert torch.allclose(x, y, rtol=1e-3, atol=1e-6)
    assert load_checkpoint(runs[1] / "checkpoint.pt").step == 8


def test_bad_sweeps_are_refused() -> None:
    data = image_data()
    with pytest.raises(ValueError, match="same n_steps"):
        train_sweep(make_models()[:2], [configs(4)[0], configs(5)[1]], [data] * 2)
    with pytest.raises(ValueError, match="one entry per model"):
        train_sweep(make_models(), configs(4)[:2], [data] * 4)
    with pytest.raises(ValueError, match="LinearPredictor"):
        model = ICSTN(nn.Sequential(nn.Flatten(), nn.Linear(144, 6)), warp=Affine(),
                      n_warps=1, template_shape=SHAPE)  # fmt: skip
        train_sweep([model], configs(4)[:1], [data])


def test_a_sweep_keeps_the_run_directory_contract(tmp_path) -> None:
    """The manifest of lkstn.runs guards a sweep's runs as it guards train's: an existing run is
    refused without resume, a resume with other settings is refused, another writer is refused."""
    from lkstn import runs as run_dirs

    data = image_data()
    dirs = [tmp_path / str(i) for i in range(len(SPEC))]
    train_sweep(make_models(), configs(4), [data] * len(SPEC), dirs)
    assert all((d / "manifest.json").exists() for d in dirs)
    with pytest.raises(run_dirs.RunExists, match="holds a run"):
        train_sweep(make_models(), configs(4), [data] * len(SPEC), dirs)
    other = [replace(c, lr_predictor=c.lr_predictor * 2) for c in configs(4)]
    with pytest.raises(run_dirs.RunMismatch, match="lr_predictor"):
        train_sweep(make_models(), other, [data] * len(SPEC), dirs, resume=True)
    holder = subprocess.Popen(  # another process holds one model's run (the lock is per process)
        [sys.executable, "-c", "import sys, time; from lkstn import runs\n"
         f"with runs.lock({str(dirs[2])!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(run_dirs.RunLocked):
            train_sweep(make_models(), configs(4), [data] * len(SPEC), dirs, resume=True)
    finally:
        holder.kill()
        holder.wait()
    train_sweep(make_models(), configs(4), [data] * len(SPEC), dirs, fresh=True)
    assert [r["step"] for r in run_dirs.read_records(dirs[0] / "log.jsonl")] == [4]
