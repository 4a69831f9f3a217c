"""Training data for the learned aligners, perturbed on the fly with the paper's noise model.

Two tasks, one per experiment of [LL17] Sec. 5:

- :class:`AlignmentData` (planar alignment, Sec. 5.1): one source image ``I`` and the ground-truth
  warp ``p_true`` of the template box. A sample is a start ``p_init = compose(p_true, delta)``
  (:func:`lkstn.perturb.perturb`); the network sees ``I(p_init)`` and is trained towards
  ``p_true`` (L2 loss on the warp parameters).
- :class:`ClassificationData` (MNIST, GTSRB, Secs. 5.2-5.3): labelled images that are their own
  template frame (``p_true = 0``). A sample is an image, its label and a start ``p_init = delta``;
  the network aligns ``I`` from ``p_init`` and classifies the result (cross-entropy). With a
  ``frame`` (the warp of a box inside every image, e.g. the central 36x36 box of the authors'
  50x50 GTSRB images) the start is ``compose(frame, delta)``, so the samples carry what surrounds
  the box instead of zeros.

The stream is a pure function of ``(seed, step)``: :func:`step_generator` seeds a fresh CPU
``torch.Generator`` from both, so a resumed run draws exactly the batches the killed run would
have drawn. A classification batch's indices and perturbations are drawn (and the homographies
fitted) on the CPU and then moved, so every device trains on the same batches to the last bit.
The test perturbations are drawn once from ``(seed, "test")``.

Glossary: ``delta`` a perturbation drawn in the template frame, ``sigma`` its scale in template
pixels, ``B`` the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lkstn.perturb import perturb, perturbation
from lkstn.result import CONVERGED_PX, corner_error
from lkstn.warps import Warp

if TYPE_CHECKING:
    from lkstn.learned.transformer import Transformed

__all__ = ["AlignmentData", "Batch", "ClassificationData", "step_generator"]

_TRAIN, _TEST = 0, 1


def step_generator(seed: int, step: int, purpose: int = _TRAIN) -> torch.Generator:
    """A CPU generator whose stream depends on ``(seed, step, purpose)`` only.

    Examples
    --------
    >>> import torch
    >>> from lkstn.learned.streams import step_generator
    >>> a = torch.rand(3, generator=step_generator(0, 5))
    >>> bool(torch.equal(a, torch.rand(3, generator=step_generator(0, 5))))  # same (seed, step)
    True
    """
    key = np.random.SeedSequence([int(seed), int(purpose), int(step)]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(key[0]))


@dataclass(frozen=True)
class Batch:
    """One batch: ``images`` ``(B, C, H, W)`` aligned from ``p_init`` ``(B, P)`` towards
    ``target``: the true warps ``(B, P)`` (alignment) or the labels ``(B,)`` (classification).

    Examples
    --------
    >>> import torch
    >>> from lkstn.learned.streams import Batch
    >>> b = Batch(torch.zeros(4, 1, 28, 28), torch.zeros(4, 8), torch.tensor([0, 1, 2, 3]))
    >>> b.images.shape[0] == b.p_init.shape[0] == b.target.shape[0]
    True
    """

    images: Tensor
    p_init: Tensor
    target: Tensor


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` (on the CPU) on ``device``; to a GPU through pinned memory, without waiting for it."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@dataclass(frozen=True)
class AlignmentData:
    """Planar alignment of one image ([LL17] Sec. 5.1).

    Parameters
    ----------
    image : Tensor (C, H, W) or (1, C, H, W)
        The source image ``I``.
    p_true : Tensor (P,)
        Warp from the template frame to the box in ``image``.

    Examples
    --------
    >>> import torch
    >>> from lkstn import Affine
    >>> from lkstn.learned.streams import AlignmentData, step_generator
    >>> data = AlignmentData(torch.rand(1, 64, 64), torch.zeros(6))
    >>> batch = data.batch(Affine(), (50, 50), 5.0, 8, step_generator(0, 0))
    >>> batch.p_init.shape, batch.target.shape
    (torch.Size([8, 6]), torch.Size([8, 6]))
    """

    image: Tensor
    p_true: Tensor

    def __post_init__(self) -> None:
        image = torch.as_tensor(self.image)
        image = image[None] if image.ndim == 3 else image
        if image.ndim != 4 or image.shape[0] != 1:
            raise ValueError(f"image must be (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
        p_true = torch.as_tensor(self.p_true)
        if p_true.ndim != 1:
            raise ValueError(f"p_true must be (P,), got {tuple(p_true.shape)}")
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "p_true", p_true)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> AlignmentData:
        return AlignmentData(self.image.to(device, dtype), self.p_true.to(device, dtype))

    def batch(self, warp: Warp, shape: tuple[int, int], sigma: float, n: int, gen) -> Batch:
        """``n`` starts ``compose(p_true, delta)`` drawn from ``gen``."""
        p_init = perturb(warp, self.p_true, sigma, shape, gen, n=n)  # (n, P)
        return Batch(self.image, p_init, self.p_true.expand(n, -1))

    def test_set(
        self, warp: Warp, shape: tuple[int, int], sigma: float, n: int, seed: int, n_test: int
    ) -> list[Batch]:
        """``n_test`` fixed starts drawn from ``(seed, "test")``, in batches of ``n``."""
        full = self.batch(warp, shape, sigma, n_test, step_generator(seed, 0, _TEST))
        return [
            Batch(self.image, full.p_init[i : i + n], full.target[i : i + n])
            for i in range(0, n_test, n)
        ]

    @staticmethod
    def loss(out: Transformed, batch: Batch) -> Tensor:
        """Mean squared L2 distance between predicted and true warp parameters."""
        return (out.p - batch.target).pow(2).sum(-1).mean()

    @staticmethod
    def errors(
        out: Transformed, batch: Batch, warp: Warp, shape: tuple[int, int]
    ) -> dict[str, Tensor]:
        """Per-sample parameter L2 error (canonical units), corner error (px), converged."""
        with torch.no_grad():
            corner = corner_error(warp, out.p, batch.target, shape)
            return {
                "error": (out.p - batch.target).norm(dim=-1),
                "corner_px": corner,
                "converged": (corner < CONVERGED_PX).to(out.p.dtype),
            }


@dataclass(frozen=True)
class ClassificationData:
    """Labelled images, each its own template frame ([LL17] Secs. 5.2-5.3).

    Parameters
    ----------
    images : Tensor (N, C, h, w)
    labels : Tensor (N,) of int
    test_images : Tensor (M, C, h, w)
    test_labels : Tensor (M,) of int
    frame : Tensor (P,), optional
        Warp from the template frame to a box shared by every image (``None``: the whole image
        is the template frame).

    Examples
    --------
    >>> import torch
    >>> from lkstn import Homography
    >>> from lkstn.learned.streams import ClassificationData, step_generator
    >>> x, y = torch.rand(10, 1, 28, 28), torch.arange(10)
    >>> data = ClassificationData(x, y, x[:4], y[:4])
    >>> batch = data.batch(Homography(), (28, 28), 3.0, 5, step_generator(0, 0))
    >>> batch.images.shape, batch.p_init.shape, batch.target.shape
    (torch.Size([5, 1, 28, 28]), torch.Size([5, 8]), torch.Size([5]))
    """

    images: Tensor
    labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    frame: Tensor | None = None

    def __post_init__(self) -> None:
        if self.frame is not None and (
            not isinstance(self.frame, Tensor)
            or self.frame.ndim != 1
            or not torch.isfinite(self.frame).all()
        ):
            raise ValueError("frame must be a finite tensor (P,) of warp parameters, or None")
        for name, x, lab in (
            ("images", self.images, self.labels),
            ("test_images", self.test_images, self.test_labels),
        ):
            if not isinstance(x, Tensor) or x.ndim != 4:
                raise ValueError(f"{name} must be a tensor (N, C, h, w), got {type(x).__name__}")
            if not isinstance(lab, Tensor) or lab.shape != (x.shape[0],):
                raise ValueError(f"labels of {name} must be ({x.shape[0]},) integers")

    def to(self, device: torch.device | str, dtype: torch.dtype) -> ClassificationData:
        return ClassificationData(
            self.images.to(device, dtype),
            self.labels.to(device, torch.long),
            self.test_images.to(device, dtype),
            self.test_labels.to(device, torch.long),
            None if self.frame is None else self.frame.to(device, dtype),
        )

    def _starts(self, warp: Warp, delta: Tensor) -> Tensor:
        """``delta`` ``(n, P)`` drawn in the template frame, as starts in the images."""
        if self.frame is None:
            return delta
        return warp.compose(self.frame.to(delta.dtype).expand_as(delta), delta)

    def batch(self, warp: Warp, shape: tuple[int, int], sigma: float, n: int, gen) -> Batch:
        """``n`` random training images with starts ``delta`` (composed with ``frame``) drawn
        from ``gen``."""
        device, dtype = self.images.device, self.images.dtype
        idx = torch.randint(self.images.shape[0], (n,), generator=gen)
        delta = perturbation(warp, n, sigma, shape, gen, dtype=dtype)  # on the generator's device
        idx, delta = _to_device(idx, device), _to_device(delta, device)
        return Batch(self.images[idx], self._starts(warp, delta), self.labels[idx])

    def test_set(
        self, warp: Warp, shape: tuple[int, int], sigma: float, n: int, seed: int, n_test: int = 0
    ) -> list[Batch]:
        """The whole test set in batches of ``n``, each image with one fixed start
        (``n_test`` is ignored)."""
        device, dtype = self.test_images.device, self.test_images.dtype
        M = self.test_images.shape[0]
        gen = step_generator(seed, 0, _TEST)
        delta = perturbation(warp, M, sigma, shape, gen, dtype=dtype)
        p_init = self._starts(warp, _to_device(delta, device))
        return [
            Batch(self.test_images[i : i + n], p_init[i : i + n], self.test_labels[i : i + n])
            for i in range(0, M, n)
        ]

    @staticmethod
    def loss(out: Tensor, batch: Batch) -> Tensor:
        """Cross-entropy of the class scores."""
        return F.cross_entropy(out, batch.target)

    @staticmethod
    def errors(out: Tensor, batch: Batch, warp: Warp, shape: tuple[int, int]) -> dict[str, Tensor]:
        """Per-sample classification error in percent (0 or 100)."""
        return {"error": 100.0 * (out.argmax(-1) != batch.target).to(out.dtype)}
