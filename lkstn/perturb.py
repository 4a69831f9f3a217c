"""The paper's noise model for warps ([LL17] Sec. 5), in template pixels.

Each of the four template corners ``(±1, ±1)`` moves by i.i.d. Gaussian noise per corner and
axis, plus one translation shared by the four corners, both with standard deviation ``sigma``
template pixels; the warp is then fitted to the moved corners (exact for a homography, least
squares for affine, similarity and translation). In canonical units the noise is
``sigma / ((w - 1) / 2)`` along x and ``sigma / ((h - 1) / 2)`` along y.

A start is ``p_init = compose(p_true, delta)``: the noise lives in the template frame, as in SDM
([LL17] eq. (7), ``p_n o dp_nj``).

``lkstn.perturb`` is always this module, whatever the import order (``from lkstn import
perturb`` and ``import lkstn.perturb`` give the same object), and the module is callable as its
function: ``lkstn.perturb(warp, p_true, ...)`` is ``lkstn.perturb.perturb(warp, p_true, ...)``.

Glossary: ``delta`` the perturbation, ``sigma`` its scale in template pixels, ``rng`` a
``numpy.random.Generator`` (NumPy result) or ``torch.Generator`` (torch result).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

import numpy as np

from lkstn._backend import Array, ArrayLike, asarray, is_torch
from lkstn.warps import Warp, warp_from_name

if TYPE_CHECKING:  # torch is imported only when a torch generator is passed in
    import torch

__all__ = ["perturb", "perturbation"]


def perturbation(
    warp: Warp | str,
    n: int | tuple[int, ...],
    sigma: float,
    template_shape: tuple[int, int],
    rng: np.random.Generator | torch.Generator,
    *,
    translation: bool = True,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Array:
    """Random warp parameters ``delta`` of shape ``(*n, P)`` drawn from the paper's model.

    Parameters
    ----------
    warp : Warp or str
        A warp family, or its name (``"affine"``, ...).
    n : int or tuple
        Batch shape.
    sigma : float
        Standard deviation in template pixels (corner noise and shared translation).
    template_shape : (h, w)
    rng : numpy.random.Generator or torch.Generator
        The source of randomness; the library never seeds globally.
    translation : bool
        Add the shared translation (the paper does).
    dtype, device
        For a torch result (default ``torch.float32`` on the generator's device).

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn import Affine
    >>> from lkstn.perturb import perturbation
    >>> d = perturbation(Affine(), 5, 2.0, (50, 50), np.random.default_rng(0))
    >>> d.shape
    (5, 6)
    """
    warp = warp_from_name(warp)
    shape = (n,) if isinstance(n, int | np.integer) else tuple(n)
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0 (pixels), got {sigma!r}")
    h, w = template_shape
    if h < 2 or w < 2:
        raise ValueError(f"template_shape must be at least (2, 2), got {template_shape!r}")
    scale = np.array([sigma / ((w - 1) / 2.0), sigma / ((h - 1) / 2.0)])  # canonical per axis
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(rng, torch.Generator):
        dtype = dtype or torch.float32
        device = device or rng.device
        noise = torch.randn((*shape, 4, 2), generator=rng, dtype=dtype, device=rng.device)
        shift = torch.randn((*shape, 1, 2), generator=rng, dtype=dtype, device=rng.device)
        noise, shift = noise.to(device), shift.to(device)
        scale_t = torch.as_tensor(scale, dtype=dtype, device=device)
    elif isinstance(rng, np.random.Generator):
        noise = rng.standard_normal((*shape, 4, 2))
        shift = rng.standard_normal((*shape, 1, 2))
        scale_t = scale
    else:
        raise TypeError(f"rng must be a numpy.random.Generator or torch.Generator, got {rng!r}")
    if not translation:
        shift = shift * 0
    corners = warp.corners(like=noise)  # (4, 2)
    moved = corners + (noise + shift) * scale_t  # (*n, 4, 2)
    return warp.fit(corners.expand_as(moved) if is_torch(moved) else corners + 0 * moved, moved)


def perturb(
    warp: Warp | str,
    p_true: ArrayLike,
    sigma: float,
    template_shape: tuple[int, int],
    rng: np.random.Generator | torch.Generator,
    *,
    n: int | None = None,
) -> Array:
    """Perturbed starts ``p_init = compose(p_true, delta)``.

    ``p_true`` is ``(..., P)``; with ``n`` the result is ``(n, ..., P)`` (``n`` starts for each
    truth), else it has the shape of ``p_true``.

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn import Affine, corner_error
    >>> p_true = np.array([0.2, 0, 0.1, 0, 0.2, -0.1])
    >>> starts = perturb(Affine(), p_true, 5.0, (50, 50), np.random.default_rng(0), n=1000)
    >>> starts.shape
    (1000, 6)
    >>> 8 < float(np.sqrt(np.mean(corner_error(Affine(), starts, p_true, (50, 50)) ** 2))) < 12
    True
    """
    warp = warp_from_name(warp)
    p_true = warp.check_params(p_true, "p_true")
    shape = tuple(p_true.shape[:-1]) if n is None else (n, *p_true.shape[:-1])
    kwargs = {"dtype": p_true.dtype, "device": p_true.device} if is_torch(p_true) else {}
    delta = perturbation(warp, shape, sigma, template_shape, rng, **kwargs)
    return warp.compose(asarray(p_true, like=delta), delta, check=False)  # both checked


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`perturb` (see the module docstring)."""

    __call__ = staticmethod(perturb)  # the function itself: its signature, its errors


sys.modules[__name__].__class__ = _CallableModule
