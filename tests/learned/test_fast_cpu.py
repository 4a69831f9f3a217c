"""The fast CPU layers compute the plain layers' function and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lkstn.learned.fast_cpu import FastConv2d, FastMaxPool2d, fast_cpu_layers


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


def test_fast_pool_propagates_nan_and_falls_back_on_odd_sizes() -> None:
    x = torch.ones(1, 1, 4, 4)
    x[0, 0, 1, 1] = float("nan")
    y = fast_cpu_layers(nn.MaxPool2d(2, 2))(x)
    assert torch.isnan(y[0, 0, 0, 0]) and (y[0, 0].flatten()[1:] == 1).all()
    odd = torch.rand(2, 3, 7, 9)
    torch.testing.assert_close(
        fast_cpu_layers(nn.MaxPool2d(2, 2))(odd), nn.functional.max_pool2d(odd, 2, 2)
    )
