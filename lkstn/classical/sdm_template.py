"""An SDM fitted on one template: ``SDM.for_template``, for ``lkstn align --method sdm``.

The training appearance is the template itself, perturbed with the paper's noise model
(:func:`lkstn.perturb.perturbation`, ``sigma_px`` template pixels). Around the template there is
nothing to sample, and zero padding would teach the cascade an edge that no real image has; the
template is therefore extended by reflection (``numpy.pad(mode="reflect")``) by ``3 sigma_px +
pool`` pixels on every side, and sampled there with any warp family (translation included)
through the enclosing affine or projective warp ``W(.; p_true) o W(.; delta)``. Near the border
a perturbed sample shows that reflection where a real image shows its own surroundings, so the
features ignore a border of ``1.5 sigma_px`` pixels (the model's ``mask`` is the given mask times
that border): on eight skimage photos this took the median error from 0.04-0.79 px to
0.005-0.07 px (``benchmarks/sdm_template.py`` with and without ``--margin-px 0``).

Defaults (:data:`DEFAULTS`): chosen on skimage photos so that a 128 px template fits in a few
seconds on two cores in under 1 GiB and converges from starts ``sigma_px`` away (the
measurements and the command are in ``docs/guide/sdm.md``).

Glossary: ``T`` template ``(h, w[, C])``, ``delta`` a perturbation in the template frame,
``p_true`` the warp from the template frame into the padded template, ``pool`` the block size of
the appearance.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from lkstn.classical.features import FeatureFn
from lkstn.classical.sdm_cascade import Sampler
from lkstn.classical.sdm_checks import check_fit_memory, check_image, check_mask
from lkstn.perturb import perturbation
from lkstn.sampling import pixel_to_canonical, warp_image
from lkstn.warps import Affine, Homography, Warp

if TYPE_CHECKING:  # sdm.py imports this module
    from lkstn.classical.sdm import SDM

__all__ = ["DEFAULTS", "fit_template", "reflected_sampler"]

DEFAULTS = {
    "n_samples": 1000, "n_stages": 5, "alpha": 0.1, "features_side": 32, "sigma_frac": 0.04,
    "margin_sigmas": 1.5, "photometric": "gain-bias",
}  # fmt: skip
"""``n_samples`` starts, ``n_stages``, ridge ``alpha``; ``pool`` makes the appearance about
``features_side`` blocks on its shorter side; ``sigma_px`` is ``sigma_frac`` of the longer side
(at least 1 px); a border of ``margin_sigmas * sigma_px`` template pixels is left out of the
features; features are ``photometric``-normalised (blind to the image's offset and gain)."""


def fit_template(
    cls: type[SDM],
    template: npt.ArrayLike,
    *,
    warp: Warp | str = "affine",
    mask: npt.ArrayLike | None = None,
    sigma_px: float | None = None,
    n_samples: int | None = None,
    n_stages: int | None = None,
    alpha: float | None = None,
    pool: int | None = None,
    margin_px: float | None = None,
    features: str | FeatureFn = "pixels",
    rng: np.random.Generator | int | None = 0,
    progress: bool | None = None,
    **options: float | str | None,
) -> SDM:
    """``SDM.for_template``: an SDM fitted on perturbations of ``template``, ready to align.

    Parameters
    ----------
    template : ndarray (h, w) grey or (h, w, C) colour
        The appearance to find; float intensities (the scale of the images to align).
    warp : Warp or str
    mask : ndarray (h, w), optional
        Template weights, 0 ignores a pixel (fit and align alike); multiplied by the border.
    margin_px : float, optional
        Width of the border left out of the features; default ``margin_sigmas * sigma_px``.
    sigma_px : float, optional
        Perturbation scale in template pixels; default ``sigma_frac`` of the longer side.
    n_samples, n_stages, alpha : optional
        Training starts, cascade length, ridge penalty (defaults in :data:`DEFAULTS`).
    pool : int, optional
        Block size of the appearance; default: about ``features_side`` blocks per side.
    features : "pixels", "hog" or callable
    rng : numpy.random.Generator or int seed
        Default seed 0: the same template gives the same model.
    progress : bool, optional
        tqdm bar; ``None`` shows it on a terminal once the fit has run for 2 s.
    **options
        More ``SDM`` keywords: ``tol``, ``min_score``, ``photometric`` (default ``"gain-bias"``;
        ``None`` regresses raw intensities, as [LL17]).

    Returns
    -------
    SDM
        Fitted; ``template`` is the given template and ``p = 0`` aligns it to itself.

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn import SDM
    >>> from scipy import ndimage
    >>> T = ndimage.gaussian_filter(np.random.default_rng(0).random((64, 64)), 2)
    >>> sdm = SDM.for_template(T, warp="affine", n_samples=300)
    >>> sdm.pool, sdm.n_features
    (2, 1024)
    """
    T = check_image(template, "template", None)
    if T.ndim not in (2, 3) or not np.isfinite(T).all():
        raise ValueError(f"template must be a finite (h, w) or (h, w, C) image, got {T.shape}")
    h, w = T.shape[:2]
    side = max(h, w)
    sigma_px = max(1.0, DEFAULTS["sigma_frac"] * side) if sigma_px is None else sigma_px
    if isinstance(sigma_px, bool) or not (isinstance(sigma_px, Real) and 0 < sigma_px <= side):
        raise ValueError(
            f"sigma_px must be a number in (0, {side}] template pixels, got {sigma_px!r}"
        )
    if n_samples is None:
        n_samples = DEFAULTS["n_samples"]
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
    pool = max(1, round(min(h, w) / DEFAULTS["features_side"])) if pool is None else pool
    if margin_px is None:  # at most a quarter of the shorter side stays out
        margin_px = min(DEFAULTS["margin_sigmas"] * sigma_px, (min(h, w) - 1) // 4)
    if isinstance(margin_px, bool) or not (
        isinstance(margin_px, Real) and 0 <= margin_px < min(h, w) / 4
    ):
        raise ValueError(f"margin_px must be in [0, {min(h, w) / 4:g}) pixels, got {margin_px!r}")
    border = np.zeros((h, w))
    b = int(round(margin_px))
    border[b : h - b, b : w - b] = 1.0
    mask = border if mask is None else border * check_mask(mask, (h, w))
    sdm = cls(
        (h, w), warp,
        DEFAULTS["n_stages"] if n_stages is None else n_stages,
        DEFAULTS["alpha"] if alpha is None else alpha,
        features, channel_axis=None if T.ndim == 2 else -1, mask=mask, pool=pool,
        **{"photometric": DEFAULTS["photometric"], **options},
    )  # fmt: skip
    check_fit_memory(int(n_samples), sdm.n_features, sdm.warp.n_params, 0)  # before drawing
    if not isinstance(rng, np.random.Generator):
        try:
            rng = np.random.default_rng(rng)
        except (TypeError, ValueError):
            raise ValueError(f"rng must be a numpy Generator or a seed >= 0, got {rng!r}") from None
    delta = perturbation(sdm.warp, int(n_samples), float(sigma_px), (h, w), rng)  # (M, P)
    sample = reflected_sampler(T, sdm.warp, sdm.pool, math.ceil(3 * sigma_px) + sdm.pool)
    identity = sdm.warp.identity()[None]  # (1, P): p_true in the template frame
    return sdm.fit_sampler(sample, T, identity, delta[None], pooled=True, progress=progress)


def reflected_sampler(template: np.ndarray, warp: Warp, pool: int, margin: int) -> Sampler:
    """``sample(0, p)``: block means of the reflected template at ``W(.; p)``, ``(m, fh, fw[, C])``.

    The template ``(h, w[, C])`` is padded by reflection with ``margin`` pixels; ``fh, fw = h //
    pool, w // pool``. The blocks are drawn directly: the ``pool x pool`` mean filter of the
    padded template sampled at each block's anchor pixel ``r0 + pool i + pool // 2`` (as
    :func:`~lkstn.classical.features.block_mean` lays them out). That is exactly
    ``block_mean(I(p), pool)`` for translations, and equal to first order for the small
    rotations and scalings of the perturbations, at ``1 / pool**2`` of the sampling cost.
    """
    T, k = template, pool
    h, w = T.shape[:2]
    m = min(margin, min(h, w) - 1)  # numpy's reflection needs margin < side
    padded = np.pad(T, [(m, m), (m, m)] + [(0, 0)] * (T.ndim - 2), mode="reflect")
    outer = Homography() if warp.projective else Affine()  # holds every family's matrices
    box = np.array([[m, m], [m + w - 1, m], [m + w - 1, m + h - 1], [m, m + h - 1]], float)
    padded_from_template = outer.matrix(
        outer.fit(outer.corners(), pixel_to_canonical(box, padded.shape[:2]))
    )
    fh, fw = h // k, w // k
    filtered = ndimage.uniform_filter(padded, size=(k, k, 1)[: T.ndim], mode="reflect")
    template_from_blocks = np.eye(3)  # block-grid canonical -> template canonical
    for axis, (n_px, n_blocks) in enumerate(((w, fw), (h, fh))):
        a = k * (n_blocks - 1) / (n_px - 1)
        template_from_blocks[axis, axis] = a
        template_from_blocks[axis, 2] = 2 * ((n_px % k) // 2 + k // 2) / (n_px - 1) + a - 1
    channel_axis = None if T.ndim == 2 else -1

    def sample(n: int, p: np.ndarray) -> np.ndarray:
        M = padded_from_template @ warp.matrix(p) @ template_from_blocks  # (m, 3, 3)
        return warp_image(filtered, outer, outer.params(M), (fh, fw), channel_axis=channel_axis)

    return sample
