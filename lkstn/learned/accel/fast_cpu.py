"""CPU kernels for the small layers of [LL17]'s networks: same function, same gradients, faster.

:func:`fast_cpu_layers` switches, in place, the plain ``nn.Conv2d`` layers of a model to
:class:`FastConv2d` and its 2x2 ``nn.MaxPool2d`` layers to :class:`FastMaxPool2d` (the instances
change class, nothing is copied: parameters and ``state_dict`` keys stay). On other devices, and
inside ``torch.compile``, both are their plain parents.

- :class:`FastConv2d`: the forward pass and the input gradient (a "full" correlation with the
  flipped kernel) each by NNPACK or by oneDNN's forward convolution, whichever was measured
  fastest for the layer's shapes and thread count; the weight gradient by oneDNN's backward
  kernel or its forward kernel over the batch, also as measured. PyTorch's
  default input gradient (oneDNN's ``convolution_backward``) is 2-6x slower than either for
  1-8 channels, so it is no candidate.
- :class:`FastMaxPool2d`: 2x2, stride 2, as two elementwise maxima of strided views, or
  PyTorch's ``max_pool2d``, whichever was measured fastest (forward and backward together). The
  gradient goes, as ``max_pool2d``'s, to the first maximum of each window in row-major order.

Which kernel is fastest is a property of the CPU, not of the code (AVX2 and AVX-512 machines
rank them differently; ``benchmarks/README.md`` lists what was measured where). So the kernels
are chosen by
:func:`lkstn.learned.accel.kernels.choose` at each layer's first call: a few interleaved timings
of each candidate on the real tensors, the median kept, the choice cached (for the process and
per machine) and listed by :func:`lkstn.learned.accel.kernels.kernel_choices`.

Measured in ``benchmarks/train_step.py`` (``lkstn`` against ``lkstn-plainconv``); values and
gradients of every candidate are checked against the plain layers in
``tests/learned/test_fast_cpu.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lkstn.learned.accel.kernels import choose, thread_key

__all__ = ["FastConv2d", "FastMaxPool2d", "fast_cpu_layers"]


_NNPACK_READY = False


def _nnpack_ready() -> bool:
    """Whether NNPACK can run; on the first call, create PyTorch's NNPACK pool with one thread.

    PyTorch creates that pool once, at NNPACK's first use, with ``torch.get_num_threads()``
    threads, and never resizes it; concurrent callers of a pool of two or more threads wait for
    one another (measured: two batch shards in two threads ran at half speed). A pool of one
    thread runs each call on its caller's thread, so shards in parallel threads
    (:mod:`lkstn.learned.accel.shards`) each get a core; within one call NNPACK gained nothing
    from a second thread on the 1-8 channel layers of [LL17] (``benchmarks/train_step.py``).
    """
    global _NNPACK_READY
    if not _NNPACK_READY and torch._nnpack_available():
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            one = torch.ones(1, 1, 2, 2)
            torch._nnpack_spatial_convolution(one, one, torch.zeros(1), [0, 0], [1, 1])
            _NNPACK_READY = True
        except RuntimeError:  # NNPACK unusable on this CPU: the default backend will do
            pass
        finally:
            torch.set_num_threads(before)
    return _NNPACK_READY


def _conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, pad: tuple[int, int], role: str
) -> Tensor:
    """Unit-stride ``conv2d`` with zero padding ``pad = (ph, pw)`` by the kernel measured fastest.

    Candidates: NNPACK (float32, kernels up to 16x16) and PyTorch's default (oneDNN), chosen per
    ``role``, shapes, dtype and intra-op thread count by :func:`lkstn.learned.accel.kernels.choose`.
    """
    candidates = {"onednn": lambda: F.conv2d(x, weight, bias, padding=pad)}
    if x.dtype == torch.float32 and max(weight.shape[-2:]) <= 16 and _nnpack_ready():
        b = weight.new_zeros(weight.shape[0]) if bias is None else bias
        candidates["nnpack"] = lambda: torch._nnpack_spatial_convolution(
            x, weight, b, list(pad), [1, 1]
        )  # fmt: skip
    if len(candidates) == 1:
        return candidates["onednn"]()
    shapes = f"x={tuple(x.shape)} w={tuple(weight.shape)} pad={tuple(pad)}"
    key = thread_key(f"conv2d {role}", shapes, _dtype(x))
    return candidates[choose(key, candidates)]()


class _Conv2dFunction(torch.autograd.Function):
    """``conv2d`` (unit stride, no padding, one group) with the CPU kernels that are fastest here.

    Same function, same gradients; only the kernels differ. For the 1-8 channel layers of [LL17]
    Table 2 on CPU, oneDNN's ``convolution_backward`` is slowest at the input gradient, several
    times slower than a forward convolution of the same size. So the forward pass and the input
    gradient, ``dL/dx = conv2d(pad(g, k - 1), flip(w)^T)`` (the "full" correlation with the
    flipped kernel), go through a forward convolution, NNPACK's or oneDNN's as measured
    (:func:`_conv`); ``dL/dw`` by oneDNN as measured (:func:`_weight_grad`), ``dL/db`` a sum.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _conv(x, weight, bias, (0, 0), "forward")

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        grad = grad.contiguous()
        if need_x:
            kh, kw = weight.shape[-2:]
            flipped = weight.flip(2, 3).transpose(0, 1).contiguous()  # (I, O, kh, kw)
            grad_x = _conv(grad, flipped, None, (kh - 1, kw - 1), "input-grad")  # (B, I, H, W)
        if need_w:
            grad_w = _weight_grad(x, grad, weight)
        if need_b and ctx.has_bias:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


def _weight_grad(x: Tensor, grad: Tensor, weight: Tensor) -> Tensor:
    """``dL/dw`` of a unit-stride, unpadded ``conv2d``, by the oneDNN kernel measured fastest.

    Candidates: ``convolution_backward`` on the tensors as they are or copied to channels-last
    (oneDNN's kernels differ by layout), and the forward correlation of the inputs with the
    output gradients over the batch, ``dL/dw[o, i] = sum_b x[b, i] * g[b, o]`` (the batch as
    the channels: ``conv2d(x^T (I, B, H, W), g^T (O, B, h, w)) -> (I, O, kh, kw)``).
    """
    mask = [False, True, False]

    def backward() -> Tensor:
        return torch.ops.aten.convolution_backward(
            grad, x, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask
        )[1]

    def batch_correlation() -> Tensor:
        return F.conv2d(x.transpose(0, 1), grad.transpose(0, 1)).transpose(0, 1)  # (O, I, kh, kw)

    def backward_channels_last() -> Tensor:
        last = torch.channels_last
        return torch.ops.aten.convolution_backward(
            grad.contiguous(memory_format=last), x.contiguous(memory_format=last), weight,
            None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask,
        )[1].contiguous()  # fmt: skip

    candidates = {
        "backward": backward,
        "batch-correlation": batch_correlation,
        "backward-channels-last": backward_channels_last,
    }
    shapes = f"x={tuple(x.shape)} g={tuple(grad.shape)}"
    return candidates[choose(thread_key("conv2d weight-grad", shapes, _dtype(x)), candidates)]()


class FastConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed by :class:`_Conv2dFunction` on CPU; same parameters and function.

    Only for unit stride, no padding, no dilation and one group (every convolution of [LL17]);
    on other devices, or inside ``torch.compile``, it is a plain ``nn.Conv2d``. The forward and
    input-gradient kernels are chosen by measurement at the first call with new shapes.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if input.device.type != "cpu" or torch.compiler.is_compiling():
            return super()._conv_forward(input, weight, bias)  # NNPACK has no fake kernels
        return _Conv2dFunction.apply(input, weight, bias)


def _dtype(x: Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")


def _plain_conv(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.stride == (1, 1)
        and m.padding in ((0, 0), "valid")
        and m.dilation == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
    )


class _MaxPool2x2Function(torch.autograd.Function):
    """2x2 max-pooling with stride 2 of ``(B, C, 2h, 2w)``, as ``F.max_pool2d(x, 2, 2)``.

    Forward: the maximum of each window's top pair, of its bottom pair, then of the two (three
    elementwise maxima of strided views), remembering as three boolean planes which of each pair
    won (the right one only when strictly greater, the bottom one likewise: the first maximum in
    row-major order, where ``max_pool2d`` sends the gradient). Backward: the gradient split by
    those planes, written straight into the four strided corners of the input's gradient. A
    window holding a NaN sends its gradient to its last NaN, as ``max_pool2d`` does (a slower
    pass, taken only when the output holds a NaN).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        win = x.view(B, C, H // 2, 2, W // 2, 2)
        tl, tr, bl, br = (win[:, :, :, i, :, j] for i in (0, 1) for j in (0, 1))
        top, bottom = torch.maximum(tl, tr), torch.maximum(bl, br)  # NaN propagates
        y = torch.maximum(top, bottom)
        ctx.nan = bool(y.isnan().any())
        ctx.save_for_backward(*((x, y) if ctx.nan else (tr > tl, br > bl, bottom > top)))
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        if ctx.nan:
            return _pool_grad_with_nan(*ctx.saved_tensors, grad)
        right_top, right_bottom, low = ctx.saved_tensors
        B, C, h, w = grad.shape
        grad_x = grad.new_empty(B, C, 2 * h, 2 * w)
        out = grad_x.view(B, C, h, 2, w, 2)
        grad = grad.contiguous()
        lower = grad * low
        for i, rows, right in ((0, grad - lower, right_top), (1, lower, right_bottom)):
            torch.mul(rows, right, out=out[:, :, :, i, :, 1])
            torch.sub(rows, out[:, :, :, i, :, 1], out=out[:, :, :, i, :, 0])
        return grad_x


def _pool_grad_with_nan(x: Tensor, y: Tensor, grad: Tensor) -> Tensor:
    """The gradient of 2x2 max-pooling as ``max_pool2d`` sends it: in each window to the first
    maximum in row-major order, or to the last NaN when the window holds one."""
    B, C, H, W = x.shape
    win = x.view(B, C, H // 2, 2, W // 2, 2)
    corners = [win[:, :, :, i, :, j] for i in (0, 1) for j in (0, 1)]  # row-major order
    grad_x = torch.zeros_like(x)
    out = grad_x.view(B, C, H // 2, 2, W // 2, 2)
    taken = torch.zeros_like(y, dtype=torch.bool)
    hits = {}
    for k, value in enumerate(corners):
        hits[k] = (value == y) & ~taken  # never true in a NaN window
        taken |= hits[k]
    for k in reversed(range(4)):
        nan = corners[k].isnan() & ~taken
        hits[k] |= nan
        taken |= nan
    for k, hit in hits.items():
        out[:, :, :, k // 2, :, k % 2] = grad * hit
    return grad_x


class FastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d(2, 2)`` on CPU by two elementwise maxima or ``max_pool2d``, as measured.

    Same values and gradients either way. The choice is made per input shape, dtype, thread count
    and whether a backward pass follows (then forward and backward are timed together). Inputs
    with an odd height or width, other devices, and ``torch.compile`` use the parent.
    """

    def forward(self, input: Tensor) -> Tensor:
        if (
            input.device.type != "cpu"
            or input.ndim != 4
            or input.shape[-2] % 2
            or input.shape[-1] % 2
            or not input.is_contiguous()
            or torch.compiler.is_compiling()
        ):
            return super().forward(input)
        candidates = {"maxima": _MaxPool2x2Function.apply, "max_pool2d": super().forward}
        training = torch.is_grad_enabled() and input.requires_grad
        role = "forward+backward" if training else "forward"
        key = thread_key(f"max_pool2d 2x2 {role}", f"x={tuple(input.shape)}", _dtype(input))
        timed = {name: _timed_pool(pool, input, training) for name, pool in candidates.items()}
        return candidates[choose(key, timed)](input)


def _timed_pool(pool, x: Tensor, training: bool):
    """What :func:`~lkstn.learned.accel.kernels.choose` times of ``pool``: its forward (and
    backward)."""
    if not training:
        return lambda: pool(x)
    leaf = x.detach().requires_grad_()

    def forward_backward():
        with torch.enable_grad():
            y = pool(leaf)
            return torch.autograd.grad(y, leaf, y.detach())

    return forward_backward


def _plain_pool(m: nn.Module) -> bool:
    return (
        type(m) is nn.MaxPool2d
        and m.kernel_size in (2, (2, 2))
        and m.stride in (2, (2, 2))
        and m.padding in (0, (0, 0))
        and m.dilation in (1, (1, 1))
        and not m.ceil_mode
        and not m.return_indices
    )


def fast_cpu_layers(model: nn.Module) -> nn.Module:
    """Switch the plain ``nn.Conv2d`` and 2x2 ``nn.MaxPool2d`` of ``model`` to their fast forms.

    In place: the instances change class (:class:`FastConv2d`, :class:`FastMaxPool2d`), nothing
    is copied, so parameters and ``state_dict`` keys are unchanged; values and gradients agree
    with the plain layers to float rounding (pooling: exactly). Strided, padded, dilated or
    grouped convolutions and other pools are left alone. Returns ``model``.

    The kernels are chosen at each layer's first call with new shapes (a few ms of timing per
    layer, :mod:`lkstn.learned.accel.kernels`). NNPACK's thread pool is created with one thread at
    the first forward pass (:func:`_nnpack_ready`); :func:`~lkstn.learned.train.train` uses the
    other cores by running batch shards in parallel threads.
    """
    for module in model.modules():
        if _plain_conv(module):
            module.__class__ = FastConv2d
        elif _plain_pool(module):
            module.__class__ = FastMaxPool2d
    return model
