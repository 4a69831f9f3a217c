"""Error against the number of warps / iterations for any list of aligners ([LL17] Fig. 7).

[LL17] Fig. 7 runs each trained IC-STN for more recurrences than it was unfolded during training
and shows that the error keeps falling. :func:`error_curves` measures the same thing for *any*
named :class:`lkstn.result.Aligner` (LK, CompositionalLK, ICLK, SDM, c-STN-1, IC-STN-k, ...) on one
fixed test set: every aligner runs ``n_iter`` iterations from the same starts, and the error of
each iterate ``history[k]`` is averaged over the starts, ``k = 0..n_iter`` (``k = 0`` is the
start, identical for all). :func:`plot_curves` draws them on shared axes with
:func:`lkstn.viz.plot_error_curves`, with a dot where a network's trained depth ends.

Torch models (``nn.Module`` aligners such as :class:`~lkstn.learned.stn.ICSTN`) are wrapped in
:class:`TorchAligner`, which takes the NumPy image ``(H, W[, C])`` and starts ``(N, P)`` and
returns a NumPy :class:`AlignmentResult`. LK-family aligners freeze an alignment once its update
is below ``tol``; frozen rows simply repeat, so their curves are still defined at every ``k``.

Errors: the corner error (template pixels, :func:`lkstn.result.corner_error`; non-finite or
singular estimates count as ``inf``) and the parameter L2 error (canonical units). A mean is
``inf`` as soon as one start failed that way; the median and the fraction converged (corner error
< 1 px) are reported beside it.

Glossary: ``K`` iterations/warps, ``N`` test starts, ``P`` warp parameters.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, TypeGuard

import numpy as np
import numpy.typing as npt

from lkstn.experiments.convergence import finite_or_none, safe_corner_error
from lkstn.result import CONVERGED_PX, Aligner, AlignmentResult, check_template_shape
from lkstn.warps import Warp, warp_from_name

if TYPE_CHECKING:  # torch and matplotlib are imported on first use
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from torch import nn

__all__ = ["ErrorCurves", "TorchAligner", "error_curves", "plot_curves"]

_BLOCK = 500  # starts per call of a torch aligner: bounded memory for the autograd-free pass


def _is_torch_module(obj: object) -> TypeGuard[nn.Module]:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


class TorchAligner:
    """A NumPy face for a torch aligner: ``align(image (H, W[, C]), p_init (N, P), n_iter)``.

    Parameters
    ----------
    model : nn.Module
        Anything with ``warp``, ``template_shape`` and ``align(image (B, C, H, W), p_init (B, P),
        n_iter)`` (STN, CSTN, ICSTN).
    """

    def __init__(self, model: nn.Module) -> None:
        if not (hasattr(model, "align") and hasattr(model, "warp")):
            raise ValueError(f"model must be a torch aligner, got {type(model).__name__}")
        self.model = model
        self.warp: Warp = model.warp
        self.template_shape: tuple[int, int] = tuple(model.template_shape)

    def align(
        self, image: npt.ArrayLike, p_init: npt.ArrayLike, n_iter: int | None = None
    ) -> AlignmentResult:
        """Align ``image`` ``(H, W)`` or ``(H, W, C)`` from ``p_init`` ``(N, P)`` or ``(P,)``."""
        import torch

        first = next(self.model.parameters(), None)
        dtype = torch.get_default_dtype() if first is None else first.dtype
        device = None if first is None else first.device
        image = np.asarray(image, dtype=np.float64)
        if image.ndim not in (2, 3):
            raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
        chw = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)  # (C, H, W)
        img = torch.as_tensor(chw, dtype=dtype, device=device)[None]  # (1, C, H, W)
        p = np.asarray(p_init, dtype=np.float64)
        single = p.ndim == 1
        p = np.atleast_2d(p)  # (N, P)
        results = [
            self.model.align(
                img, torch.as_tensor(p[s : s + _BLOCK], dtype=dtype, device=device), n_iter
            )
            for s in range(0, len(p), _BLOCK)  # blocks of starts, each one vectorised
        ]

        def cat(xs, axis):
            return np.concatenate([x.detach().cpu().double().numpy() for x in xs], axis)

        history = cat([r.history for r in results], 1)  # (K + 1, N, P)
        cost = None if results[0].cost is None else cat([r.cost for r in results], 1)
        converged = cat([r.converged for r in results], 0).astype(bool)
        if single:
            history, converged = history[:, 0], converged[0]
            cost = None if cost is None else cost[:, 0]
        return AlignmentResult(history=history, cost=cost, converged=converged)


@dataclass(frozen=True)
class ErrorCurves:
    """Per-iterate statistics over one test set; ``[name][k]`` is after ``k`` iterations.

    Attributes
    ----------
    n_iter : int
    n_trials : int
    mean_corner_px, median_corner_px : dict of list of float, each ``n_iter + 1`` long
    mean_param_l2 : dict of list of float (canonical units)
    fraction_converged : dict of list of float (corner error < 1 px)
    seconds : dict of float
        Wall time of each aligner's ``align`` call(s).
    """

    n_iter: int
    n_trials: int
    mean_corner_px: dict[str, list[float]]
    median_corner_px: dict[str, list[float]]
    mean_param_l2: dict[str, list[float]]
    fraction_converged: dict[str, list[float]]
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict; non-finite floats become ``None``."""
        return finite_or_none(asdict(self))


def error_curves(
    aligners: Mapping[str, Aligner | nn.Module],
    image: np.ndarray,
    p_true: npt.ArrayLike,
    p_init: npt.ArrayLike,
    n_iter: int,
    *,
    template_shape: tuple[int, int] | None = None,
    warp: Warp | str | None = None,
) -> ErrorCurves:
    """Mean error after ``k = 0..n_iter`` iterations of every aligner from the same starts.

    Parameters
    ----------
    aligners : mapping name -> Aligner or torch aligner
        ``align(image, p_init, n_iter)`` must return ``n_iter + 1`` history rows.
    image : ndarray (H, W[, C])
    p_true : array (P,)
    p_init : array (N, P)
        The fixed test starts (e.g. :func:`lkstn.experiments.convergence.fixed_starts`).
    n_iter : int
        ``K``.
    template_shape, warp : optional
        Default: those of the first aligner.

    Returns
    -------
    ErrorCurves
    """
    if not aligners:
        raise ValueError("aligners must name at least one aligner")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int | np.integer) or n_iter < 0:
        raise ValueError(f"n_iter must be an integer >= 0, got {n_iter!r}")
    wrapped = {k: TorchAligner(a) if _is_torch_module(a) else a for k, a in aligners.items()}
    for name, a in wrapped.items():
        if not hasattr(a, "align"):
            raise ValueError(f"aligners[{name!r}] has no align(image, p_init, n_iter) method")
    first = next(iter(wrapped.values()))
    warp = warp_from_name(warp if warp is not None else first.warp)
    template_shape = tuple(template_shape if template_shape is not None else first.template_shape)
    check_template_shape(template_shape)
    p_true = warp.check_params(np.asarray(p_true, dtype=np.float64), "p_true")
    p_init = warp.check_params(np.asarray(p_init, dtype=np.float64), "p_init")
    if p_init.ndim != 2 or p_true.ndim != 1:
        raise ValueError(
            f"p_init must be (N, P) and p_true (P,), got {p_init.shape}, {p_true.shape}"
        )
    stats: dict[str, dict[str, list[float]]] = {}
    seconds = {}
    for name, aligner in wrapped.items():
        start = time.perf_counter()
        history = np.asarray(aligner.align(image, p_init, int(n_iter)).history, dtype=np.float64)
        seconds[name] = time.perf_counter() - start
        if history.shape != (n_iter + 1, *p_init.shape):
            raise ValueError(
                f"aligners[{name!r}] returned a history of shape {history.shape}, expected "
                f"{(n_iter + 1, *p_init.shape)} (a pyramid runs n_iter per level: use pyramid=1)"
            )
        corner = safe_corner_error(warp, history, p_true, template_shape)  # (K + 1, N)
        with np.errstate(invalid="ignore", over="ignore"):
            param = np.sqrt(((history - p_true) ** 2).sum(-1))  # (K + 1, N)
        param = np.where(np.isfinite(param), param, np.inf)
        stats[name] = {
            "mean": corner.mean(1).tolist(),
            "median": np.median(corner, 1).tolist(),
            "param": param.mean(1).tolist(),
            "conv": (corner < CONVERGED_PX).mean(1).tolist(),
        }
    return ErrorCurves(
        n_iter=int(n_iter),
        n_trials=int(len(p_init)),
        mean_corner_px={k: v["mean"] for k, v in stats.items()},
        median_corner_px={k: v["median"] for k, v in stats.items()},
        mean_param_l2={k: v["param"] for k, v in stats.items()},
        fraction_converged={k: v["conv"] for k, v in stats.items()},
        seconds=seconds,
    )


_METRICS = {
    "mean_corner_px": "mean corner error (template px)",
    "median_corner_px": "median corner error (template px)",
    "mean_param_l2": "mean parameter L2 error (canonical)",
    "fraction_converged": "fraction converged (< 1 px)",
}


def plot_curves(
    curves: ErrorCurves,
    *,
    metric: str = "mean_corner_px",
    trained_depth: Mapping[str, int] | None = None,
    names: list[str] | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """[LL17] Fig. 7 for the aligners in ``curves`` (or ``names``): one metric on shared axes."""
    from lkstn.viz import plot_error_curves

    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    table = getattr(curves, metric)
    chosen = {n: table[n] for n in (names if names is not None else table)}
    return plot_error_curves(
        chosen,
        trained_depth=trained_depth,
        ylabel=_METRICS[metric],
        title=title,
        log=metric != "fraction_converged",
        ax=ax,
    )
