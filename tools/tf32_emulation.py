"""Does TensorFloat-32 break the paper's MNIST IC-STN-4(a) recipe? A CPU experiment.

On an H200 the paper's recipe (plain SGD, predictor 1e-4, classifier 1e-2) collapsed to chance
between steps 20K and 40K, twice, while the 2-core CPU, from the same 20K checkpoint and on the
same batches, trained on (docs/mnist_gtsrb.md, "The paper recipe on the GPU"). That GPU run had
cuDNN's TF32 convolutions on (PyTorch's default) and CUDA graphs. This script separates the
first cause from the second on a CPU: it continues the same checkpoint with every convolution
computed as cuDNN computes it in TF32 (its operands rounded to 10 mantissa bits, products summed
in float32), forward and both backward convolutions, everything else unchanged and eager.

Usage (from a copy of the GPU run's folder, e.g. the .tgz the device call returned)::

    python tools/tf32_emulation.py --data /work/shared/data --run runs/tf32-from20k \\
        --iters 40000 --eval-every 2000

It trains ``--run/ic-stn-4a`` (resuming from its checkpoint) and prints each evaluation; the log
is that folder's ``log.jsonl``. ``--no-tf32`` runs the same loop with plain float32 convolutions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from lkstn.experiments import classification as cl
from lkstn.experiments.mnist import MNIST
from lkstn.learned._fast_cpu import _nnpack_conv
from lkstn.learned.train import TrainConfig, train


def tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` (float32) rounded to the nearest TF32 value: 10 mantissa bits, float32 range."""
    bits = x.contiguous().view(torch.int32)
    rounded = (bits + 0x1000) & ~0x1FFF  # round half away from zero on the 13 dropped bits
    return rounded.view(torch.float32)


class _TF32Conv(torch.autograd.Function):
    """A stride-1 unpadded convolution whose three products see TF32 operands.

    The kernels are those of :class:`lkstn.learned._fast_cpu.FastConv2d` (NNPACK forward and
    input gradient, oneDNN weight gradient), on rounded operands.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        x, w = tf32(x), tf32(weight)
        ctx.save_for_backward(x, w)
        return _nnpack_conv(x, w, bias)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors  # already rounded
        g = tf32(grad.contiguous())
        kh, kw = w.shape[-2:]
        flipped = w.flip(2, 3).transpose(0, 1).contiguous()  # (I, O, kh, kw)
        grad_x = _nnpack_conv(g, flipped, None, (kh - 1, kw - 1))
        _, grad_w, _ = torch.ops.aten.convolution_backward(
            g, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False]
        )
        return grad_x, grad_w, grad.sum((0, 2, 3))


class TF32Conv2d(nn.Conv2d):
    """``nn.Conv2d`` computed with TF32 operands (not a plain conv: the fast CPU layers skip it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _TF32Conv.apply(x, self.weight, self.bias)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--run", required=True, help="a copy of the GPU run folder")
    parser.add_argument("--iters", type=int, default=40_000)
    parser.add_argument("--eval-every", type=int, default=2_000)
    parser.add_argument("--no-tf32", action="store_true", help="plain float32 convolutions")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, _ = cl.load_data(MNIST, args.data)
    model = cl.build_model(MNIST, MNIST.row("IC-STN-4(a)"), torch.Generator().manual_seed(0))
    if not args.no_tf32:
        for m in model.modules():
            if type(m) is nn.Conv2d:
                m.__class__ = TF32Conv2d
    recipe = MNIST.recipes["paper"]
    config = TrainConfig(
        n_steps=args.iters, sigma=cl.SIGMA, batch_size=recipe.batch_size,
        optimizer=recipe.optimizer, lr_predictor=recipe.lr_predictor,
        lr_classifier=recipe.lr_classifier, eval_every=args.eval_every,
        checkpoint_every=args.eval_every, progress=False, nonfinite="skip", workers=1,
    )  # fmt: skip
    run = Path(args.run) / "ic-stn-4a"
    start = time.perf_counter()
    result = train(model, config, data, run_dir=run, resume=True)
    for r in result.records:
        print(json.dumps({k: r[k] for k in ("step", "test_error", "train_loss", "skipped_steps")}))
    print(f"{len(result.records)} evaluations in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
