"""The fast CPU layers compute the plain layers' function and gradients, whichever kernels."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lkstn.learned.accel import fast_cpu
from lkstn.learned.accel.fast_cpu import (
    FastConv2d,
    FastMaxPool2d,
    _MaxPool2x2Function,
    fast_cpu_layers,
)


def test_fast_layers_keep_values_gradients_and_state_dict() -> None:
    gen = torch.Generator().manual_seed(5)
    plain = nn.Sequential(
        nn.Conv2d(1, 4, 7), nn.ReLU(), nn.Conv2d(4, 8, 7), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(8, 3, (3, 2)), nn.Conv2d(3, 2, 3, stride=2), nn.MaxPool2d(3),
    )  # fmt: skip
    fast = fast_cpu_layers(copy.deepcopy(plain))
    kinds = [FastConv2d, nn.ReLU, FastConv2d, nn.ReLU, FastMaxPool2d, FastConv2d, nn.Conv2d,
             nn.MaxPool2d]  # fmt: skip
    assert [type(m) for m in fast] == kinds  # the strided convolution, the 3x3 pool: left alone
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.rand(20, 1, 40, 40, generator=gen, requires_grad=True)
    y1, y2 = plain(x), fast(x)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
    g = torch.randn(y1.shape, generator=gen)
    grads1 = torch.autograd.grad(y1, [x, *plain.parameters()], g)
    grads2 = torch.autograd.grad(y2, [x, *fast.parameters()], g)
    for a, b in zip(grads1, grads2, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    conv = fast_cpu_layers(nn.Conv2d(2, 3, (3, 2))).double()  # float64: gradcheck
    x = torch.rand(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    inputs = (x, conv.weight, conv.bias)
    assert torch.autograd.gradcheck(lambda *a: conv._conv_forward(*a), inputs, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_pool_equals_max_pool2d_exactly_ties_included(dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    # small integers: many windows hold tied maxima, in every arrangement of the four corners
    x = torch.randint(0, 3, (6, 3, 8, 10), generator=gen).to(dtype)
    x[0, 0, :2, :2] = 2.0  # a window of four equal values
    x = torch.relu(x - 1).requires_grad_()  # and the zeros of a ReLU
    g = torch.randn(6, 3, 4, 5, generator=gen, dtype=dtype)
    pool = fast_cpu_layers(nn.MaxPool2d(2, 2))
    y = pool(x)
    (gx,) = torch.autograd.grad(y, x, g)
    y_ref = nn.functional.max_pool2d(x, 2, 2)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    assert torch.equal(y, y_ref)
    assert torch.equal(gx, gx_ref)  # the first maximum in row-major order gets the gradient
    assert gx[0, 0, :2, :2].tolist() == [[g[0, 0, 0, 0].item(), 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("nan", [False, True])
def test_maxima_pool_gives_max_pool2d_values_and_gradients_ties_and_nan_included(nan) -> None:
    # the maxima kernel itself, whichever kernel the measurement would pick on this machine
    gen = torch.Generator().manual_seed(2)
    x = torch.relu(torch.randint(0, 4, (5, 2, 6, 8), generator=gen).double() - 1)
    if nan:  # NaN in several corners of one window and alone in another
        x[0, 0, 0, 1] = x[0, 0, 1, 0] = x[1, 1, 3, 3] = float("nan")
    x.requires_grad_()
    g = torch.randn(5, 2, 3, 4, generator=gen, dtype=torch.float64)
    y = _MaxPool2x2Function.apply(x)
    (gx,) = torch.autograd.grad(y, x, g)
    y_ref = nn.functional.max_pool2d(x, 2, 2)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(gx, gx_ref)  # each window's gradient to its first maximum (or NaN)


def test_fast_pool_propagates_nan_and_falls_back_on_odd_sizes() -> None:
    x = torch.ones(1, 1, 4, 4)
    x[0, 0, 1, 1] = float("nan")
    y = fast_cpu_layers(nn.MaxPool2d(2, 2))(x)
    assert torch.isnan(y[0, 0, 0, 0]) and (y[0, 0].flatten()[1:] == 1).all()
    odd = torch.rand(2, 3, 7, 9)
    torch.testing.assert_close(
        fast_cpu_layers(nn.MaxPool2d(2, 2))(odd), nn.functional.max_pool2d(odd, 2, 2)
    )


def _pick(forward: str, input_grad: str, weight_grad: str, pool: str):
    """A stand-in for ``choose`` that imposes one kernel per role, whatever the timings."""
    wanted = {"conv2d forward": forward, "conv2d input-grad": input_grad,
              "conv2d weight-grad": weight_grad, "max_pool2d": pool}  # fmt: skip

    def choose(key, candidates):
        name = next(v for k, v in wanted.items() if key.startswith(k))
        return name if name in candidates else "onednn"  # NNPACK absent: the default

    return choose


CONV = ("nnpack", "onednn")
WEIGHT_GRAD = ("backward", "batch-correlation", "backward-channels-last")
CHOICES = [(f, g, w, p) for f in CONV for g in CONV for w in WEIGHT_GRAD
           for p in ("maxima", "max_pool2d")]  # fmt: skip


@pytest.mark.parametrize(("forward", "input_grad", "weight_grad", "pool"), CHOICES)
def test_every_kernel_choice_gives_the_plain_layers_values_and_gradients(
    monkeypatch, forward, input_grad, weight_grad, pool
) -> None:
    """Each kernel a measurement can choose computes the plain layer to float32 rounding.

    Every candidate sums the same ``n`` products in some order (NNPACK by a fast transform), so
    an output differs from the plain layer's by at most ``2 gamma_n`` times the same sum of
    absolute products, ``gamma_n = n u / (1 - n u)``, ``u = 2^-24`` (Higham, Accuracy and
    Stability of Numerical Algorithms, Sec. 3.1); the bound is evaluated per output as a
    convolution of absolute values.
    """
    monkeypatch.setattr(fast_cpu, "choose", _pick(forward, input_grad, weight_grad, pool))
    gen = torch.Generator().manual_seed(7)
    plain = nn.Conv2d(4, 8, 7)
    fast = fast_cpu_layers(copy.deepcopy(plain))
    x = torch.randn(10, 4, 22, 22, generator=gen)
    g = torch.randn(10, 8, 16, 16, generator=gen)
    u = 2.0**-24

    def bound(n: int, reference: Tensor) -> Tensor:
        return 2 * n * u / (1 - n * u) * reference

    y1 = plain(x.requires_grad_())
    y2 = fast(x)
    n_fwd = 4 * 7 * 7 + 1  # products and the bias
    abs_fwd = F.conv2d(x.abs(), plain.weight.abs(), plain.bias.abs())
    assert ((y2 - y1).abs() <= bound(n_fwd, abs_fwd)).all()
    gx1, gw1, gb1 = torch.autograd.grad(y1, [x, plain.weight, plain.bias], g)
    gx2, gw2, gb2 = torch.autograd.grad(y2, [x, fast.weight, fast.bias], g)
    n_in = 8 * 7 * 7
    flipped = plain.weight.flip(2, 3).transpose(0, 1).abs()
    abs_in = F.conv2d(g.abs(), flipped, padding=6)  # sum of |g| |w| per input pixel
    assert ((gx2 - gx1).abs() <= bound(n_in, abs_in)).all()
    n_w = 10 * 16 * 16
    abs_w = F.conv2d(x.abs().transpose(0, 1), g.abs().transpose(0, 1)).transpose(0, 1)
    assert ((gw2 - gw1).abs() <= bound(n_w, abs_w)).all()
    assert ((gb2 - gb1).abs() <= bound(n_w, g.abs().sum((0, 2, 3)))).all()

    pool_in = torch.relu(torch.randn(10, 8, 16, 16, generator=gen)).requires_grad_()
    pooled = fast_cpu_layers(nn.MaxPool2d(2, 2))(pool_in)
    reference = F.max_pool2d(pool_in, 2, 2)
    g_pool = torch.randn(reference.shape, generator=gen)
    assert torch.equal(pooled, reference)
    (gp1,) = torch.autograd.grad(reference, pool_in, g_pool)
    (gp2,) = torch.autograd.grad(pooled, pool_in, g_pool)
    assert torch.equal(gp2, gp1)  # ReLU zeros tie: both give the first maximum the gradient
