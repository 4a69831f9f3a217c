"""Fast torch paths for the learned aligners: warps without validation, constants computed once.

:mod:`lkstn.warps` and :func:`lkstn.sampling.warp_image` validate every call and rebuild their
constants (basis, grid) in the dtype of each call: right for a library entry point, wasteful inside
a network that warps a few times per training step. :class:`WarpSampler` holds those constants as
non-persistent buffers, so they are computed once per ``(warp, template_shape)`` and follow the
module through ``.to(device, dtype)``; its methods are unchecked and differentiable, and
``tests/learned/test_stn.py`` checks them against :mod:`lkstn.warps` and
:func:`lkstn.sampling.warp_image`.

The sampling grid of a batch is :func:`lkstn.sampling.warped_grid` of ``M (B, 3, 3)`` on the
homogeneous canonical grid ``G (3, h*w)``: the product ``M @ G`` on a GPU, the separable
broadcast sum on the CPU (see :meth:`WarpSampler.grid_of`), divided by the third row for a
homography; then ``grid_sample(..., align_corners=True)`` (the convention of :mod:`lkstn.warps`).

The fast CPU kernels of the convolution and pooling layers are in
:mod:`lkstn.learned.accel.fast_cpu`.

Glossary: ``p`` warp parameters ``(B, P)``, ``M`` warp matrices ``(B, 3, 3)``, ``G`` homogeneous
canonical grid ``(3, h*w)``, ``B`` batch, ``P`` number of parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lkstn.sampling import homogeneous_grid, warped_grid
from lkstn.warps import Warp

__all__ = ["WarpSampler"]


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
        self._exact = {  # float64 masters: every dtype gets correctly rounded constants
            "grid": torch.as_tensor(homogeneous_grid(self.template_shape)),  # (3, h*w)
            "basis": torch.as_tensor(warp.basis.reshape(P, 9)),  # (P, 9)
            "pinv": torch.as_tensor(warp.basis_pinv()),  # (9, P)
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
        # On the CPU the separable form, one broadcast sum instead of a (3, h*w) product with
        # an inner dimension of 3, and the gradient in closed form (:class:`_GridFunction`):
        # each cost ~10 % of an MNIST IC-STN-4 training step done the other way
        # (benchmarks/README.md). Not used on a GPU: there two eager float64 trainings with the
        # separable form drifted apart by 5e-3 in 30 steps (2e-9 with the product form), cause
        # not established, so the GPU keeps the form it was tested with.
        if M.device.type == "cpu":
            xy = _GridFunction.apply(M, self.grid, self.warp.projective, self.template_shape)
        else:
            xy = warped_grid(M, self.grid, projective=self.warp.projective)
        return xy.permute(1, 2, 0).reshape(-1, h, w, 2)  # (2, B, h*w) -> (B, h, w, 2), a view

    def sample(self, image: Tensor, M: Tensor) -> Tensor:
        """``I(p)``: ``image`` ``(B, C, H, W)`` sampled at ``W(x; p)``, ``(B, C, h, w)``."""
        grid = self.grid_of(M)
        return F.grid_sample(
            image, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )  # [LL17] eq. (1)


class _GridFunction(torch.autograd.Function):
    """``warped_grid(M, G)`` in the separable form, with its gradient in ``M`` in closed form.

    With ``X = (u, v, 1)`` a point of ``G``, ``a, b, z`` the rows of ``M X`` and ``(x, y) =
    (a, b) / z`` (``z = 1`` for the affine families), the chain rule gives

        dL/dM[0] = sum_X (gx / z) X,   dL/dM[1] = sum_X (gy / z) X,
        dL/dM[2] = -sum_X ((gx x + gy y) / z) X,

    a few elementwise passes and one matrix product over the points, where autograd through
    the broadcast sum and the division reduces every broadcast dimension separately (measured:
    ~1.8 ms against ~0.3 ms per grid of an MNIST batch of 100 on one CPU thread). ``G`` is a
    constant (no gradient).
    """

    generate_vmap_rule = True  # torch.func (the batched sweeps) vmaps forward and backward

    @staticmethod
    def forward(M: Tensor, grid: Tensor, projective: bool, shape: tuple[int, int]) -> Tensor:
        return warped_grid(M, grid, projective=projective, shape=shape)  # (2, B, N)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        M, grid, projective, _ = inputs
        ctx.projective = projective
        ctx.save_for_backward(M, grid, output)

    @staticmethod
    def backward(ctx, grad: Tensor):
        M, grid, xy = ctx.saved_tensors
        to_params = grid.T  # (N, 3): sum_X w X is w @ G^T
        if ctx.projective:
            inv_z = (M[..., 2, :] @ grid).reciprocal()  # (B, N)
            wx, wy = grad[0] * inv_z, grad[1] * inv_z
            wz = -(wx * xy[0] + wy * xy[1])
            rows = [wx @ to_params, wy @ to_params, wz @ to_params]
        else:
            rows = [grad[0] @ to_params, grad[1] @ to_params]
            rows.append(torch.zeros_like(rows[0]))
        return torch.stack(rows, dim=-2), None, None, None  # (B, 3, 3)
