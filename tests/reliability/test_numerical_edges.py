"""Numerical edge cases for every aligner: 7 aligners x 10 cases = 70 tests.

Every aligner (LK, CompositionalLK, ICLK, SDM, STN, CSTN, ICSTN) meets every case through its
``align``. The outcome must be a ``ValueError`` naming the argument (at construction, fit or
align), or a result in which

- ``converged`` is ``False`` for every alignment of a hopeless case (nothing to align to, a start
  outside the image, a warp through infinity, NaN/inf pixels in the box);
- a ``True`` flag always comes with finite parameters and a finite cost (never a NaN marked
  converged), and parameters are finite or NaN (never +-inf);
- not a single warning is emitted (each call runs with every warning recorded, and the count
  must be 0).

The 10th case, ``control``, is an easy one (1 px starts): every aligner must converge on most
starts, with a corner error below 1 px where it says so, so the flags above carry information.

The problem: a homography box in a 64 x 64 smooth random image and its 16 x 16 template
``T = I(p_true)``. The networks use the IC-LK regressor as their linear predictor
(:meth:`ICSTN.from_iclk`; negated for the STN, whose update composes the other way), float32 as a
user's model would be, and are given the template so that ``align`` reports a cost.
Test ids read ``NNofTT-aligner-case``.
"""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from lkstn import ICLK, LK, CompositionalLK, Homography, corner_error
from lkstn.classical.sdm import SDM
from lkstn.learned.stn import CSTN, ICSTN, STN
from lkstn.perturb import perturb
from lkstn.sampling import pixel_to_canonical, warp_image

WARP = Homography()
SHAPE = (16, 16)
BOX = np.array([[20.0, 20.0], [43.0, 20.0], [43.0, 43.0], [20.0, 43.0]])  # image pixels
CLASSICAL = {"LK": LK, "CompositionalLK": CompositionalLK, "ICLK": ICLK}
LEARNED = ("STN", "CSTN", "ICSTN")
ALIGNERS = (*CLASSICAL, "SDM", *LEARNED)


@cache
def problem() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image (64, 64), p_true (8,), template (16, 16))``."""
    noise = np.random.default_rng(0).standard_normal((64, 64))
    image = ndimage.gaussian_filter(noise, 2.0)
    image = (image - image.mean()) / image.std()
    p_true = WARP.fit(WARP.corners(), pixel_to_canonical(BOX, image.shape))
    return image, p_true, warp_image(image, WARP, p_true, SHAPE)


class _Negate(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.inner(x)


def build(name: str, template: np.ndarray | None = None, sdm_image: np.ndarray | None = None):
    """The aligner ``name``; ``template`` replaces ``T`` (classical, networks' cost), and
    ``sdm_image`` the image SDM learns from."""
    image, p_true, T = problem()
    template = T if template is None else template
    if name in CLASSICAL:
        return CLASSICAL[name](template, WARP, n_iter=10)
    if name == "SDM":
        sdm = SDM(template_shape=SHAPE, warp=WARP, n_stages=3, alpha=1e-2)
        source = image if sdm_image is None else sdm_image
        return sdm.fit_perturbed(source, p_true, 1.0, 300, np.random.default_rng(1))
    linear = _linear_predictor()
    Tt = torch.as_tensor(template, dtype=torch.float32)
    if name == "STN":  # compose(p, dp): the IC-LK step, negated, is its first-order inverse
        return STN([_Negate(linear)] * 3, warp=WARP, template_shape=SHAPE, template=Tt)
    if name == "CSTN":
        return CSTN([linear, linear], warp=WARP, template_shape=SHAPE, update="inverse",
                    template=Tt)  # fmt: skip
    return ICSTN(linear, warp=WARP, n_warps=5, template_shape=SHAPE, update="inverse", template=Tt)


@cache
def _linear_predictor() -> nn.Module:
    return ICSTN.from_iclk(ICLK(problem()[2], WARP, n_iter=5)).predictor.float()


@cache
def aligner(name: str):
    return build(name)


def starts(sigma: float, n: int, seed: int) -> np.ndarray:
    return perturb(WARP, problem()[1], sigma, SHAPE, np.random.default_rng(seed), n=n)


def with_row(p_true: np.ndarray, **entries: float) -> np.ndarray:
    """``compose(p_true, delta)`` with ``delta`` zero but for ``entries`` (``p1`` .. ``p8``)."""
    delta = np.zeros(8)
    for key, value in entries.items():
        delta[int(key[1:]) - 1] = value
    return WARP.compose(p_true, delta)


# -- the cases: each returns (aligner, image, p_init) or raises ValueError -------------------------


def case_flat_template(name):
    """A constant template (SDM: a constant training image, the source of its template)."""
    image, _, T = problem()
    flat = np.full(SHAPE, 0.5)
    if name == "SDM":
        return build(name, sdm_image=np.full_like(image, 0.5)), image, starts(1.0, 4, 5)
    return build(name, template=flat), image, starts(1.0, 4, 5)


def case_flat_image(name):
    return aligner(name), np.full_like(problem()[0], 0.3), starts(1.0, 4, 5)


def case_nan_pixels(name):
    image = problem()[0].copy()
    image[18:46, 18:46] = np.nan  # the whole box and a margin
    return aligner(name), image, starts(1.0, 4, 5)


def case_inf_pixels(name):
    image = problem()[0].copy()
    image[18:46, 18:46] = np.inf
    image[30, 30] = -np.inf
    return aligner(name), image, starts(1.0, 4, 5)


def case_outside_start(name):
    p_true = problem()[1]
    p_init = [with_row(p_true, p3=10.0), with_row(p_true, p6=-8.0),
              with_row(p_true, p3=-30.0, p6=30.0)]  # fmt: skip
    return aligner(name), problem()[0], np.stack(p_init)


def case_infinity_homography(name):
    """``w = p7 x + p8 y + 1`` vanishes on the template: on its left column (``p7 = 1``) and
    across it (``p7 = 2``, ``p7 = -1.5``)."""
    p_true = problem()[1]  # affine: the bottom row of compose(p_true, delta) is delta's
    p_init = [with_row(p_true, p7=1.0), with_row(p_true, p7=2.0, p8=0.3),
              with_row(p_true, p7=-1.5)]  # fmt: skip
    return aligner(name), problem()[0], np.stack(p_init)


def case_huge_sigma(name):
    return aligner(name), problem()[0], np.concatenate([starts(1e4, 3, 6), starts(1e7, 3, 7)])


def case_singular_start(name):
    """Warps that crush the template frame onto a line or a point."""
    p_true = problem()[1]
    p_init = [with_row(p_true, p1=-1.0), with_row(p_true, p1=-1.0, p5=-1.0)]
    return aligner(name), problem()[0], np.stack(p_init)


def case_nan_start(name):
    p_init = starts(1.0, 2, 5)
    p_init[0] = np.nan
    p_init[1, 2] = np.nan
    return aligner(name), problem()[0], p_init


def case_control(name):
    return aligner(name), problem()[0], starts(1.0, 12, 8)


CASES = {
    "flat_template": (case_flat_template, ("template", "images")),
    "flat_image": (case_flat_image, ()),
    "nan_pixels": (case_nan_pixels, ()),
    "inf_pixels": (case_inf_pixels, ()),
    "outside_start": (case_outside_start, ()),
    "infinity_homography": (case_infinity_homography, ()),
    "huge_sigma": (case_huge_sigma, ()),
    "singular_start": (case_singular_start, ()),
    "nan_start": (case_nan_start, ("p_init",)),
    "control": (case_control, ()),
}
GRID = [(a, c) for a in ALIGNERS for c in CASES]
IDS = [f"{i + 1:02d}of{len(GRID)}-{a}-{c}" for i, (a, c) in enumerate(GRID)]


def run(name: str, case: str):
    """``(result or ValueError, p_init, warnings)``: construction and ``align`` of one case,
    every warning recorded."""
    make, _ = CASES[case]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p_init = None
        try:
            model, image, p_init = make(name)
            if name in LEARNED:
                image = torch.as_tensor(image, dtype=torch.float32)[None, None]  # (1, 1, H, W)
                result = model.align(image, torch.as_tensor(p_init, dtype=torch.float32))
            else:
                result = model.align(image, p_init)
        except ValueError as exc:
            result = exc
    return result, p_init, caught


def numpy(x) -> np.ndarray | None:
    return None if x is None else (x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x))


@pytest.mark.parametrize(("name", "case"), GRID, ids=IDS)
def test_edge_case(name: str, case: str) -> None:
    result, p_init, caught = run(name, case)
    messages = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
    assert len(caught) == 0, f"{len(caught)} warnings: {messages[:3]}"
    named = CASES[case][1]
    if isinstance(result, ValueError):
        assert named, f"unexpected ValueError: {result}"
        assert any(arg in str(result) for arg in named), f"{result} names none of {named}"
        return
    assert not (case == "flat_template" and name == "ICLK"), "ICLK must refuse a flat template"
    history, cost, converged = numpy(result.history), numpy(result.cost), numpy(result.converged)
    n = len(p_init)
    rows = history.shape[0]  # the iterations asked for, + 1; n_iter counts those run
    assert history.shape == (rows, n, 8) and result.n_iter <= rows - 1 and converged.shape == (n,)
    assert converged.dtype == bool
    p = history[-1]
    assert not np.isinf(history).any(), "parameters reached +-inf instead of finite or NaN"
    assert np.isfinite(p[converged]).all(), "a non-finite warp is marked converged"
    assert cost is not None and cost.shape == (rows, n)
    assert np.isfinite(cost[-1][converged]).all(), "a non-finite cost is marked converged"
    if case != "control":
        assert not converged.any(), f"{case}: converged {converged.tolist()} on a hopeless case"
        return
    err = corner_error(WARP, np.where(np.isfinite(p), p, 0.0), problem()[1], SHAPE)
    assert converged.mean() >= 0.75, f"control: only {converged.mean():.0%} converged"
    if name in LEARNED:  # a network's flag says "the cost went down", not "within 1 px"
        before = corner_error(WARP, p_init, problem()[1], SHAPE)
        assert (err[converged] < before[converged]).all()
    else:
        assert (err[converged] < 1.0).all(), f"control: converged with errors {err[converged]} px"


def test_the_grid_covers_every_aligner_and_case() -> None:
    """70 cases: 7 aligners (classical NumPy and learned torch) x 10 cases."""
    assert len(GRID) == 70 == len(ALIGNERS) * len(CASES)
    assert {type(aligner(a)).__name__ for a in ALIGNERS} == {
        "LK", "CompositionalLK", "ICLK", "SDM", "STN", "CSTN", "ICSTN"}  # fmt: skip
