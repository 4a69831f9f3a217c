"""Properties of every warp family, on NumPy arrays and torch tensors alike."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lkstn.warps import Affine, Homography, Similarity, Translation, compose_jacobians

WARPS = [Translation(), Similarity(), Affine(), Homography()]
KINDS = ["numpy", "torch"]


def as_kind(x, kind):
    return torch.as_tensor(np.asarray(x), dtype=torch.float64) if kind == "torch" else x


def to_np(x):
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def random_p(warp, rng, shape=(), scale=0.1):
    p = rng.normal(size=(*shape, warp.n_params)) * scale
    if warp.projective:
        p[..., 6:] *= 0.3  # keep the bottom row gentle so no point goes to infinity
    return p


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("warp", WARPS, ids=repr)
class TestFamily:
    def test_identity(self, warp, kind):
        xy = as_kind(np.random.default_rng(0).uniform(-1, 1, (7, 2)), kind)
        p0 = warp.identity((3,), like=xy if kind == "torch" else None)
        assert tuple(p0.shape) == (3, warp.n_params)
        np.testing.assert_array_equal(to_np(warp.matrix(p0)), np.broadcast_to(np.eye(3), (3, 3, 3)))
        np.testing.assert_allclose(to_np(warp.apply(p0, xy)), np.broadcast_to(to_np(xy), (3, 7, 2)))

    def test_params_of_matrix_round_trip(self, warp, kind):
        p = as_kind(random_p(warp, np.random.default_rng(1), (4, 2)), kind)
        np.testing.assert_allclose(to_np(warp.params(warp.matrix(p))), to_np(p), atol=1e-12)

    def test_compose_acts_right_to_left(self, warp, kind):
        rng = np.random.default_rng(2)
        p, q = as_kind(random_p(warp, rng, (5,)), kind), as_kind(random_p(warp, rng, (5,)), kind)
        xy = as_kind(rng.uniform(-1, 1, (5, 9, 2)), kind)
        lhs = warp.apply(warp.compose(p, q), xy)
        rhs = warp.apply(p, warp.apply(q, xy))
        np.testing.assert_allclose(to_np(lhs), to_np(rhs), atol=1e-12)

    def test_inverse_composes_to_identity(self, warp, kind):
        p = as_kind(random_p(warp, np.random.default_rng(3), (6,)), kind)
        np.testing.assert_allclose(to_np(warp.compose(p, warp.inverse(p))), 0.0, atol=1e-12)
        np.testing.assert_allclose(to_np(warp.compose(warp.inverse(p), p)), 0.0, atol=1e-12)

    def test_unchecked_inverse_is_nan_exactly_where_the_warp_is_singular(self, warp, kind):
        """``check=False``: the checked inverse where it exists, NaN rows where it does not."""
        p = random_p(warp, np.random.default_rng(5), (4,))
        p[1] = np.nan  # a failed update
        M = np.eye(3)
        M[1] = M[0]  # a singular matrix of the family: points collapse onto the line x = y
        if warp.n_params >= 6:
            p[2] = warp.params(M, check=False)
        p = as_kind(p, kind)
        out, good = to_np(warp.inverse(p, check=False)), [0, 3] if warp.n_params >= 6 else [0, 2, 3]
        # A batch of 4 and one of 3 may take different BLAS/SIMD paths: equal to a few ulps of
        # entries of order 1 (the warps here are well conditioned), not bit for bit.
        tol = dict(rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(out[good], to_np(warp.inverse(p[good])), **tol)
        assert np.isnan(np.delete(out, good, axis=0)).all()
        inv = to_np(warp.inverse_matrix(p, check=False))  # (4, 3, 3)
        np.testing.assert_allclose(inv[good], to_np(warp.inverse_matrix(p[good])), **tol)
        assert np.isnan(np.delete(inv, good, axis=0)).all()

    def test_fit_recovers_known_warp(self, warp, kind):
        rng = np.random.default_rng(4)
        p = as_kind(random_p(warp, rng, (3,)), kind)
        src = as_kind(rng.uniform(-1, 1, (3, 12, 2)), kind)
        np.testing.assert_allclose(to_np(warp.fit(src, warp.apply(p, src))), to_np(p), atol=1e-9)
        corners = warp.corners(like=p if kind == "torch" else None)
        fit = warp.fit(corners, warp.apply(p, corners))  # 4 points: exact even for a homography
        np.testing.assert_allclose(to_np(fit), to_np(p), atol=1e-9)

    def test_jacobian_matches_finite_differences(self, warp, kind):
        rng = np.random.default_rng(5)
        p = random_p(warp, rng)
        xy = rng.uniform(-1, 1, (6, 2))
        J = to_np(warp.jacobian(as_kind(xy, kind), as_kind(p, kind)))  # (N, 2, P)
        eps = 1e-6
        fd = np.stack(
            [
                (warp.apply(p + eps * e, xy) - warp.apply(p - eps * e, xy)) / (2 * eps)
                for e in np.eye(warp.n_params)
            ],
            -1,
        )
        assert J.shape == (6, 2, warp.n_params)
        np.testing.assert_allclose(J, fd, atol=1e-8)

    def test_broadcasting_of_leading_dims(self, warp, kind):
        rng = np.random.default_rng(6)
        p = as_kind(random_p(warp, rng, (4, 1)), kind)
        xy = as_kind(rng.uniform(-1, 1, (3, 5, 2)), kind)
        assert tuple(warp.apply(p, xy).shape) == (4, 3, 5, 2)
        assert tuple(warp.jacobian(xy, p).shape) == (4, 3, 5, 2, warp.n_params)

    def test_unchecked_forms_agree_and_let_nan_through(self, warp, kind):
        """``check=False`` (the inner loops' form) computes the same values without raising."""
        rng = np.random.default_rng(8)
        p, q = as_kind(random_p(warp, rng, (3,)), kind), as_kind(random_p(warp, rng, (3,)), kind)
        xy = as_kind(rng.uniform(-1, 1, (3, 5, 2)), kind)
        M = warp.matrix(p)
        pairs = [
            (warp.matrix(p, check=False), M),
            (warp.params(M, check=False), warp.params(M)),
            (warp.compose(p, q, check=False), warp.compose(p, q)),
            (warp.jacobian(xy, p, check=False), warp.jacobian(xy, p)),
            (warp.jacobian(xy, check=False), warp.jacobian(xy)),
        ]
        for unchecked, checked in pairs:
            np.testing.assert_array_equal(to_np(unchecked), to_np(checked))
        nan = p * float("nan")
        assert np.isnan(to_np(warp.matrix(nan, check=False))[..., 0, 0]).all()
        assert np.isnan(to_np(warp.compose(nan, q, check=False))).all()
        assert np.isnan(to_np(warp.params(warp.matrix(nan, check=False), check=False))).all()

    def test_inputs_not_mutated(self, warp, kind):
        rng = np.random.default_rng(7)
        p, q = random_p(warp, rng, (2,)), random_p(warp, rng, (2,))
        p0, q0 = p.copy(), q.copy()
        warp.compose(as_kind(p, kind), as_kind(q, kind))
        warp.inverse(p)
        np.testing.assert_array_equal(p, p0)
        np.testing.assert_array_equal(q, q0)


def test_composition_order_by_hand():
    # M(p) = scale x by 2 (p1 = 1); M(q) = translate x by 0.5 (p3 = 0.5).
    # compose(p, q) = M(p) @ M(q): translate first, then scale: x -> 2 (x + 0.5) = 2x + 1.
    warp = Affine()
    p = np.array([1.0, 0, 0, 0, 0, 0])
    q = np.array([0, 0, 0.5, 0, 0, 0])
    np.testing.assert_allclose(warp.compose(p, q), [1.0, 0, 1.0, 0, 0, 0])
    np.testing.assert_allclose(warp.compose(q, p), [1.0, 0, 0.5, 0, 0, 0])  # 2x + 0.5
    np.testing.assert_allclose(warp.apply(warp.compose(p, q), [[0.0, 0.0]]), [[1.0, 0.0]])


def test_homography_normalises_bottom_right():
    warp = Homography()
    M = 2.0 * warp.matrix(np.array([0.1, 0, 0, 0, 0.1, 0, 0.05, 0]))
    p = warp.params(M)
    np.testing.assert_allclose(warp.matrix(p)[2, 2], 1.0)
    np.testing.assert_allclose(p, [0.1, 0, 0, 0, 0.1, 0, 0.05, 0], atol=1e-15)


@given(st.lists(st.floats(-0.3, 0.3), min_size=12, max_size=12))
@settings(max_examples=50, deadline=None)
def test_affine_compose_inverse_property(values):
    warp = Affine()
    p, q = np.array(values[:6]), np.array(values[6:])
    # (p o q)^-1 = q^-1 o p^-1
    lhs = warp.inverse(warp.compose(p, q))
    rhs = warp.compose(warp.inverse(q), warp.inverse(p))
    np.testing.assert_allclose(lhs, rhs, atol=1e-9)


@pytest.mark.parametrize("warp", [Affine(), Homography(), Translation(), Similarity()], ids=repr)
def test_compose_jacobians_against_autograd_and_fd(warp):
    rng = np.random.default_rng(8)
    dp, p_in = random_p(warp, rng), random_p(warp, rng)
    J_in, J_dp = compose_jacobians(warp, dp, p_in)
    dp_t, p_t = torch.tensor(dp), torch.tensor(p_in)
    auto_in = torch.autograd.functional.jacobian(lambda a: warp.compose(dp_t, a), p_t)
    auto_dp = torch.autograd.functional.jacobian(lambda a: warp.compose(a, p_t), dp_t)
    np.testing.assert_allclose(J_in, auto_in.numpy(), atol=1e-12)
    np.testing.assert_allclose(J_dp, auto_dp.numpy(), atol=1e-12)
    eps = 1e-6
    fd_in = np.stack(
        [(warp.compose(dp, p_in + eps * e) - warp.compose(dp, p_in - eps * e)) / (2 * eps)
         for e in np.eye(warp.n_params)], -1)  # fmt: skip
    np.testing.assert_allclose(J_in, fd_in, atol=1e-8)
    # torch inputs give torch outputs with the same values
    J_in_t, _ = compose_jacobians(warp, dp_t, p_t)
    np.testing.assert_allclose(J_in_t.numpy(), J_in, atol=1e-14)


def test_printed_eq11_sums_the_two_jacobians():
    """[LL17] eq. (11) prints I + A(dp) + B(p_in) as d p_out / d p_in; they are two Jacobians."""
    warp = Affine()
    rng = np.random.default_rng(9)
    dp, p_in = rng.normal(size=6) * 0.1, rng.normal(size=6) * 0.1
    d1, d2, d3, d4, d5, _ = dp
    a1, a2, a3, a4, a5, a6 = p_in
    A = np.array(
        [[d1, 0, 0, d2, 0, 0], [0, d1, 0, 0, d2, 0], [0, 0, d1, 0, 0, d2],
         [d4, 0, 0, d5, 0, 0], [0, d4, 0, 0, d5, 0], [0, 0, d4, 0, 0, d5]])  # fmt: skip
    B = np.array(
        [[a1, a4, 0, 0, 0, 0], [a2, a5, 0, 0, 0, 0], [a3, a6, 0, 0, 0, 0],
         [0, 0, 0, a1, a4, 0], [0, 0, 0, a2, a5, 0], [0, 0, 0, a3, a6, 0]])  # fmt: skip
    J_in, J_dp = compose_jacobians(warp, dp, p_in)
    np.testing.assert_allclose(J_in, np.eye(6) + A, atol=1e-15)
    np.testing.assert_allclose(J_dp, np.eye(6) + B, atol=1e-15)
    assert not np.allclose(J_in, np.eye(6) + A + B)  # the printed sum is neither Jacobian


def test_gradients_flow_through_torch_path():
    warp = Homography()
    p = torch.tensor(random_p(warp, np.random.default_rng(10)), requires_grad=True)
    xy = torch.rand(5, 2, dtype=torch.float64) * 2 - 1
    warp.apply(warp.compose(p, warp.inverse(p.detach())), xy).sum().backward()
    assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


class TestBadInput:
    def test_wrong_parameter_count(self):
        with pytest.raises(ValueError, match=r"p must have shape \(\.\.\., 6\).*\(3, 5\)"):
            Affine().matrix(np.zeros((3, 5)))

    def test_non_finite_parameters(self):
        with pytest.raises(ValueError, match="non-finite"):
            Affine().compose(np.array([np.nan, 0, 0, 0, 0, 0]), np.zeros(6))

    def test_singular_inverse(self):
        with pytest.raises(ValueError, match="singular"):
            Affine().inverse(np.array([-1.0, 0, 0, 0, 0, 0]))  # x-scale 0

    def test_singular_params(self):
        with pytest.raises(ValueError, match="singular"):
            Affine().params(np.diag([1.0, 0.0, 1.0]))

    def test_homography_infinite_origin(self):
        M = np.eye(3)
        M[2, 2] = 0.0
        M[2, 0] = 1.0
        with pytest.raises(ValueError, match=r"M\[2, 2\] == 0"):
            Homography().params(M)

    def test_projective_matrix_is_not_affine(self):
        M = Homography().matrix(np.array([0, 0, 0, 0, 0, 0, 0.1, 0.0]))
        with pytest.raises(ValueError, match="not a Affine"):
            Affine().params(M)

    def test_matrix_shape(self):
        with pytest.raises(ValueError, match=r"M must have shape \(\.\.\., 3, 3\)"):
            Affine().params(np.eye(2))

    def test_points_shape(self):
        with pytest.raises(ValueError, match="xy must have shape"):
            Affine().apply(np.zeros(6), np.zeros((4, 3)))

    def test_degenerate_fit(self):
        src = np.zeros((4, 2))
        with pytest.raises(ValueError, match="degenerate"):
            Homography().fit(src, src)

    def test_mismatched_fit(self):
        with pytest.raises(ValueError, match="differ in N"):
            Affine().fit(np.zeros((4, 2)), np.zeros((5, 2)))


def test_every_public_function_taking_a_warp_takes_its_name_too():
    import lkstn

    rng = np.random.default_rng(0)
    img = rng.random((20, 24))
    p = np.array([0.1, 0.0, 0.05, 0.0, -0.1, 0.02])
    by_name = lkstn.warp_image(img, "affine", p, (8, 9))
    assert np.array_equal(by_name, lkstn.warp_image(img, lkstn.Affine(), p, (8, 9)))
    assert lkstn.corner_error("affine", p, p, (8, 9)) == 0
    starts = lkstn.perturb("homography", np.zeros(8), 2.0, (8, 9), np.random.default_rng(1))
    again = lkstn.perturb(lkstn.Homography(), np.zeros(8), 2.0, (8, 9), np.random.default_rng(1))
    assert np.array_equal(starts, again)
    with pytest.raises(ValueError, match="warp must be one of"):
        lkstn.warp_image(img, "afine", p, (8, 9))
