"""Spatial transformers: STN [Jaderberg et al.], c-STN and IC-STN ([LL17] Sec. 3-4), in PyTorch.

All three take the *original* image ``I`` and a start ``p_init`` and differ in what travels from
one warp to the next ([LL17] Figs. 1, 3-5):

- :class:`STN` passes *images*: its input is the crop ``I(p_init)`` and each module resamples the
  previous module's output, ``I_out(0) = I_in(dp)`` with ``dp = f(I_in(0))`` ([LL17] eq. (8)).
  Whatever left the frame is gone: the boundary effect of [LL17] Fig. 2. Its implicit composed
  warp, ``p <- compose(p, dp)`` (each ``dp`` acts in the frame of the previous output), is still
  reported in ``history`` so that corner errors can be measured.
- :class:`CSTN` passes *warp parameters*: each stage predicts ``dp`` from ``I(p)`` and composes,
  and every stage resamples the original image ([LL17] eqs. (9)-(10), Fig. 4).
- :class:`ICSTN` is a c-STN whose stages share one predictor, applied recurrently ([LL17]
  Sec. 4.2); it may run more recurrences than it was trained with ([LL17] Fig. 7).

Update rule (``update=``, recorded in ``config``): ``"eq10"`` (default) is [LL17] eq. (10),
``M(p_out) = M(dp) M(p_in)``, i.e. ``p <- compose(dp, p)``, the authors' code; ``"inverse"`` is the
explicit inverse-compositional update of IC-LK, ``p <- compose(p, inverse(dp))`` ([BM04]), with
which :meth:`ICSTN.from_iclk` reproduces an IC-LK trajectory exactly. [LL17] Sec. 4.2 reports a
negligible difference between the two after training.

Every module returns a :class:`Transformed` ``(image, p, history)`` from ``forward`` and satisfies
the :class:`lkstn.result.Aligner` contract through ``align`` (eval mode, no gradients). With no
template, ``cost`` is ``None`` and ``converged`` means "finite parameters"; constructed with a
``template``, ``cost`` is the mean squared residual ``mean (I(p) - T)^2`` per iterate and
``converged`` also asks for a final cost no larger than the starting one and a final box that is
non-degenerate, inside the image and over texture (``_Transformer.align``).

Glossary: ``I`` the input image ``(B, C, H, W)``; ``I(p)`` it sampled at ``W(x; p)`` over the
template frame ``(h, w)``; ``p`` warp parameters ``(B, P)``; ``dp`` a predicted update; ``M`` warp
matrix ``(B, 3, 3)``; ``f`` a geometric predictor ``(B, C, h, w) -> (B, P)``.

References: [LL17] Lin & Lucey, CVPR 2017. [BM04] Baker & Matthews, IJCV 2004.
M. Jaderberg et al., Spatial Transformer Networks, NeurIPS 2015.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from lkstn._backend import ArrayLike
from lkstn.learned._torch_warp import WarpSampler
from lkstn.learned.inputs import check_image, predict
from lkstn.result import AlignmentResult
from lkstn.warps import Warp, warp_from_name

if TYPE_CHECKING:
    from lkstn.classical.iclk import ICLK

__all__ = ["STN", "CSTN", "ICSTN", "AlignThenClassify", "Transformed", "Update"]

Update = Literal["eq10", "inverse"]
_UPDATES = ("eq10", "inverse")


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


class _Transformer(nn.Module):
    """Shared plumbing: warp, template frame, sampler, input checks and :meth:`align`."""

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

    def _start(self, image: Tensor, p_init: ArrayLike | None) -> tuple[Tensor, Tensor]:
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

    def _n(
        self, n: int | None, default: int, maximum: int | None = None, name: str = "n_warps"
    ) -> int:
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
            self._n(n_iter, 0, name="n_iter")
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
        image, _ = self._start(image, history[0])
        costs = []
        for p in history:  # a loop over iterates, not alignments
            sample = self.sampler.sample(image, self.sampler.matrix(p))  # (B, C, h, w)
            costs.append((sample - self.template).pow(2).mean((1, 2, 3)))
        return torch.stack(costs), sample.var((1, 2, 3))

    def _proper_box(self, p: Tensor) -> Tensor:
        """Whether ``W(corners; p)`` is a non-degenerate box inside the image frame, ``(B,)``."""
        p = torch.where(torch.isfinite(p), p, torch.zeros_like(p))
        M = self.sampler.matrix(p)
        corners = self.warp._apply(p, self.warp.corners(like=p))  # (B, 4, 2), canonical
        inside = (corners.abs() <= 1.0 + 1e-6).all(-1).all(-1)
        return inside & (torch.linalg.det(M).abs() > 1e-6)


class STN(_Transformer):
    """Spatial Transformer Network(s) of Jaderberg et al.: each module resamples the last output.

    ``I_0 = I(p_init)``; ``I_k(0) = I_{k-1}(dp_k)`` with ``dp_k = f_k(I_{k-1})`` ([LL17] eq. (8)).
    The implicit warp is ``p_k = compose(p_{k-1}, dp_k)``; it is exact only while no module sampled
    outside its input, which is the boundary effect of [LL17] Sec. 4.1.

    Parameters
    ----------
    predictor : nn.Module or sequence of nn.Module
        ``(B, C, h, w) -> (B, P)``; a sequence is a cascade of STNs.
    warp : Warp or str
        Default ``"homography"``.
    template_shape : (h, w)
        Frame of every output (and of the first crop ``I(p_init)``).
    template : Tensor (C, h, w), optional
        Only for the ``cost`` of :meth:`align`.

    Examples
    --------
    >>> import torch
    >>> from lkstn.learned.predictors import mnist_predictor
    >>> stn = STN(mnist_predictor("a"), warp="homography", template_shape=(28, 28))
    >>> out = stn(torch.rand(2, 1, 28, 28), torch.zeros(2, 8))
    >>> out.image.shape, out.history.shape  # zero last layer: the identity warp
    (torch.Size([2, 1, 28, 28]), torch.Size([2, 2, 8]))
    """

    def __init__(
        self,
        predictor: nn.Module | Sequence[nn.Module],
        *,
        warp: Warp | str = "homography",
        template_shape: tuple[int, int],
        template: ArrayLike | None = None,
    ) -> None:
        super().__init__(warp, template_shape, template)
        mods = [predictor] if isinstance(predictor, nn.Module) else list(predictor)
        self.predictors = nn.ModuleList(mods)

    def forward(
        self, image: Tensor, p_init: ArrayLike | None = None, n_warps: int | None = None
    ) -> Transformed:
        """Run ``n_warps`` (default: all) modules on ``image`` ``(B, C, H, W)`` from ``p_init``."""
        n = self._n(n_warps, len(self.predictors), len(self.predictors))
        image, p = self._start(image, p_init)
        S = self.sampler
        M = S.matrix(p)
        warped = S.sample(image, M)  # the STN's input: the crop I(p_init)
        history = [p]
        for k, f in enumerate(self.predictors[:n]):
            dM = S.matrix(predict(f, warped, self.warp, first=k == 0))  # dp = f(I_in(0))
            warped = S.sample(warped, dM)  # I_out(0) = I_in(dp), [LL17] eq. (8)
            M = S.compose(M, dM)  # implicit warp: compose(p, dp)
            history.append(S.params(M))
        return Transformed(warped, history[-1], torch.stack(history))


class CSTN(_Transformer):
    """Compositional STN ([LL17] Sec. 4.1, Figs. 3-4): warp parameters pass between stages.

    For ``k = 1..K``: ``dp = f_k(I(p))``, ``p <- compose(dp, p)`` ([LL17] eq. (10)); the output
    is ``I(p)``, always sampled from the original image.

    Parameters
    ----------
    predictors : sequence of nn.Module
        One predictor per stage, ``(B, C, h, w) -> (B, P)``. An empty sequence gives ``I(p_init)``
        (the input of a plain CNN baseline).
    warp : Warp or str
        Default ``"homography"``.
    template_shape : (h, w)
    update : "eq10" or "inverse"
        ``p <- compose(dp, p)`` ([LL17] eq. (10)) or ``p <- compose(p, inverse(dp))`` ([BM04]).
    template : Tensor (C, h, w), optional
        Only for the ``cost`` of :meth:`align`.

    Examples
    --------
    >>> import torch
    >>> from lkstn.learned.predictors import mnist_predictor
    >>> cstn = CSTN([mnist_predictor("a2"), mnist_predictor("a2")], template_shape=(28, 28))
    >>> result = cstn.align(torch.rand(3, 1, 28, 28), torch.zeros(3, 8))
    >>> tuple(result.history.shape), bool(result.converged.all())
    ((3, 3, 8), True)
    """

    def __init__(
        self,
        predictors: Sequence[nn.Module],
        *,
        warp: Warp | str = "homography",
        template_shape: tuple[int, int],
        update: Update = "eq10",
        template: ArrayLike | None = None,
    ) -> None:
        super().__init__(warp, template_shape, template)
        if isinstance(predictors, nn.Module) and not isinstance(predictors, nn.ModuleList):
            raise ValueError("predictors must be a sequence of modules (one per stage)")
        self.predictors = nn.ModuleList(list(predictors))
        if update not in _UPDATES:
            raise ValueError(f"update must be one of {_UPDATES}, got {update!r}")
        self.update = update

    @property
    def n_warps(self) -> int:
        """Number of stages."""
        return len(self.predictors)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "n_warps": self.n_warps, "update": self.update}

    def _predictor(self, k: int) -> nn.Module:
        return self.predictors[k]

    def forward(
        self, image: Tensor, p_init: ArrayLike | None = None, n_warps: int | None = None
    ) -> Transformed:
        """Run ``n_warps`` stages on ``image`` ``(B, C, H, W)`` from ``p_init`` ``(B, P)``."""
        n = self._n(n_warps, len(self.predictors), len(self.predictors))
        return self._run(image, p_init, n)

    def _run(self, image: Tensor, p_init: ArrayLike | None, n: int) -> Transformed:
        image, p = self._start(image, p_init)
        S = self.sampler
        M = S.matrix(p)
        history = [p]
        for k in range(n):
            warped = S.sample(image, M)  # I(p)
            dp = predict(self._predictor(k), warped, self.warp, first=k == 0)  # dp = f(I(p))
            if self.update == "eq10":
                M = S.compose(S.matrix(dp), M)  # M(p) <- M(dp) M(p), [LL17] eq. (10)
            else:
                M = S.compose(M, torch.linalg.inv(S.matrix(dp)))  # p <- p o dp^-1, [BM04]
            history.append(S.params(M))
        return Transformed(S.sample(image, M), history[-1], torch.stack(history))


class ICSTN(CSTN):
    """Inverse compositional STN ([LL17] Sec. 4.2, Fig. 5): one predictor, applied recurrently.

    For ``k = 1..n_warps``: ``dp = f(I(p))``, ``p <- compose(dp, p)`` ([LL17] eq. (10)) with the
    *same* ``f``; the output is ``I(p)``, sampled from the original image.

    Parameters
    ----------
    predictor : nn.Module
        ``(B, C, h, w) -> (B, P)``, shared by every recurrence.
    warp : Warp or str
        Default ``"homography"``.
    n_warps : int
        Recurrences run by ``forward`` (and :meth:`align`) by default; both accept more.
    template_shape : (h, w)
    update : "eq10" or "inverse"
        As in :class:`CSTN`.
    template : Tensor (C, h, w), optional
        Only for the ``cost`` of :meth:`align`.

    Examples
    --------
    >>> import torch
    >>> from lkstn.learned.predictors import mnist_predictor
    >>> model = ICSTN(mnist_predictor("a"), warp="homography", n_warps=4, template_shape=(28, 28))
    >>> out = model(torch.rand(2, 1, 28, 28), torch.zeros(2, 8))
    >>> out.image.shape, out.history.shape
    (torch.Size([2, 1, 28, 28]), torch.Size([5, 2, 8]))
    """

    def __init__(
        self,
        predictor: nn.Module,
        *,
        warp: Warp | str = "homography",
        n_warps: int = 4,
        template_shape: tuple[int, int],
        update: Update = "eq10",
        template: ArrayLike | None = None,
    ) -> None:
        super().__init__(
            [], warp=warp, template_shape=template_shape, update=update, template=template
        )
        if not isinstance(predictor, nn.Module):
            raise ValueError(f"predictor must be an nn.Module, got {type(predictor).__name__}")
        self.predictor = predictor
        self._n_warps = self._n(n_warps, 0)

    @property
    def n_warps(self) -> int:
        return self._n_warps

    def _predictor(self, k: int) -> nn.Module:
        return self.predictor

    def forward(
        self, image: Tensor, p_init: ArrayLike | None = None, n_warps: int | None = None
    ) -> Transformed:
        """Run ``n_warps`` recurrences (default ``self.n_warps``) from ``p_init`` ``(B, P)``."""
        return self._run(image, p_init, self._n(n_warps, self.n_warps))

    @classmethod
    def from_iclk(cls, iclk: ICLK) -> ICSTN:
        """A one-linear-layer IC-STN that runs IC-LK's iterations ([LL17] eqs. (5)-(6)).

        The predictor is ``dp = R I(p).ravel() + b`` with ``(R, b) = iclk.regressor()``, acting on
        the warped image flattened in NumPy's ``(h, w, C)`` order; the update is ``"inverse"``
        (IC-LK's ``p <- compose(p, inverse(dp))``), ``n_warps = iclk.n_iter``, dtype float64.
        IC-LK freezes an alignment once ``||dp|| <= tol``; the network never stops, so the two
        trajectories coincide for ``tol=0`` (or until IC-LK's first freeze).
        """
        if getattr(iclk, "pyramid", 1) != 1:
            raise ValueError(f"iclk must have pyramid=1 (one regressor), got {iclk.pyramid}")
        R, b = iclk.regressor()
        R = torch.as_tensor(R, dtype=torch.float64)  # (P, h*w*C)
        linear = nn.Linear(R.shape[1], R.shape[0], dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(R)
            linear.bias.copy_(torch.as_tensor(b, dtype=torch.float64))
        model = cls(
            nn.Sequential(_RavelHWC(), linear),
            warp=iclk.warp,
            n_warps=iclk.n_iter,
            template_shape=tuple(iclk.template_shape),
            update="inverse",
        )
        return model.to(torch.float64)


class _RavelHWC(nn.Module):
    """``(B, C, h, w) -> (B, h*w*C)`` in NumPy's row-major ``(h, w, C)`` order."""

    def forward(self, image: Tensor) -> Tensor:
        return image.permute(0, 2, 3, 1).reshape(image.shape[0], -1)


class AlignThenClassify(nn.Module):
    """A spatial transformer followed by a classifier that sees its final warped image.

    Parameters
    ----------
    aligner : STN, CSTN or ICSTN
        Any module whose ``forward(image, p_init)`` returns a :class:`Transformed`.
    classifier : nn.Module
        ``(B, C, h, w) -> (B, n_classes)``.

    ``forward(image, p_init)`` returns the class scores ``(B, n_classes)``. The training loop
    (:func:`lkstn.learned.train.train`) gives ``aligner`` and ``classifier`` separate learning
    rates ([LL17] Sec. 5.2).

    Examples
    --------
    >>> import torch
    >>> from lkstn import ICSTN
    >>> from lkstn.learned.predictors import mnist_classifier, mnist_predictor
    >>> from lkstn.learned.stn import AlignThenClassify
    >>> icstn = ICSTN(mnist_predictor("a"), warp="homography", n_warps=4, template_shape=(28, 28))
    >>> model = AlignThenClassify(icstn, mnist_classifier())
    >>> model(torch.rand(2, 1, 28, 28)).shape  # class scores
    torch.Size([2, 10])
    """

    def __init__(self, aligner: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.aligner = aligner
        self.classifier = classifier

    @property
    def config(self) -> dict[str, Any]:
        inner = getattr(self.aligner, "config", {"model": type(self.aligner).__name__})
        return {"model": "AlignThenClassify", "aligner": inner}

    def forward(self, image: Tensor, p_init: ArrayLike | None = None) -> Tensor:
        """Class scores ``(B, n_classes)`` of ``image`` ``(B, C, H, W)`` aligned from ``p_init``."""
        return self.classifier(self.aligner(image, p_init).image)
