"""Geometric predictors and classifiers with the exact layers of [LL17] Tables 2 and 3.

A *geometric predictor* maps an image batch ``(B, C, h, w)`` to warp parameters ``(B, P)``; a
*classifier* maps ``(B, C, h, w)`` to class scores ``(B, n_classes)``. The spatial transformers in
:mod:`lkstn.learned.stn` take the predictor(s) and the classifier separately, so the *capacity* of a
table row is the parameter count of its predictor(s) plus its classifier (an IC-STN reuses one
predictor, so it counts once).

Builders, their layers in the paper's notation, their parameter counts, and the rows that use them:

- ``mnist_predictor("a")``: conv(7x7,4)-conv(7x7,8)-P-FC(48)-FC(8), 26,792; one in STN(a),
  c-STN-1(a), IC-STN-2(a), IC-STN-4(a).
- ``mnist_predictor("a2")``: conv(9x9,4)-FC(8), 13,136; two in c-STN-2(a).
- ``mnist_predictor("a4")``: FC(8), 6,280; four in c-STN-4(a).
- ``mnist_predictor("b")``: FC(8), 6,280; one in STN(b), c-STN-1(b), IC-STN-2(b), IC-STN-4(b).
- ``mnist_classifier()``: conv(9x9,3)-FC(10), 12,256; every MNIST row with a warp.
- ``mnist_cnn("a")``: conv(3x3,3)-conv(3x3,6)-P-conv(3x3,9)-conv(3x3,12)-FC(48)-FC(10), 39,079;
  CNN(a).
- ``mnist_cnn("b")``: conv(9x9,2)-conv(9x9,4)-FC(32)-FC(10), 19,610; CNN(b).
- ``gtsrb_predictor()``: conv(7x7,6)-conv(7x7,24)-FC(8), 118,568; Table 3 STN, c-STN-1, IC-STN-2/4.
- ``gtsrb_classifier()``: conv(7x7,6)-conv(7x7,12)-P-FC(43), 78,775; the same rows.
- ``gtsrb_cnn()``: conv(7x7,6)-conv(7x7,12)-P-conv(7x7,24)-FC(200)-FC(43), 200,207; Table 3 CNN.
- ``LinearPredictor((50, 50), 6)``: FC(6) on the raw pixels, 15,006; planar experiment (Table 1).

Note that ``"a2"`` names the predictor of **c-STN-2(a)**, not of IC-STN-2(a) (which uses ``"a"``).
MNIST inputs are ``(1, 28, 28)``, GTSRB inputs ``(3, 36, 36)``. Convolutions are unpadded
("valid", stride 1), a ReLU follows every convolution and every hidden FC layer, ``P`` is a 2x2
max-pool with stride 2, and the flattening before the first FC layer is PyTorch's ``(C, h, w)``
row-major order. The layer order and ReLU placement follow the authors' code
(chenhsuanlin/inverse-compositional-STN: ``MNIST-pytorch/graph.py``, ``MNIST/graph.py``,
``traffic-sign-tensorflow/graph.py``); the c-STN-2/4(a) and "(b)" rows are not in that code and are
built from Table 2 alone.

Initialisation follows the authors' ``initialize`` (PyTorch) and ``createVariable`` (TensorFlow):
every weight *and* bias is drawn from ``N(0, std^2)``, with their default ``std``: 0.1 for the
MNIST predictors and classifiers (``--stdGP``, ``--stdC``), 0.001 for the GTSRB predictor and 0.01
for the GTSRB classifiers. The last layer of every geometric predictor is zero (weight and bias), so
that it outputs ``p = 0``, the identity warp, at the start (``last0=True`` in their MNIST code;
their GTSRB code draws it from ``N(0, 0.001^2)`` instead, and we zero it as for MNIST). The paper
itself does not state the initialisation.

Glossary: ``P`` number of warp parameters (8 for a homography), ``B`` batch size, ``std`` the
initialisation standard deviation, capacity = number of learnable parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

# fmt: off
__all__ = [
    "FC", "POOL", "Conv", "ConvNet", "LinearPredictor", "Pool", "count_parameters",
    "gtsrb_classifier", "gtsrb_cnn", "gtsrb_predictor", "mnist_classifier", "mnist_cnn",
    "mnist_predictor", "table2_capacity", "table3_capacity",
]
# fmt: on

MNIST_SHAPE = (1, 28, 28)
GTSRB_SHAPE = (3, 36, 36)


@dataclass(frozen=True)
class Conv:
    """``conv(k x k, channels)``: unpadded, stride 1, followed by a ReLU."""

    kernel: int
    channels: int


@dataclass(frozen=True)
class Pool:
    """``P``: 2x2 max-pooling with stride 2."""


@dataclass(frozen=True)
class FC:
    """``FC(features)``: fully connected, followed by a ReLU unless it is the last layer."""

    features: int


POOL = Pool()
Layer = Conv | Pool | FC


class ConvNet(nn.Module):
    """A feed-forward stack of the paper's layer types, built from a spec that reads like the table.

    Parameters
    ----------
    in_shape : tuple of int
        ``(C, h, w)`` of the input images.
    layers : sequence of Conv, Pool, FC
        Convolutions and pools first, then fully connected layers; the input of the first FC layer
        is flattened in ``(C, h, w)`` order. The last layer must be an FC layer.
    init_std : float
        Standard deviation of the normal initialisation of every weight and bias.
    zero_last : bool
        Zero the last layer (a geometric predictor then outputs the identity warp ``p = 0``).
    generator : torch.Generator, optional
        Source of the random initial weights.

    Examples
    --------
    >>> import torch
    >>> from lkstn.learned.predictors import FC, POOL, Conv, ConvNet
    >>> net = ConvNet((1, 28, 28), [Conv(7, 4), POOL, FC(6)], init_std=0.1, zero_last=True)
    >>> net(torch.rand(3, 1, 28, 28)).abs().max().item()  # zero last layer: the identity warp
    0.0
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        layers: Sequence[Layer],
        *,
        init_std: float,
        zero_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise ValueError(f"in_shape must be (C, h, w) of positive ints, got {in_shape}")
        if not layers or not isinstance(layers[-1], FC):
            raise ValueError(f"layers must end with an FC layer, got {list(layers)}")
        self.in_shape = tuple(int(s) for s in in_shape)
        self.spec = tuple(layers)
        channels, h, w = self.in_shape
        n_features = None  # set once flattened
        modules: list[nn.Module] = []
        for i, layer in enumerate(self.spec):
            is_last = i == len(self.spec) - 1
            if isinstance(layer, FC):
                if n_features is None:
                    n_features = channels * h * w
                    modules.append(nn.Flatten())  # (B, C, h, w) -> (B, C*h*w)
                modules.append(nn.Linear(n_features, layer.features))
                n_features = layer.features
            elif n_features is not None:
                raise ValueError(f"layer {i} ({layer}) comes after an FC layer")
            elif isinstance(layer, Conv):
                modules.append(nn.Conv2d(channels, layer.channels, layer.kernel))
                channels, h, w = layer.channels, h - layer.kernel + 1, w - layer.kernel + 1
            else:
                modules.append(nn.MaxPool2d(2, stride=2))
                h, w = h // 2, w // 2
            if min(h, w) < 1:
                raise ValueError(f"layer {i} ({layer}) shrinks {self.in_shape} to {h}x{w}")
            if not isinstance(layer, Pool) and not is_last:
                modules.append(nn.ReLU())
        self.layers = nn.Sequential(*modules)
        with torch.no_grad():
            for m in self.layers:
                if isinstance(m, nn.Conv2d | nn.Linear):
                    m.weight.normal_(0.0, init_std, generator=generator)
                    m.bias.normal_(0.0, init_std, generator=generator)
            if zero_last:
                self.layers[-1].weight.zero_()
                self.layers[-1].bias.zero_()

    @property
    def architecture(self) -> str:
        """The layers in the notation of [LL17] Tables 2-3, e.g. ``conv(7x7,4)-P-FC(8)``."""
        names = {
            Conv: lambda l: f"conv({l.kernel}x{l.kernel},{l.channels})",
            Pool: lambda l: "P",
            FC: lambda l: f"FC({l.features})",
        }
        return "-".join(names[type(layer)](layer) for layer in self.spec)

    def forward(self, image: Tensor) -> Tensor:
        """Map ``image`` ``(B, C, h, w)`` to the outputs of the last layer ``(B, n_out)``."""
        if image.ndim != 4 or tuple(image.shape[1:]) != self.in_shape:
            raise ValueError(
                f"image must have shape (B, {', '.join(map(str, self.in_shape))}), "
                f"got {tuple(image.shape)}"
            )
        return self.layers(image)


class LinearPredictor(ConvNet):
    """One linear layer from the pixels to the warp parameters (the planar experiment, Table 1).

    ``dp = image.reshape(B, -1) @ W.T + b``: for a grey image, column ``k`` of ``W`` multiplies
    pixel ``k`` of the row-major ``ravel`` of the ``(h, w)`` sample, the layout of the IC-LK
    regressor ``dp = R @ I(p).ravel() + b`` ([LL17] eq. (5)-(6)). Both ``W`` and ``b`` start at
    zero.

    Parameters
    ----------
    in_shape : tuple of int
        ``(h, w)`` of a grey sample or ``(C, h, w)``.
    n_params : int
        ``P``, the number of warp parameters (6 for affine).

    Examples
    --------
    >>> import torch
    >>> from lkstn.learned.predictors import LinearPredictor
    >>> lin = LinearPredictor((50, 50), 6)
    >>> tuple(lin.linear.weight.shape), lin(torch.rand(2, 1, 50, 50)).shape
    ((6, 2500), torch.Size([2, 6]))
    """

    def __init__(self, in_shape: tuple[int, int] | tuple[int, int, int], n_params: int) -> None:
        if len(in_shape) == 2:
            in_shape = (1, *in_shape)
        if n_params < 1:
            raise ValueError(f"n_params must be positive, got {n_params}")
        super().__init__(in_shape, [FC(n_params)], init_std=0.0, zero_last=True)

    @property
    def linear(self) -> nn.Linear:
        """The layer itself: ``weight`` ``(P, C*h*w)``, ``bias`` ``(P,)``."""
        return self.layers[-1]


def count_parameters(module: nn.Module) -> int:
    """Number of learnable parameters of ``module`` (a parameter shared by layers counts once).

    Examples
    --------
    >>> from torch import nn
    >>> from lkstn.learned.predictors import count_parameters
    >>> count_parameters(nn.Linear(10, 3))  # 10 * 3 weights + 3 biases
    33
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def mnist_predictor(
    arch: Literal["a", "a2", "a4", "b"] = "a",
    *,
    n_params: int = 8,
    generator: torch.Generator | None = None,
) -> ConvNet:
    """One geometric predictor of a Table 2 row, ``(B, 1, 28, 28) -> (B, n_params)``.

    ``"a"``: conv(7x7,4)-conv(7x7,8)-P-FC(48)-FC(8), of STN(a), c-STN-1(a), IC-STN-2/4(a);
    ``"a2"``: conv(9x9,4)-FC(8), one of the two of c-STN-2(a); ``"a4"``: FC(8), one of the four of
    c-STN-4(a); ``"b"``: FC(8), of the "(b)" rows. The last layer is zero.

    Examples
    --------
    >>> import torch
    >>> from lkstn.learned.predictors import count_parameters, mnist_predictor
    >>> net = mnist_predictor("a")
    >>> net(torch.zeros(1, 1, 28, 28)).shape, count_parameters(net)
    (torch.Size([1, 8]), 26792)
    """
    specs: dict[str, list[Layer]] = {
        "a": [Conv(7, 4), Conv(7, 8), POOL, FC(48), FC(n_params)],
        "a2": [Conv(9, 4), FC(n_params)],
        "a4": [FC(n_params)],
        "b": [FC(n_params)],
    }
    if arch not in specs:
        raise ValueError(f"arch must be one of {sorted(specs)}, got {arch!r}")
    return ConvNet(MNIST_SHAPE, specs[arch], init_std=0.1, zero_last=True, generator=generator)


def mnist_classifier(*, n_classes: int = 10, generator: torch.Generator | None = None) -> ConvNet:
    """conv(9x9,3)-FC(10), the classifier after the warps of every Table 2 STN row.

    Examples
    --------
    >>> from lkstn.learned.predictors import count_parameters, mnist_classifier
    >>> count_parameters(mnist_classifier())
    12256
    """
    spec = [Conv(9, 3), FC(n_classes)]
    return ConvNet(MNIST_SHAPE, spec, init_std=0.1, generator=generator)


def mnist_cnn(
    arch: Literal["a", "b"] = "a",
    *,
    n_classes: int = 10,
    generator: torch.Generator | None = None,
) -> ConvNet:
    """The baseline CNN(a) or CNN(b) of Table 2 (no spatial transformation).

    Examples
    --------
    >>> from lkstn.learned.predictors import count_parameters, mnist_cnn
    >>> count_parameters(mnist_cnn("a")), count_parameters(mnist_cnn("b"))
    (39079, 19610)
    """
    specs: dict[str, list[Layer]] = {
        "a": [Conv(3, 3), Conv(3, 6), POOL, Conv(3, 9), Conv(3, 12), FC(48), FC(n_classes)],
        "b": [Conv(9, 2), Conv(9, 4), FC(32), FC(n_classes)],
    }
    if arch not in specs:
        raise ValueError(f"arch must be one of {sorted(specs)}, got {arch!r}")
    return ConvNet(MNIST_SHAPE, specs[arch], init_std=0.1, generator=generator)


def gtsrb_predictor(*, n_params: int = 8, generator: torch.Generator | None = None) -> ConvNet:
    """conv(7x7,6)-conv(7x7,24)-FC(8), the predictor of the Table 3 STN rows; last layer zero.

    Examples
    --------
    >>> import torch
    >>> from lkstn.learned.predictors import gtsrb_predictor
    >>> gtsrb_predictor()(torch.zeros(1, 3, 36, 36)).shape
    torch.Size([1, 8])
    """
    spec = [Conv(7, 6), Conv(7, 24), FC(n_params)]
    return ConvNet(GTSRB_SHAPE, spec, init_std=0.001, zero_last=True, generator=generator)


def gtsrb_classifier(*, n_classes: int = 43, generator: torch.Generator | None = None) -> ConvNet:
    """conv(7x7,6)-conv(7x7,12)-P-FC(43), the classifier after the warps of Table 3.

    Examples
    --------
    >>> from lkstn.learned.predictors import count_parameters, gtsrb_classifier
    >>> count_parameters(gtsrb_classifier())
    78775
    """
    spec = [Conv(7, 6), Conv(7, 12), POOL, FC(n_classes)]
    return ConvNet(GTSRB_SHAPE, spec, init_std=0.01, generator=generator)


def gtsrb_cnn(*, n_classes: int = 43, generator: torch.Generator | None = None) -> ConvNet:
    """conv(7x7,6)-conv(7x7,12)-P-conv(7x7,24)-FC(200)-FC(43), the baseline CNN of Table 3.

    Examples
    --------
    >>> from lkstn.learned.predictors import count_parameters, gtsrb_cnn
    >>> count_parameters(gtsrb_cnn())
    200207
    """
    spec = [Conv(7, 6), Conv(7, 12), POOL, Conv(7, 24), FC(200), FC(n_classes)]
    return ConvNet(GTSRB_SHAPE, spec, init_std=0.01, generator=generator)


# row -> (predictor arch, number of distinct predictors); an IC-STN reuses its one predictor.
_TABLE2_ROWS = {
    "STN(a)": ("a", 1),
    "c-STN-1(a)": ("a", 1),
    "c-STN-2(a)": ("a2", 2),
    "c-STN-4(a)": ("a4", 4),
    "IC-STN-2(a)": ("a", 1),
    "IC-STN-4(a)": ("a", 1),
    "STN(b)": ("b", 1),
    "c-STN-1(b)": ("b", 1),
    "IC-STN-2(b)": ("b", 1),
    "IC-STN-4(b)": ("b", 1),
}
_TABLE3_ROWS = ("STN", "c-STN-1", "IC-STN-2", "IC-STN-4")


def table2_capacity(row: str) -> int:
    """Learnable parameters of a Table 2 row (e.g. ``"IC-STN-4(a)"``), as built by this module.

    Examples
    --------
    >>> from lkstn.learned.predictors import table2_capacity
    >>> table2_capacity("IC-STN-4(a)")  # one predictor, recurrent, plus the classifier
    39048
    """
    if row in ("CNN(a)", "CNN(b)"):
        return count_parameters(mnist_cnn(row[4]))
    if row not in _TABLE2_ROWS:
        raise ValueError(
            f"row must be one of CNN(a), CNN(b), {', '.join(_TABLE2_ROWS)}; got {row!r}"
        )
    arch, n_predictors = _TABLE2_ROWS[row]
    return n_predictors * count_parameters(mnist_predictor(arch)) + count_parameters(
        mnist_classifier()
    )


def table3_capacity(row: str) -> int:
    """Learnable parameters of a Table 3 row (e.g. ``"IC-STN-4"``), as built by this module.

    Examples
    --------
    >>> from lkstn.learned.predictors import table3_capacity
    >>> table3_capacity("IC-STN-4")
    197343
    """
    if row == "CNN":
        return count_parameters(gtsrb_cnn())
    if row not in _TABLE3_ROWS:
        raise ValueError(f"row must be one of CNN, {', '.join(_TABLE3_ROWS)}; got {row!r}")
    return count_parameters(gtsrb_predictor()) + count_parameters(gtsrb_classifier())
