"""Fast torch paths for the learned aligners: warps without validation, constants computed once.

:mod:`lkstn.warps` and :func:`lkstn.sampling.warp_image` validate every call and rebuild their
constants (basis, grid) in the dtype of each call: right for a library entry point, wasteful inside
a network that warps a few times per training step. :class:`WarpSampler` holds those constants as
non-persistent buffers, so they are computed once per ``(warp, template_shape)`` and follow the
module through ``.to(device, dtype)``; its methods are unchecked and differentiable, and
``tests/learned/test_stn.py`` checks them against :mod:`lkstn.warps` and
:func:`lkstn.sampling.warp_image`.

The sampling grid of a batch is one batched matmul ``M (B, 3, 3) @ G (3, h*w)`` with the
homogeneous canonical grid ``G`` (the fastest of the layouts tried on CPU), divided by its third row
for a homography, then ``grid_sample(..., align_corners=True)`` (the convention of
:mod:`lkstn.warps`).

:func:`fast_convolutions` switches the ``nn.Conv2d`` layers of a model to CPU kernels that compute
the same function and gradients faster for the small-channel convolutions of [LL17] (NNPACK for
the forward pass and the input gradient); the modules keep their parameters and ``state_dict``.

Glossary: ``p`` warp parameters ``(B, P)``, ``M`` warp matrices ``(B, 3, 3)``, ``G`` homogeneous
canonical grid ``(3, h*w)``, ``B`` batch, ``P`` number of parameters.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lkstn.sampling import canonical_grid
from lkstn.warps import Warp

__all__ = ["FastConv2d", "WarpSampler", "fast_convolutions"]


class WarpSampler(nn.Module):
    """One warp family on one template frame: ``M(p)``, ``p(M)``, composition, ``I(p)``.

    Parameters
    ----------
    warp : Warp
    template_shape : (h, w)
        The output frame of :meth:`sample`.

    Notes
    -----
    The constants (homogeneous grid ``(3, h*w)``, basis ``(P, 9)``, its pseudo-inverse, the
    identity) are buffers with ``persistent=False``: they follow ``.to()`` but stay out of
    ``state_dict``, and are re-rounded from float64 masters at every dtype change, so a module
    built in float32 and moved to float64 holds exact float64 constants. Nothing here validates
    its input; callers check shapes once.
    """

    def __init__(self, warp: Warp, template_shape: tuple[int, int]) -> None:
        super().__init__()
        self.warp = warp
        self.template_shape = (int(template_shape[0]), int(template_shape[1]))
        P = warp.n_params
        grid = canonical_grid(self.template_shape)  # (h*w, 2)
        self._exact = {  # float64 masters: every dtype gets correctly rounded constants
            "grid": torch.as_tensor(np.concatenate([grid, np.ones((len(grid), 1))], 1).T.copy()),
            "basis": torch.as_tensor(warp.basis.reshape(P, 9)),  # (P, 9)
            "pinv": torch.as_tensor(warp._pinv()),  # (9, P)
            "eye": torch.eye(3, dtype=torch.float64),
        }
        for name, value in self._exact.items():
            self.register_buffer(name, value.to(torch.get_default_dtype()), persistent=False)

    def _apply(self, fn, recurse=True):
        """After ``.to()``/``.double()``/...: re-round the constants from the float64 masters."""
        super()._apply(fn, recurse)
        for name, value in self._exact.items():
            setattr(self, name, value.to(self.grid.device, self.grid.dtype))
        return self

    def extra_repr(self) -> str:
        return f"warp={self.warp!r}, template_shape={self.template_shape}"

    def matrix(self, p: Tensor) -> Tensor:
        """``M(p) = I + sum_k p_k B_k``, ``(B, P) -> (B, 3, 3)`` ([LL17] eq. (9))."""
        return (p @ self.basis).view(-1, 3, 3) + self.eye

    def params(self, M: Tensor) -> Tensor:
        """``p(M)``, ``(B, 3, 3) -> (B, P)``; ``M`` must already be normalised (``M[2, 2] = 1``)."""
        return (M - self.eye).reshape(-1, 9) @ self.pinv

    def normalise(self, M: Tensor) -> Tensor:
        """``M / M[2, 2]`` for a homography; the identity map for the affine families."""
        return M / M[:, 2:3, 2:3] if self.warp.projective else M

    def compose(self, A: Tensor, C: Tensor) -> Tensor:
        """``normalise(A @ C)``: the matrix of ``compose(p(A), p(C))``, ``C`` acting first."""
        return self.normalise(A @ C)

    def grid_of(self, M: Tensor) -> Tensor:
        """Sampling grid ``W(x; p)`` of the template frame, ``(B, h, w, 2)``."""
        h, w = self.template_shape
        if self.warp.projective:
            xyz = M @ self.grid  # (B, 3, h*w)
            xy = xyz[:, :2] / xyz[:, 2:]  # (B, 2, h*w)
        else:
            xy = M[:, :2] @ self.grid  # (B, 2, h*w)
        return xy.transpose(1, 2).reshape(-1, h, w, 2)

    def sample(self, image: Tensor, M: Tensor) -> Tensor:
        """``I(p)``: ``image`` ``(B, C, H, W)`` sampled at ``W(x; p)``, ``(B, C, h, w)``."""
        grid = self.grid_of(M)
        return F.grid_sample(
            image, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )  # [LL17] eq. (1)


# -- convolutions ---------------------------------------------------------------------------------


def _nnpack_conv(x: Tensor, weight: Tensor, bias: Tensor | None, pad=(0, 0)) -> Tensor:
    """Unit-stride ``conv2d`` with zero padding ``pad = (ph, pw)``, through NNPACK where it can."""
    if x.dtype == torch.float32 and max(weight.shape[-2:]) <= 16 and torch._nnpack_available():
        b = weight.new_zeros(weight.shape[0]) if bias is None else bias
        try:
            return torch._nnpack_spatial_convolution(x, weight, b, list(pad), [1, 1])
        except RuntimeError:  # an NNPACK limit: the default backend will do
            pass
    return F.conv2d(x, weight, bias, padding=tuple(pad))


class _Conv2dFunction(torch.autograd.Function):
    """``conv2d`` (unit stride, no padding, one group) with the CPU kernels that are fastest here.

    Same function, same gradients; only the kernels differ. For the 1-8 channel layers of [LL17]
    Table 2 on CPU, oneDNN (PyTorch's default) is slowest at the input gradient, several times
    slower than a forward convolution of the same size. So the forward pass and the input
    gradient, ``dL/dx = conv2d(pad(g, k - 1), flip(w)^T)`` (the "full" correlation with the
    flipped kernel), go through NNPACK, and ``dL/dw``, ``dL/db`` through oneDNN's
    ``convolution_backward``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _nnpack_conv(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        grad = grad.contiguous()
        if need_x:
            kh, kw = weight.shape[-2:]
            flipped = weight.flip(2, 3).transpose(0, 1).contiguous()  # (I, O, kh, kw)
            grad_x = _nnpack_conv(grad, flipped, None, (kh - 1, kw - 1))  # (B, I, H, W)
        if need_w or need_b:
            bias_sizes = [weight.shape[0]] if ctx.has_bias else None
            mask = [False, need_w, need_b and ctx.has_bias]
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, bias_sizes, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask
            )
        return grad_x, grad_w, grad_b


class FastConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed by :class:`_Conv2dFunction` on CPU; same parameters and function.

    Only for unit stride, no padding, no dilation and one group (every convolution of [LL17]);
    on other devices, or inside ``torch.compile``, it is a plain ``nn.Conv2d``.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if input.device.type != "cpu" or torch.compiler.is_compiling():
            return super()._conv_forward(input, weight, bias)  # NNPACK has no fake kernels
        return _Conv2dFunction.apply(input, weight, bias)


def _plain_conv(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.stride == (1, 1)
        and m.padding in ((0, 0), "valid")
        and m.dilation == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
    )


def fast_convolutions(model: nn.Module) -> nn.Module:
    """Switch every plain ``nn.Conv2d`` of ``model`` to :class:`FastConv2d`, in place.

    The instances change class, nothing is copied, so parameters and ``state_dict`` keys are
    unchanged; values and gradients agree with ``nn.Conv2d`` to float rounding
    (``tests/learned/test_stn.py``). Strided, padded, dilated or grouped convolutions are left
    alone. Returns ``model``.

    NNPACK's thread pool is created by PyTorch at its first use, with the thread count of that
    moment, and never resized: call ``torch.set_num_threads`` before the first forward pass.
    """
    for module in model.modules():
        if _plain_conv(module):
            module.__class__ = FastConv2d
    return model
