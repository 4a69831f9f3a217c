"""The frame every spatial transformer shares: its output type and its checks, cost and ``align``.

:class:`Transformed` is what ``forward`` returns. :class:`SpatialTransformer` holds the warp, the
template frame and the sampler, checks the inputs, and implements the
:class:`lkstn.result.Aligner` contract through :meth:`SpatialTransformer.align` (eval mode, no
gradients). With no template, ``cost`` is ``None`` and ``converged`` means "finite parameters";
constructed with a ``template``, ``cost`` is the mean squared residual ``mean (I(p) - T)^2`` per
iterate and ``converged`` also asks for a final cost no larger than the starting one and a final
box that is non-degenerate, inside the image and over texture.

Glossary: ``I`` the input image ``(B, C, H, W)``; ``I(p)`` it sampled at ``W(x; p)`` over the
template frame ``(h, w)``; ``T`` the template; ``p`` warp parameters ``(B, P)``; ``M`` warp matrix
``(B, 3, 3)``.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from lkstn._backend import ArrayLike
from lkstn.learned.inputs import check_image
from lkstn.learned.torch_warp import WarpSampler
from lkstn.result import AlignmentResult
from lkstn.warps import Warp, warp_from_name

__all__ = ["UPDATES", "SpatialTransformer", "Transformed", "Update"]

Update = Literal["eq10", "inverse"]
UPDATES = ("eq10", "inverse")
"""The update rules of a c-STN/IC-STN: [LL17] eq. (10), or IC-LK's inverse composition."""


class Transformed(NamedTuple):
    """What a spatial transformer's ``forward`` returns.

    Attributes
    ----------
    image : Tensor (B, C, h, w)
        The final warped image (what a classifier sees).
    p : Tensor (B, P)
        The final (composed) warp, ``history[-1]``.
    history : Tensor (n_warps + 1, B, P)
        Warp after each stage; row 0 is ``p_init``.

    Examples
    --------
    >>> import torch
    >>> from lkstn import ICSTN
    >>> from lkstn.learned.predictors import LinearPredictor
    >>> net = ICSTN(LinearPredictor((8, 8), 6), warp="affine", n_warps=2, template_shape=(8, 8))
    >>> out = net(torch.rand(3, 1, 16, 16))
    >>> out.image.shape, out.p.shape, out.history.shape
    (torch.Size([3, 1, 8, 8]), torch.Size([3, 6]), torch.Size([3, 3, 6]))
    """

    image: Tensor
    p: Tensor
    history: Tensor


class SpatialTransformer(nn.Module):
    """What :class:`~lkstn.learned.stn.STN`, :class:`~lkstn.learned.stn.CSTN` and
    :class:`~lkstn.learned.stn.ICSTN` share: warp, template frame, sampler, input checks and
    :meth:`align`.

    Parameters
    ----------
    warp : Warp or str
    template_shape : (h, w)
        Frame of every output, ``h, w >= 2``.
    template : array (h, w) or (C, h, w), optional
        Only for the ``cost`` and the convergence test of :meth:`align`.
    """

    def __init__(
        self, warp: Warp | str, template_shape: tuple[int, int], template: ArrayLike | None
    ) -> None:
        super().__init__()
        self.warp = warp_from_name(warp)
        if not (
            isinstance(template_shape, tuple | list)
            and len(template_shape) == 2
            and all(isinstance(s, int) and s >= 2 for s in template_shape)
        ):
            raise ValueError(
                f"template_shape must be (h, w) with h, w >= 2, got {template_shape!r}"
            )
        self.template_shape = (int(template_shape[0]), int(template_shape[1]))
        self.sampler = WarpSampler(self.warp, self.template_shape)
        self.template: Tensor | None
        if template is None:
            self.register_buffer("template", None)
        else:
            T = torch.as_tensor(template, dtype=torch.get_default_dtype())
            T = T[None] if T.ndim == 2 else T  # (C, h, w)
            if T.ndim != 3 or tuple(T.shape[1:]) != self.template_shape:
                raise ValueError(
                    f"template must be (h, w) or (C, h, w) with (h, w) = {self.template_shape}, "
                    f"got {tuple(T.shape)}"
                )
            if not torch.isfinite(T).all():
                raise ValueError("template has non-finite pixels (NaN or inf)")
            if float(T.std()) <= 1e-6 * float(T.abs().max()):
                raise ValueError("template is constant: no texture, nothing to align to")
            self.register_buffer("template", T)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-ready description of the model (recorded in checkpoints)."""
        return {
            "model": type(self).__name__,
            "warp": self.warp.name,
            "template_shape": list(self.template_shape),
        }

    def check_inputs(self, image: Tensor, p_init: ArrayLike | None) -> tuple[Tensor, Tensor]:
        """Check ``image`` ``(B, C, H, W)``; ``p_init`` as ``(B, P)``; broadcast batch 1."""
        if not isinstance(image, Tensor) or image.ndim != 4:
            shape = tuple(getattr(image, "shape", ()))
            raise ValueError(f"image must be a torch tensor (B, C, H, W), got shape {shape}")
        channels = None if self.template is None else self.template.shape[0]
        check_image(image, self.sampler.grid.dtype, self.sampler.grid.device, channels)
        P = self.warp.n_params
        if p_init is None:
            return image, image.new_zeros(image.shape[0], P)
        p = torch.as_tensor(p_init, dtype=image.dtype, device=image.device)
        p = p[None] if p.ndim == 1 else p
        if p.ndim != 2 or p.shape[1] != P:
            raise ValueError(f"p_init must be (B, {P}) or ({P},), got {tuple(p.shape)}")
        B = max(image.shape[0], p.shape[0])
        if image.shape[0] not in (1, B) or p.shape[0] not in (1, B):
            raise ValueError(f"image batch {image.shape[0]} and p_init batch {p.shape[0]} differ")
        return image.expand(B, *image.shape[1:]), p.expand(B, P)

    @staticmethod
    def check_count(
        n: int | None, default: int, maximum: int | None = None, name: str = "n_warps"
    ) -> int:
        """``n`` (``default`` when None) after checking it is an integer in ``[0, maximum]``."""
        n = default if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {n!r}")
        if maximum is not None and n > maximum:
            raise ValueError(f"{name} must be <= {maximum} (the number of predictors), got {n}")
        return n

    def align(
        self, image: Tensor, p_init: ArrayLike | None, n_iter: int | None = None
    ) -> AlignmentResult:
        """Align ``image`` ``(B, C, H, W)`` from ``p_init`` ``(B, P)``: eval mode, no gradients.

        Returns
        -------
        AlignmentResult
            ``history`` ``(n_iter + 1, B, P)``; ``cost`` ``(n_iter + 1, B)`` with a template,
            else ``None``; ``converged`` ``(B,)``. Without a template, ``converged`` means finite
            parameters (there is nothing to judge them by). With one, it also asks that the final
            cost is finite and no larger than the starting one, and that the final box is a
            proper quadrilateral (``|det M(p)| > 1e-6``) inside the image, over texture
            (``var I(p) > 1e-6 var T``): a box crushed to a line, gone outside the image or over
            a flat region has nothing to align to.
        """
        if n_iter is not None:
            self.check_count(n_iter, 0, name="n_iter")
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = self(image, p_init, n_iter)
                converged = torch.isfinite(out.history[-1]).all(-1)
                cost = None
                if self.template is not None:
                    cost, var = self._cost(image, out.history)
                    converged &= torch.isfinite(cost[-1]) & (cost[-1] <= cost[0])
                    converged &= self._proper_box(out.p) & (var > 1e-6 * self.template.var())
        finally:
            self.train(was_training)
        return AlignmentResult(history=out.history, cost=cost, converged=converged)

    def _cost(self, image: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
        """``mean (I(p_k) - T)^2`` per iterate ``(n + 1, B)``, and ``var I(p_n)`` ``(B,)``.

        One iterate at a time on the (expanded, not copied) image: memory of one batch.
        """
        image, _ = self.check_inputs(image, history[0])
        costs = []
        for p in history:  # a loop over iterates, not alignments
            sample = self.sampler.sample(image, self.sampler.matrix(p))  # (B, C, h, w)
            costs.append((sample - self.template).pow(2).mean((1, 2, 3)))
        return torch.stack(costs), sample.var((1, 2, 3))

    def _proper_box(self, p: Tensor) -> Tensor:
        """Whether ``W(corners; p)`` is a non-degenerate box inside the image frame, ``(B,)``."""
        p = torch.where(torch.isfinite(p), p, torch.zeros_like(p))
        M = self.sampler.matrix(p)
        corners = self.warp.apply(p, self.warp.corners(like=p))  # (B, 4, 2), canonical
        inside = (corners.abs() <= 1.0 + 1e-6).all(-1).all(-1)
        return inside & (torch.linalg.det(M).abs() > 1e-6)
