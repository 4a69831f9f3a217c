"""N one-linear-layer IC-STNs of one warp as one batched forward (for :mod:`lkstn.learned.sweep`).

The N predictors are stacked, ``W`` ``(N, P, D)`` and ``b`` ``(N, P)``, with the standardisation
folded in, ``dp = (W / s) x + (b - (W / s) mu)`` (the same affine map, [LL17] eq. (5)-(6)).
Models are ordered by depth (most warps first), so the models still running at warp ``k`` are a
prefix of the stack and every warp is one ``grid_sample`` over ``a_k * B`` samples and one
batched matrix product ([LL17] eq. (10): ``M(p) <- M(dp) M(p)``). The first sample
``I(p_init)`` needs no gradient and is computed once per distinct data stream; the grid is a
broadcast sum with a one-product backward (:class:`_Grid`); a c-STN's unused final sample
``I(p)`` is skipped. ``tests/learned/test_sweep.py`` checks the forward and the gradients against
each model's own (float64, to rounding).

Glossary: ``N`` models, ``B`` batch size, ``P`` warp parameters, ``D = C h w`` pixels of a
sample, ``a_k`` models with more than ``k`` warps, ``U`` distinct data streams.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lkstn.learned.predictors import LinearPredictor
from lkstn.learned.stn import ICSTN
from lkstn.learned.torch_warp import WarpSampler

__all__ = ["LinearICSTNStack", "linear_parts"]


def linear_parts(model: nn.Module) -> tuple[nn.Linear, Tensor | None, Tensor | None]:
    """``(linear, mu, s)`` of an IC-STN whose predictor is ``LinearPredictor`` or
    ``Sequential(standardise, LinearPredictor)`` (``standardise`` with buffers ``mu``, ``s``)."""
    if not isinstance(model, ICSTN) or model.update != "eq10":
        raise ValueError("train_sweep takes ICSTN models with update='eq10'")
    f = model.predictor
    if isinstance(f, LinearPredictor):
        return f.linear, None, None
    if (
        isinstance(f, nn.Sequential)
        and len(f) == 2
        and isinstance(f[1], LinearPredictor)
        and isinstance(getattr(f[0], "mu", None), Tensor)
        and isinstance(getattr(f[0], "s", None), Tensor)
        and not list(f[0].parameters())
    ):
        return f[1].linear, f[0].mu, f[0].s
    raise ValueError(
        "train_sweep takes IC-STNs whose predictor is LinearPredictor or "
        f"Sequential(standardise, LinearPredictor), got {type(f).__name__}"
    )


class _Grid(torch.autograd.Function):
    """``A (n, r, 3) -> A G`` laid out ``(n, h, w, r)``, ``G`` the homogeneous grid ``(3, h w)``.

    Forward: a broadcast sum over rows and columns (``x = A00 u + A01 v + A02``: no product with
    an inner dimension of 3). Backward: ``dA = dX K`` with ``K = kron(G^T, I_r)`` ``(h w r, 3 r)``,
    one matrix product over the whole batch instead of autograd's two strided reductions.
    """

    @staticmethod
    def forward(ctx, A: Tensor, G: Tensor, K: Tensor, shape: tuple[int, int]) -> Tensor:
        h, w = shape
        ctx.save_for_backward(K)
        u, v = G[0, :w], G[1, ::w]  # canonical column / row positions
        cols = A[:, :, 0, None] * u  # (n, r, w)
        lines = A[:, :, 1, None] * v + A[:, :, 2, None]  # (n, r, h)
        xyz = cols[:, :, None, :] + lines[:, :, :, None]  # (n, r, h, w): rows contiguous
        return xyz.permute(0, 2, 3, 1)  # (n, h, w, r)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (K,) = ctx.saved_tensors
        n, h, w, r = grad.shape
        dA = grad.reshape(n, h * w * r) @ K  # (n, 3 r): dA[c r + i] = sum_k G[c, k] dX[k r + i]
        return dA.view(n, 3, r).transpose(1, 2), None, None, None


class LinearICSTNStack(nn.Module):
    """N one-linear-layer IC-STNs of one warp and template frame as one batched forward.

    Parameters
    ----------
    models : sequence of ICSTN
        Predictors ``LinearPredictor`` (optionally behind ``(x - mu) / s`` buffers); any depths.
        Their weights are copied in; :meth:`write_back` copies them out.

    Attributes
    ----------
    order : list of int
        Stack position -> index in ``models`` (deepest first).
    """

    def __init__(self, models: Sequence[ICSTN]) -> None:
        super().__init__()
        if not models:
            raise ValueError("models must not be empty")
        first = models[0]
        for m in models:
            if m.warp.name != first.warp.name or m.template_shape != first.template_shape:
                raise ValueError("every model of a sweep needs the same warp and template_shape")
        self.models = list(models)
        self.order = sorted(range(len(models)), key=lambda i: -models[i].n_warps)
        parts = [linear_parts(models[i]) for i in self.order]
        like = parts[0][0].weight
        D = like.shape[1]
        self.W = nn.Parameter(torch.stack([p[0].weight.detach() for p in parts]).clone())
        self.b = nn.Parameter(torch.stack([p[0].bias.detach() for p in parts]).clone())
        mu = [like.new_zeros(D) if p[1] is None else p[1].reshape(-1).to(like) for p in parts]
        s = [like.new_ones(()) if p[2] is None else p[2].to(like) for p in parts]
        self.register_buffer("mu", torch.stack(mu))  # (N, D)
        self.register_buffer("s", torch.stack(s))  # (N,)
        self.depths = [models[i].n_warps for i in self.order]
        self.sampler = WarpSampler(first.warp, first.template_shape).to(like)
        self._kron: Tensor | None = None

    def write_back(self) -> None:
        """Copy the stacked ``W``, ``b`` into the models' own layers."""
        with torch.no_grad():
            for k, i in enumerate(self.order):
                linear = linear_parts(self.models[i])[0]
                linear.weight.copy_(self.W[k])
                linear.bias.copy_(self.b[k])

    def grid(self, M: Tensor) -> Tensor:
        """Sampling grid ``W(x; p)``, ``(n, 3, 3) -> (n, h, w, 2)``."""
        S = self.sampler
        h, w = S.template_shape
        r = 3 if S.warp.projective else 2
        if self._kron is None or self._kron.dtype != M.dtype or self._kron.device != M.device:
            eye = torch.eye(r, dtype=M.dtype, device=M.device)
            self._kron = torch.kron(S.grid.T.to(M).contiguous(), eye)  # (h w r, 3 r)
        xyz = _Grid.apply(M[:, :r], S.grid, self._kron, (h, w))  # (n, h, w, r)
        return xyz[..., :2] / xyz[..., 2:] if S.warp.projective else xyz

    def sample(self, image: Tensor, M: Tensor) -> Tensor:
        """``I(p)`` flattened, ``(n, 3, 3) -> (n, D)``; ``image`` ``(1, C, H, W)``."""
        n = M.shape[0]
        out = F.grid_sample(
            image.expand(n, *image.shape[1:]), self.grid(M), mode="bilinear",
            padding_mode="zeros", align_corners=True,
        )  # fmt: skip  # [LL17] eq. (1)
        return out.reshape(n, -1)

    def forward(self, image: Tensor, p_init: Tensor, stream: Tensor) -> Tensor:
        """Final warps ``(N, B, P)`` in stack order.

        ``image`` ``(1, C, H, W)``; ``p_init`` ``(U, B, P)``, one set of starts per distinct
        stream; ``stream`` ``(N,)`` the stream of each stacked model.
        """
        S, N = self.sampler, len(self.depths)
        U, B, P = p_init.shape
        Wf = self.W / self.s[:, None, None]  # (N, P, D): the standardisation folded in
        bf = self.b - (Wf @ self.mu[:, :, None])[..., 0]  # (N, P)
        M0 = S.matrix(p_init.reshape(U * B, P))  # (U*B, 3, 3)
        x = self.sample(image, M0).view(U, B, -1)[stream]  # (N, B, D): I(p_init), no gradient
        M = M0.view(U, B, 3, 3)[stream]  # (N, B, 3, 3)
        for k in range(max(self.depths)):
            a = sum(d > k for d in self.depths)  # the models still running: a prefix
            if k > 0:
                x = self.sample(image, M[:a].reshape(a * B, 3, 3)).view(a, B, -1)
            dp = torch.baddbmm(bf[:a, None, :], x[:a], Wf[:a].transpose(1, 2))  # (a, B, P)
            dM = S.matrix(dp.reshape(a * B, P))
            Ma = S.compose(dM, M[:a].reshape(a * B, 3, 3)).view(a, B, 3, 3)  # [LL17] eq. (10)
            M = Ma if a == N else torch.cat([Ma, M[a:]])
        return S.params(M.reshape(N * B, 3, 3)).view(N, B, P)
