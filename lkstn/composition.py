"""Derivatives of warp composition, [LL17] eqs. (10)-(11): how an IC-STN's update propagates.

Glossary: ``dp`` the predicted update, ``p_in`` the incoming warp, ``p_out = compose(dp, p_in)``;
``M`` a warp matrix ``(..., 3, 3)``, ``B`` the family's basis ``(P, 3, 3)``, ``G`` the derivative
of ``M_out`` along one parameter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lkstn._backend import Array, ArrayLike, constant, namespace, same_kind

if TYPE_CHECKING:
    from lkstn.warps import Warp

__all__ = ["compose_jacobians"]


def compose_jacobians(warp: Warp, dp: ArrayLike, p_in: ArrayLike) -> tuple[Array, Array]:
    """Closed-form derivatives of ``p_out = compose(dp, p_in)``, [LL17] eqs. (10)-(11).

    Returns ``(d p_out / d p_in, d p_out / d dp)``, each ``(..., P, P)`` (rows: ``p_out``).
    With ``M_out = M(dp) M(p_in)``: ``dM_out/dp_in_k = M(dp) B_k`` and
    ``dM_out/d dp_k = B_k M(p_in)``, followed by the derivative of the normalisation
    ``M / M[2, 2]``.

    Note on the printed eq. (11): for affine warps its first matrix (entries ``dp``) is
    ``d p_out / d p_in - I`` and its second (entries ``p_in``) is ``d p_out / d dp - I``. The
    paper writes their sum as ``d p_out / d p_in``; the two Jacobians are in fact separate, and
    ``tests/test_warps.py`` checks both against autograd and finite differences.

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn.warps import Translation, compose_jacobians
    >>> d_in, d_dp = compose_jacobians(Translation(), np.array([0.1, 0.2]), np.array([0.3, -0.1]))
    >>> bool(np.allclose(d_in, np.eye(2)) and np.allclose(d_dp, np.eye(2)))  # translations add
    True
    """
    dp, p_in = same_kind(warp.check_params(dp, "dp"), warp.check_params(p_in, "p_in"))
    xp = namespace(dp, p_in)
    B = constant(warp.basis, dp)  # (P, 3, 3)
    A, C = warp.matrix(dp), warp.matrix(p_in)  # (..., 3, 3)
    G_in = xp.einsum("...ij,kjl->...kil", A, B)  # (..., P, 3, 3)
    G_dp = xp.einsum("kij,...jl->...kil", B, C)  # (..., P, 3, 3)
    N = A @ C
    s = N[..., None, 2:3, 2:3]  # (..., 1, 1, 1)
    pinv = constant(warp.basis_pinv(), dp)  # (9, P)

    def d_params(G: Array) -> Array:
        dN = G / s - N[..., None, :, :] * G[..., 2:3, 2:3] / s**2 if warp.projective else G
        return (dN.reshape(*dN.shape[:-2], 9) @ pinv).swapaxes(-1, -2)  # (..., P_out, P_in)

    return d_params(G_in), d_params(G_dp)
