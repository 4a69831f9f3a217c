"""The authors' PyTorch MNIST IC-STN training step, ported as written, to time beside ``lkstn``.

Source (Chen-Hsuan Lin, github.com/chenhsuanlin/inverse-compositional-STN, folder
``MNIST-pytorch``), read through the stored code index at these commits:

- ``graph.py`` (acc5efeb): ``ICSTN`` (IC-STN-4(a) predictor conv(7x7,4)-conv(7x7,8)-P-FC(48)-FC(8),
  reused ``warpN`` times), ``CNN`` (classifier conv(9x9,3)-FC(10)), ``initialize`` (every weight and
  bias ~ N(0, 0.1^2), the predictor's last layer zero);
- ``warp.py`` (e54edfc0): ``vec2mtrx``, ``mtrx2vec``, ``compose`` (``M(dp) @ M(p)``, divided by its
  ``[2, 2]`` entry), ``transformImage`` (the canonical ``[-1, 1]`` grid rebuilt with NumPy on every
  call, moved to the device, multiplied by the warp matrix, divided by ``z + 1e-8``, then
  ``grid_sample``);
- ``data.py`` (5d70ba60): ``genPerturbations`` (homography fitted to four noisy corners by an 8x8
  ``np.linalg.inv`` per sample);
- ``train.py``, ``options.py`` (5d70ba60): the loop body and the defaults ``batchSize=100``,
  ``warpN=4``, ``pertScale=transScale=0.25``, ``stdC=stdGP=0.1``, plain SGD (no momentum, no weight
  decay) with two parameter groups, ``lrGP=1e-4`` for the predictor and ``lrC=1e-2`` for the
  classifier (the paper's Sec. 5.2 rates; ``lrDecay=1`` keeps them constant).

One :meth:`ReferenceICSTN.step` runs what one iteration of their ``train.py`` loop runs after
``makeBatch``: perturbation draw, ``vec2mtrx``, ``zero_grad``, the perturbed image (computed by
their loop for every network type though only STN uses it), the IC-STN forward from the *original*
image and ``pInit``, the classifier, cross-entropy, ``backward`` and ``optim.step``. It is eager
PyTorch with the same tensor operations in the same order; no fusion, no caching of the grid.

What differs, and why:

- data: ``makeBatch`` (random MNIST indices) is left out; ``step`` takes the batch.
- device: their ``util.toTorch`` calls ``.cuda()`` and ``options.py`` asserts a GPU; here it moves
  to ``Options.device`` (CPU by default).
- randomness: ``np.random`` global state becomes a seeded ``np.random.Generator`` and the weights
  are drawn from a seeded ``torch.Generator`` (same distributions, different streams).
- ``grid_sample`` gets ``align_corners=True``, the behaviour of the PyTorch of 2017 that their code
  ran on (the default changed to ``False`` in PyTorch 1.3).
- only the homography branches of ``vec2mtrx``/``mtrx2vec``/``genPerturbations`` are kept (the
  only ones this model runs; the unused zeros ``O`` of ``vec2mtrx`` is still built, as theirs is);
  ``Variable`` wrappers, visdom, evaluation, learning-rate printing and checkpoints are dropped.
- formatting and comments are ours; names follow theirs so that each line can be found in theirs.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Options:
    """Their ``opt`` namespace, with the defaults of ``MNIST-pytorch/options.py`` for IC-STN."""

    batchSize: int = 100
    H: int = 28
    W: int = 28
    warpN: int = 4
    warpDim: int = 8  # homography
    labelN: int = 10
    stdC: float = 0.1
    stdGP: float = 0.1
    pertScale: float = 0.25
    transScale: float = 0.25
    lrC: float = 1e-2
    lrGP: float = 1e-4
    device: str = "cpu"
    canon4pts: np.ndarray = field(
        default_factory=lambda: np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]], dtype=np.float32)
    )
    refMtrx: np.ndarray = field(default_factory=lambda: np.eye(3, dtype=np.float32))


def toTorch(opt: Options, array: np.ndarray) -> torch.Tensor:
    """``util.toTorch``: NumPy array to a tensor on the device."""
    return torch.from_numpy(array).to(opt.device)


# ----- warp.py -----
def vec2mtrx(opt: Options, p: torch.Tensor) -> torch.Tensor:
    """Homography parameters ``(B, 8)`` to matrices ``(B, 3, 3)``, built entry by entry."""
    O = toTorch(opt, np.zeros([opt.batchSize], dtype=np.float32))  # noqa: F841 (other warp types)
    I = toTorch(opt, np.ones([opt.batchSize], dtype=np.float32))
    p1, p2, p3, p4, p5, p6, p7, p8 = torch.unbind(p, dim=1)
    row0 = torch.stack([I + p1, p2, p3], dim=-1)
    row1 = torch.stack([p4, I + p5, p6], dim=-1)
    row2 = torch.stack([p7, p8, I], dim=-1)
    return torch.stack([row0, row1, row2], dim=1)


def mtrx2vec(opt: Options, pMtrx: torch.Tensor) -> torch.Tensor:
    """Matrices ``(B, 3, 3)`` back to homography parameters ``(B, 8)``."""
    row0, row1, row2 = torch.unbind(pMtrx, dim=1)
    e00, e01, e02 = torch.unbind(row0, dim=1)
    e10, e11, e12 = torch.unbind(row1, dim=1)
    e20, e21, _ = torch.unbind(row2, dim=1)
    return torch.stack([e00 - 1, e01, e02, e10, e11 - 1, e12, e20, e21], dim=1)


def compose(opt: Options, p: torch.Tensor, dp: torch.Tensor) -> torch.Tensor:
    """``p_new = M(dp) @ M(p)``, normalised so that the ``[2, 2]`` entry is 1 ([LL17] eq. (10))."""
    pMtrxNew = vec2mtrx(opt, dp).matmul(vec2mtrx(opt, p))
    pMtrxNew = pMtrxNew / pMtrxNew[:, 2:3, 2:3]  # theirs is in place (/=), same values
    return mtrx2vec(opt, pMtrxNew)


def transformImage(opt: Options, image: torch.Tensor, pMtrx: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at the warped canonical grid; the grid is rebuilt with NumPy every call."""
    refMtrx = toTorch(opt, opt.refMtrx).repeat(opt.batchSize, 1, 1)
    transMtrx = refMtrx.matmul(pMtrx)
    X, Y = np.meshgrid(np.linspace(-1, 1, opt.W), np.linspace(-1, 1, opt.H))
    X, Y = X.flatten(), Y.flatten()
    XYhom = np.stack([X, Y, np.ones_like(X)], axis=1).T
    XYhom = toTorch(opt, np.tile(XYhom, [opt.batchSize, 1, 1]).astype(np.float32))  # (B, 3, H*W)
    XwarpHom, YwarpHom, ZwarpHom = torch.unbind(transMtrx.matmul(XYhom), dim=1)
    Xwarp = (XwarpHom / (ZwarpHom + 1e-8)).view(opt.batchSize, opt.H, opt.W)
    Ywarp = (YwarpHom / (ZwarpHom + 1e-8)).view(opt.batchSize, opt.H, opt.W)
    grid = torch.stack([Xwarp, Ywarp], dim=-1)  # (B, H, W, 2)
    return torch.nn.functional.grid_sample(image, grid, mode="bilinear", align_corners=True)


# ----- data.py -----
def genPerturbations(opt: Options, rng: np.random.Generator) -> torch.Tensor:
    """Homography that moves the four canonical corners by Gaussian noise plus a shared shift."""
    X = np.tile(opt.canon4pts[:, 0], [opt.batchSize, 1])
    Y = np.tile(opt.canon4pts[:, 1], [opt.batchSize, 1])
    O = np.zeros([opt.batchSize, 4], dtype=np.float32)
    I = np.ones([opt.batchSize, 4], dtype=np.float32)
    dX = (
        rng.standard_normal((opt.batchSize, 4)) * opt.pertScale
        + rng.standard_normal((opt.batchSize, 1)) * opt.transScale
    )
    dY = (
        rng.standard_normal((opt.batchSize, 4)) * opt.pertScale
        + rng.standard_normal((opt.batchSize, 1)) * opt.transScale
    )
    dX, dY = dX.astype(np.float32), dY.astype(np.float32)
    A = np.concatenate(
        [
            np.stack([X, Y, I, O, O, O, -X * (X + dX), -Y * (X + dX)], axis=-1),
            np.stack([O, O, O, X, Y, I, -X * (Y + dY), -Y * (Y + dY)], axis=-1),
        ],
        axis=1,
    )  # (B, 8, 8)
    b = np.expand_dims(np.concatenate([X + dX, Y + dY], axis=1), axis=-1)  # (B, 8, 1)
    pPert = np.matmul(np.linalg.inv(A), b).squeeze()
    pPert -= np.array([1, 0, 0, 0, 1, 0, 0, 0])  # in place: stays float32
    return toTorch(opt, pPert)


# ----- graph.py -----
def initialize(
    model: torch.nn.Module, stddev: float, generator: torch.Generator, last0: bool = False
) -> None:
    """Every weight and bias ~ N(0, stddev^2); with ``last0`` the last linear layer is zero."""
    for m in model.conv2Layers:
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data.normal_(0, stddev, generator=generator)
            m.bias.data.normal_(0, stddev, generator=generator)
    for m in model.linearLayers:
        if isinstance(m, torch.nn.Linear):
            if last0 and m is model.linearLayers[-1]:
                m.weight.data.zero_()
                m.bias.data.zero_()
            else:
                m.weight.data.normal_(0, stddev, generator=generator)
                m.bias.data.normal_(0, stddev, generator=generator)


class CNN(torch.nn.Module):
    """Classifier conv(9x9,3)-FC(10) (their ``graph.CNN``)."""

    def __init__(self, opt: Options, generator: torch.Generator) -> None:
        super().__init__()
        self.conv2Layers = torch.nn.Sequential(
            torch.nn.Conv2d(1, 3, kernel_size=[9, 9], stride=1, padding=0),
            torch.nn.ReLU(True),
        )
        self.linearLayers = torch.nn.Sequential(torch.nn.Linear(3 * 20**2, opt.labelN))
        initialize(self, opt.stdC, generator)

    def forward(self, opt: Options, image: torch.Tensor) -> torch.Tensor:
        feat = self.conv2Layers(image).reshape(opt.batchSize, -1)
        return self.linearLayers(feat)


class ICSTN(torch.nn.Module):
    """IC-STN: one predictor conv(7x7,4)-conv(7x7,8)-P-FC(48)-FC(8), applied ``warpN`` times."""

    def __init__(self, opt: Options, generator: torch.Generator) -> None:
        super().__init__()
        self.conv2Layers = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, kernel_size=[7, 7], stride=1, padding=0),
            torch.nn.ReLU(True),
            torch.nn.Conv2d(4, 8, kernel_size=[7, 7], stride=1, padding=0),
            torch.nn.ReLU(True),
            torch.nn.MaxPool2d([2, 2], stride=2),
        )
        self.linearLayers = torch.nn.Sequential(
            torch.nn.Linear(8 * 8**2, 48),
            torch.nn.ReLU(True),
            torch.nn.Linear(48, opt.warpDim),
        )
        initialize(self, opt.stdGP, generator, last0=True)

    def forward(self, opt: Options, image: torch.Tensor, p: torch.Tensor) -> list[torch.Tensor]:
        imageWarpAll = []
        for _ in range(opt.warpN):
            imageWarp = transformImage(opt, image, vec2mtrx(opt, p))  # always from the original
            imageWarpAll.append(imageWarp)
            feat = self.conv2Layers(imageWarp).reshape(opt.batchSize, -1)
            dp = self.linearLayers(feat)
            p = compose(opt, p, dp)
        imageWarpAll.append(transformImage(opt, image, vec2mtrx(opt, p)))
        return imageWarpAll


# ----- train.py -----
class ReferenceICSTN:
    """IC-STN-N(a) + classifier with their SGD, loss and loop body; see the module docstring."""

    def __init__(self, opt: Options, seed: int = 0) -> None:
        self.opt = opt
        self.rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)
        self.geometric = ICSTN(opt, generator).to(opt.device)
        self.classifier = CNN(opt, generator).to(opt.device)
        self.loss = torch.nn.CrossEntropyLoss()
        optimList = [
            {"params": self.geometric.parameters(), "lr": opt.lrGP},
            {"params": self.classifier.parameters(), "lr": opt.lrC},
        ]
        self.optim = torch.optim.SGD(optimList)
        self.geometric.train()
        self.classifier.train()

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One training iteration on ``images`` ``(B, 1, H, W)`` (or ``(B, H, W)``), ``labels``
        ``(B,)``; returns the detached loss (no host sync, as in their loop)."""
        opt = self.opt
        image = images.unsqueeze(dim=1) if images.ndim == 3 else images
        pInit = genPerturbations(opt, self.rng)
        pInitMtrx = vec2mtrx(opt, pInit)
        self.optim.zero_grad()
        imagePert = transformImage(opt, image, pInitMtrx)  # noqa: F841  (their loop computes it)
        imageWarpAll = self.geometric(opt, image, pInit)
        output = self.classifier(opt, imageWarpAll[-1])
        train_loss = self.loss(output, labels)
        train_loss.backward()
        self.optim.step()
        return train_loss.detach()


def make_reference(
    n_warps: int = 4, batch: int = 100, seed: int = 0, device: str = "cpu"
) -> ReferenceICSTN:
    """The authors' IC-STN-``n_warps``(a) MNIST training step at batch size ``batch``."""
    return ReferenceICSTN(Options(batchSize=batch, warpN=n_warps, device=device), seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--n-warps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    ref = make_reference(n_warps=args.n_warps, batch=args.batch, device=args.device)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 1, 28, 28, generator=gen).to(args.device)
    labels = torch.randint(0, 10, (args.batch,), generator=gen).to(args.device)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        ref.step(images, labels)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = ref.step(images, labels)
    sync()
    elapsed = time.perf_counter() - start
    print(
        f"reference IC-STN-{args.n_warps}(a) training step, batch {args.batch}, "
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads: "
        f"{args.steps / elapsed:.1f} steps/s ({1e3 * elapsed / args.steps:.2f} ms/step, "
        f"{args.steps} steps after {args.warmup} warm-up; last loss {loss.item():.4f})"
    )


if __name__ == "__main__":
    main()
