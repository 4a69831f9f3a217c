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
- :class:`ICSTN` runs the same recurrence with one predictor shared by every stage, applied
  recurrently ([LL17] Sec. 4.2); it may run more recurrences than it was trained with ([LL17]
  Fig. 7). The two are siblings: :class:`CompositionalTransformer` holds the recurrence and the
  update rule they share, and an IC-STN is not a c-STN (``isinstance(icstn, CSTN)`` is False).

Update rule (``update=``, recorded in ``config``): ``"eq10"`` (default) is [LL17] eq. (10),
``M(p_out) = M(dp) M(p_in)``, i.e. ``p <- compose(dp, p)``, the authors' code; ``"inverse"`` is the
explicit inverse-compositional update of IC-LK, ``p <- compose(p, inverse(dp))`` ([BM04]), with
which :meth:`ICSTN.from_iclk` reproduces an IC-LK trajectory exactly. [LL17] Sec. 4.2 reports a
negligible difference between the two after training.

Every module returns a :class:`~lkstn.learned.transformer.Transformed` ``(image, p, history)``
from ``forward`` and satisfies the :class:`lkstn.result.Aligner` contract through ``align`` (eval
mode, no gradients; :class:`~lkstn.learned.transformer.SpatialTransformer` holds what the three
share). :class:`~lkstn.learned.classify.AlignThenClassify` puts a classifier after any of them.

Glossary: ``I`` the input image ``(B, C, H, W)``; ``I(p)`` it sampled at ``W(x; p)`` over the
template frame ``(h, w)``; ``p`` warp parameters ``(B, P)``; ``dp`` a predicted update; ``M`` warp
matrix ``(B, 3, 3)``; ``f`` a geometric predictor ``(B, C, h, w) -> (B, P)``.

References: [LL17] Lin & Lucey, CVPR 2017. [BM04] Baker & Matthews, IJCV 2004.
M. Jaderberg et al., Spatial Transformer Networks, NeurIPS 2015.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lkstn._backend import ArrayLike
from lkstn.learned.classify import AlignThenClassify as AlignThenClassify
from lkstn.learned.inputs import predict
from lkstn.learned.transformer import UPDATES, SpatialTransformer, Update
from lkstn.learned.transformer import Transformed as Transformed
from lkstn.warps import Warp

if TYPE_CHECKING:
    from lkstn.classical.iclk import ICLK

# AlignThenClassify, Transformed and Update, imported here, keep their former import path
__all__ = ["STN", "CompositionalTransformer", "CSTN", "ICSTN"]


class STN(SpatialTransformer):
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
        n = self.check_count(n_warps, len(self.predictors), len(self.predictors))
        image, p = self.check_inputs(image, p_init)
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


class CompositionalTransformer(SpatialTransformer):
    """What :class:`CSTN` and :class:`ICSTN` share: warp parameters pass between stages.

    The recurrence ([LL17] Sec. 4.1, Fig. 4): for each stage's predictor ``f_k``,
    ``dp = f_k(I(p))`` and ``p <- compose(dp, p)`` ([LL17] eq. (10)), or
    ``p <- compose(p, inverse(dp))`` ([BM04]) with ``update="inverse"``; the output is ``I(p)``,
    always sampled from the original image. :meth:`recur` runs it for the predictors a subclass
    gives: ``K`` distinct ones (:class:`CSTN`) or one, ``K`` times (:class:`ICSTN`).

    Parameters
    ----------
    warp : Warp or str
    template_shape : (h, w)
    update : "eq10" or "inverse"
    template : Tensor (C, h, w), optional
        Only for the ``cost`` of :meth:`align`.

    Examples
    --------
    >>> issubclass(CSTN, CompositionalTransformer), issubclass(ICSTN, CompositionalTransformer)
    (True, True)
    >>> issubclass(ICSTN, CSTN)  # siblings: one predictor applied K times is not K predictors
    False
    """

    def __init__(
        self,
        warp: Warp | str,
        template_shape: tuple[int, int],
        update: Update,
        template: ArrayLike | None,
    ) -> None:
        super().__init__(warp, template_shape, template)
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        self.update = update

    @property
    def n_warps(self) -> int:
        """Stages run by ``forward`` by default."""
        raise NotImplementedError

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "n_warps": self.n_warps, "update": self.update}

    def recur(
        self, image: Tensor, p_init: ArrayLike | None, stages: Sequence[nn.Module]
    ) -> Transformed:
        """One stage per predictor of ``stages`` on ``image`` ``(B, C, H, W)`` from ``p_init``."""
        image, p = self.check_inputs(image, p_init)
        S = self.sampler
        M = S.matrix(p)
        history = [p]
        for k, f in enumerate(stages):
            warped = S.sample(image, M)  # I(p)
            dp = predict(f, warped, self.warp, first=k == 0)  # dp = f_k(I(p))
            if self.update == "eq10":
                M = S.compose(S.matrix(dp), M)  # M(p) <- M(dp) M(p), [LL17] eq. (10)
            else:
                M = S.compose(M, torch.linalg.inv(S.matrix(dp)))  # p <- p o dp^-1, [BM04]
            history.append(S.params(M))
        return Transformed(S.sample(image, M), history[-1], torch.stack(history))


class CSTN(CompositionalTransformer):
    """Compositional STN ([LL17] Sec. 4.1, Figs. 3-4): ``K`` predictors, one per stage.

    For ``k = 1..K``: ``dp = f_k(I(p))``, ``p <- compose(dp, p)`` ([LL17] eq. (10)), each stage
    with its *own* ``f_k``; the output is ``I(p)``, always sampled from the original image.

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
        super().__init__(warp, template_shape, update, template)
        if isinstance(predictors, nn.Module) and not isinstance(predictors, nn.ModuleList):
            raise ValueError("predictors must be a sequence of modules (one per stage)")
        self.predictors = nn.ModuleList(list(predictors))

    @property
    def n_warps(self) -> int:
        """Number of stages."""
        return len(self.predictors)

    def forward(
        self, image: Tensor, p_init: ArrayLike | None = None, n_warps: int | None = None
    ) -> Transformed:
        """Run ``n_warps`` stages on ``image`` ``(B, C, H, W)`` from ``p_init`` ``(B, P)``."""
        n = self.check_count(n_warps, self.n_warps, self.n_warps)
        return self.recur(image, p_init, self.predictors[:n])  # f_1, ..., f_n


class ICSTN(CompositionalTransformer):
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
        super().__init__(warp, template_shape, update, template)
        if not isinstance(predictor, nn.Module):
            raise ValueError(f"predictor must be an nn.Module, got {type(predictor).__name__}")
        self.predictor = predictor
        self._n_warps = self.check_count(n_warps, 0)

    @property
    def n_warps(self) -> int:
        """Recurrences run by default."""
        return self._n_warps

    def forward(
        self, image: Tensor, p_init: ArrayLike | None = None, n_warps: int | None = None
    ) -> Transformed:
        """Run ``n_warps`` recurrences (default ``self.n_warps``) from ``p_init`` ``(B, P)``."""
        n = self.check_count(n_warps, self.n_warps)
        return self.recur(image, p_init, [self.predictor] * n)  # f, ..., f: one f, n times

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
