"""Baker & Matthews style convergence evaluation for any aligner ([BM04] Sec. 4.1).

For each perturbation scale ``sigma`` (template pixels) a FIXED set of ``n_trials`` starts is
drawn with the paper's noise model (:func:`lkstn.perturb.perturb`, seeded by ``(seed, sigma)``,
so adding a sigma or a method never changes the other trials). Every method aligns the same
starts; an alignment has *converged* when its final corner error is below
``CONVERGED_PX`` = 1 template pixel (:func:`lkstn.result.corner_error`). Reported per sigma and
method:

* ``percent_converged``: the frequency of convergence;
* ``mean_error_per_iteration``: mean corner error of each iterate (rate of convergence), over
  the trials that ALL methods converged on, so that the curves compare like with like;
* ``median_final_error``: median final corner error over all trials;
* ``seconds``: wall time of the method's call(s) for that sigma.

A method is an :class:`lkstn.result.Aligner` (its ``align(image, p_init)`` gets all starts at
once) or a plain callable ``f(image, p_init) -> AlignmentResult`` or ``-> p_final``, e.g. an
adapter around OpenCV's ``findTransformECC`` (see ``benchmarks/classical_vs_ecc.py``). A method
that returns final parameters only gets a history of two rows, ``[p_init, p_final]``.
Non-finite estimates count as infinitely wrong.

Glossary: ``sigma`` perturbation scale in template pixels; ``trials`` the starts of one sigma;
``err`` corner error in template pixels.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from lkstn.perturb import perturb
from lkstn.result import CONVERGED_PX, Aligner, AlignmentResult, corner_error
from lkstn.warps import Warp, warp_from_name

__all__ = [
    "ConvergenceReport",
    "SigmaResult",
    "evaluate",
    "finite_or_none",
    "fixed_starts",
    "safe_corner_error",
]


@dataclass(frozen=True)
class SigmaResult:
    """Everything measured at one perturbation scale; see the module docstring."""

    sigma: float
    n_trials: int
    n_all_converged: int
    percent_converged: dict[str, float]
    median_final_error: dict[str, float]
    mean_error_per_iteration: dict[str, list[float]]
    seconds: dict[str, float]


@dataclass(frozen=True)
class ConvergenceReport:
    """The evaluation of several methods on one problem (JSON-serialisable via ``to_dict``)."""

    warp: str
    template_shape: tuple[int, int]
    n_trials: int
    seed: int
    methods: list[str]
    results: list[SigmaResult]

    def to_dict(self) -> dict[str, object]:
        """Plain dict of lists, floats and strings; non-finite floats become ``None``."""
        return finite_or_none(asdict(self))

    def to_json(self, **kwargs: Any) -> str:  # Any: json.dumps's options, passed on
        """``json.dumps(self.to_dict())``."""
        return json.dumps(self.to_dict(), **kwargs)

    def table(self) -> str:
        """A plain-text table: percent converged (median final error) per sigma and method."""
        head = f"{'sigma':>6} " + " ".join(f"{m:>22}" for m in self.methods)
        lines = [head, "-" * len(head)]
        for r in self.results:
            cells = [
                f"{r.percent_converged[m]:6.1f}% ({r.median_final_error[m]:8.2e} px)"
                for m in self.methods
            ]
            lines.append(f"{r.sigma:6.2f} " + " ".join(f"{c:>22}" for c in cells))
        return "\n".join(lines)


def fixed_starts(
    warp: Warp,
    p_true: npt.ArrayLike,
    sigma: float,
    template_shape: tuple[int, int],
    n_trials: int,
    seed: int,
) -> np.ndarray:
    """The ``(n_trials, P)`` starts of one sigma, reproducible from ``(seed, sigma)`` alone."""
    rng = np.random.default_rng([int(seed), int(round(float(sigma) * 1e6))])
    return perturb(
        warp, np.asarray(p_true, dtype=np.float64), sigma, template_shape, rng, n=n_trials
    )


def safe_corner_error(
    warp: Warp, p: np.ndarray, p_true: np.ndarray, template_shape: tuple[int, int]
) -> np.ndarray:
    """:func:`corner_error` with ``inf`` for non-finite or singular estimates, shape ``(...)``."""
    p = np.asarray(p, dtype=np.float64)
    err = np.full(p.shape[:-1], np.inf)
    ok = np.isfinite(p).all(-1)
    if ok.any():
        with np.errstate(all="ignore"):
            e = corner_error(warp, p[ok], p_true, template_shape)
        err[ok] = np.where(np.isfinite(e), e, np.inf)
    return err


def _run(
    method: Aligner | Callable[[np.ndarray, np.ndarray], AlignmentResult | npt.ArrayLike],
    image: np.ndarray,
    p_init: np.ndarray,
) -> np.ndarray:
    """History ``(rows, n, P)`` of one method on all starts."""
    out = method.align(image, p_init) if hasattr(method, "align") else method(image, p_init)
    if isinstance(out, AlignmentResult):
        return np.asarray(out.history, dtype=np.float64)
    p = np.asarray(out, dtype=np.float64)
    if p.shape != p_init.shape:
        raise ValueError(f"method returned shape {p.shape}, expected {p_init.shape}")
    return np.stack([p_init, p])


def evaluate(
    methods: Mapping[
        str, Aligner | Callable[[np.ndarray, np.ndarray], AlignmentResult | npt.ArrayLike]
    ],
    image: np.ndarray,
    p_true: npt.ArrayLike,
    template_shape: tuple[int, int],
    sigmas: Sequence[float],
    n_trials: int,
    *,
    seed: int = 0,
    warp: Warp | str | None = None,
) -> ConvergenceReport:
    """Run every method on the same perturbed starts for each sigma.

    Parameters
    ----------
    methods : mapping name -> Aligner or callable
        Callables are called as ``f(image, p_init)`` with ``p_init`` ``(n_trials, P)``.
    image : ndarray (H, W[, C])
        The image all methods align to.
    p_true : array (P,)
        The truth, in the convention of :mod:`lkstn.warps`.
    template_shape : (h, w)
        Frame of the corner error (template pixels) and of ``sigma``.
    sigmas : sequence of float
        Perturbation scales in template pixels.
    n_trials : int
    seed : int
    warp : Warp or str, optional
        The family of ``p_true``; by default the ``warp`` of the first method that has one.

    Returns
    -------
    ConvergenceReport
    """
    if not methods:
        raise ValueError("methods must name at least one aligner")
    if warp is None:
        warps = [m.warp for m in methods.values() if hasattr(m, "warp")]
        if not warps:
            raise ValueError("warp must be given when no method has a .warp attribute")
        warp = warps[0]
    warp = warp_from_name(warp)
    if int(n_trials) < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials!r}")
    p_true = warp.check_params(np.asarray(p_true, dtype=np.float64), "p_true")
    results = []
    for sigma in sigmas:
        p_init = fixed_starts(warp, p_true, sigma, template_shape, int(n_trials), seed)
        errors, seconds = {}, {}
        for name, method in methods.items():
            start = time.perf_counter()
            history = _run(method, image, p_init)  # (rows, n, P)
            seconds[name] = time.perf_counter() - start
            errors[name] = safe_corner_error(warp, history, p_true, template_shape)  # (rows, n)
        converged = {m: e[-1] < CONVERGED_PX for m, e in errors.items()}
        everyone = np.logical_and.reduce(list(converged.values()))
        results.append(
            SigmaResult(
                sigma=float(sigma),
                n_trials=int(n_trials),
                n_all_converged=int(everyone.sum()),
                percent_converged={m: 100.0 * float(c.mean()) for m, c in converged.items()},
                median_final_error={m: float(np.median(e[-1])) for m, e in errors.items()},
                mean_error_per_iteration={
                    m: (e[:, everyone].mean(1).tolist() if everyone.any() else [])
                    for m, e in errors.items()
                },
                seconds=seconds,
            )
        )
    return ConvergenceReport(
        warp=warp.name,
        template_shape=(int(template_shape[0]), int(template_shape[1])),
        n_trials=int(n_trials),
        seed=int(seed),
        methods=list(methods),
        results=results,
    )


@overload
def finite_or_none(x: dict[Any, Any]) -> dict[str, object]: ...
@overload
def finite_or_none(x: object) -> object: ...


def finite_or_none(x: object) -> object:
    """``x`` ready for JSON: non-finite floats as ``None``, NumPy scalars as Python numbers.

    Dicts and lists are converted at every depth; anything else passes through unchanged.
    """
    if isinstance(x, dict):
        return {str(k): finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite_or_none(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
