"""Bad input to the Gauss-Newton aligners: a ValueError naming the argument, or converged=False;
never a NaN marked converged, never a warning, never a crash deep in NumPy."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pytest

from lkstn import ICLK, LK, Affine, CompositionalLK, Homography, corner_error
from lkstn.perturb import perturb
from lkstn.problems import planar_problem

ALIGNERS = [ICLK, LK, CompositionalLK]


@lru_cache
def problem(warp="affine"):
    return planar_problem((30, 30), warp=warp, box=(150, 90, 209, 149))


def quiet_align(aligner, image, p_init):
    """``align`` with every warning turned into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return aligner.align(image, p_init)


def test_flat_template_is_rejected_by_iclk():
    with pytest.raises(ValueError, match="template"):
        ICLK(np.full((20, 20), 0.5), Affine())
    stripes = np.tile(np.sin(np.arange(20.0)), (20, 1))  # texture along x only: aperture problem
    with pytest.raises(ValueError, match="template"):
        ICLK(stripes, Affine())


@pytest.mark.parametrize("cls", [LK, CompositionalLK])
def test_singular_system_freezes_that_alignment_only(cls):
    prob = problem()
    image = prob.image.copy()
    image[:, 300:] = 0.25  # flat right part of the image: no gradient there
    right = Affine().compose(np.array([0.0, 0, 0.85, 0, 0, 0]), prob.p_true)  # box moved into it
    p_init = np.stack([prob.p_true + 0.01, right])
    res = quiet_align(cls(prob.template, Affine(), n_iter=10), image, p_init)
    assert res.converged.tolist() == [True, False]
    np.testing.assert_array_equal(res.history[:, 1], np.broadcast_to(right, (11, 6)))
    assert np.isfinite(res.history).all()


@pytest.mark.parametrize("cls", ALIGNERS)
def test_nan_in_image_is_never_converged(cls):
    prob = problem()
    image = prob.image.copy()
    image[100:140, 170:200] = np.nan  # inside the box
    p_init = np.stack(
        [prob.p_true, Affine().compose(np.array([0.0, 0, 0, 0, 0, 0.9]), prob.p_true)]
    )
    res = quiet_align(cls(prob.template, Affine(), n_iter=5), image, p_init)
    assert not res.converged[0]  # samples NaN pixels
    assert np.isfinite(res.history[:, 0]).all()  # frozen at its last finite p
    for c, cost in zip(res.converged, res.cost[-1], strict=True):
        assert not (c and not np.isfinite(cost))


@pytest.mark.parametrize("warp", [Affine(), Homography()], ids=str)
@pytest.mark.parametrize("cls", ALIGNERS)
def test_starts_far_outside_the_image(cls, warp):
    prob = problem(warp)
    far = np.zeros((4, warp.n_params))
    far[0, 2] = 10.0  # far to the right: every sample is a zero
    far[1, 5] = -6.0
    far[2, :2] = [-0.999, 0.0]  # squashed to a line
    if warp.projective:
        far[3, 6] = 0.9  # the line at infinity crosses the template frame
    p_init = warp.compose(prob.p_true, far)
    res = quiet_align(cls(prob.template, warp, n_iter=8), prob.image, p_init)
    assert np.isfinite(res.history).all()
    err = corner_error(warp, res.p, prob.p_true, (30, 30))
    assert not (res.converged & (err > 1.0))[:2].any()


def test_no_warnings_on_random_starts_and_converged_means_finite():
    prob = problem(Homography())
    p_init = perturb(Homography(), prob.p_true, 12.0, (30, 30), np.random.default_rng(0), n=60)
    for cls in ALIGNERS:
        res = quiet_align(cls(prob.template, Homography(), n_iter=15), prob.image, p_init)
        assert np.isfinite(res.history[-1][res.converged]).all()
        assert np.isfinite(res.cost[-1][res.converged]).all()


@pytest.mark.parametrize("cls", ALIGNERS)
def test_inputs_are_not_mutated_and_integer_images_work(cls):
    prob = problem()
    image8 = (prob.image * 255).round().astype(np.uint8)
    template = image8[90:150, 150:210:2].astype(float)  # any textured 60x30 patch
    p_init = np.tile(prob.p_true, (2, 1))
    before = (image8.copy(), template.copy(), p_init.copy())
    res = cls(template, Affine(), n_iter=3).align(image8, p_init)
    res_f = cls(template, Affine(), n_iter=3).align(image8.astype(float), p_init)
    np.testing.assert_array_equal(res.history, res_f.history)
    for a, b in zip((image8, template, p_init), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_empty_batch_of_starts():
    prob = problem()
    res = ICLK(prob.template, Affine(), n_iter=3).align(prob.image, np.zeros((0, 6)))
    assert (
        res.history.shape == (4, 0, 6) and res.cost.shape == (4, 0) and res.converged.shape == (0,)
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(template=np.zeros((5, 5, 3))), "template"),
        (dict(template=np.array([[np.nan, 1.0], [2.0, 3.0]])), "template"),
        (dict(template="cat"), "template"),
        (dict(n_iter=-1), "n_iter"),
        (dict(n_iter=2.5), "n_iter"),
        (dict(tol=-1.0), "tol"),
        (dict(tol=float("nan")), "tol"),
        (dict(pyramid=0), "pyramid"),
        (dict(pyramid=4), "pyramid"),  # a 30x30 template at 1/8 is 4x4 pixels
        (dict(channel_axis=0), "channel_axis"),
        (dict(warp="projective"), "warp"),
    ],
)
@pytest.mark.parametrize("cls", ALIGNERS)
def test_bad_construction_names_the_argument(cls, kwargs, name):
    prob = problem()
    kwargs = {"template": prob.template, "warp": Affine(), **kwargs}
    template = kwargs.pop("template")
    with pytest.raises(ValueError, match=name):
        cls(template, **kwargs)


@pytest.mark.parametrize(
    "image, p_init, name",
    [
        (np.zeros((4, 5, 6, 7)), np.zeros(6), "image"),
        (np.zeros(10), np.zeros(6), "image"),
        (np.zeros((40, 40), complex), np.zeros(6), "image"),
        (np.zeros((40, 40)), np.zeros(5), "p_init"),
        (np.zeros((40, 40)), np.array([0.0, 0, np.nan, 0, 0, 0]), "p_init"),
        (np.zeros((3, 40, 40)), np.zeros((2, 6)), "p_init"),
        (np.zeros((3, 40, 40)), np.zeros((3, 1, 6)), "p_init"),
    ],
)
@pytest.mark.parametrize("cls", ALIGNERS)
def test_bad_align_input_names_the_argument(cls, image, p_init, name):
    aligner = cls(problem().template, Affine())
    with pytest.raises(ValueError, match=name):
        aligner.align(image, p_init)
    with pytest.raises(ValueError, match="n_iter"):
        aligner.align(np.zeros((40, 40)), np.zeros(6), n_iter=-2)


def test_channel_mismatch_names_the_image():
    prob = planar_problem((30, 30), box=(150, 90, 209, 149), color=True)
    aligner = ICLK(prob.template, Affine(), channel_axis=-1)
    with pytest.raises(ValueError, match="channels"):
        aligner.align(prob.image[..., :2], prob.p_true)
    with pytest.raises(ValueError, match="image"):
        aligner.align(prob.image[..., 0], prob.p_true)
