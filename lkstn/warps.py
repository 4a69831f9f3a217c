"""Planar warp families, one implementation for NumPy arrays and torch tensors.

Conventions (written once, here; every part of lkstn follows them)
-------------------------------------------------------------------
Coordinates
    Points are ``(x, y)``, x to the right, y down, in the *canonical frame* ``[-1, 1]`` of an
    image: the centres of the corner pixels sit at ``±1`` (PyTorch ``align_corners=True``, the
    frame of the authors' code). Pixel to canonical: ``x_pix = (x + 1) (W - 1) / 2``.
Direction
    ``W(x; p)`` maps template (output) coordinates to image (input) coordinates: warping an image
    samples it at ``W(x; p)``, written ``I(p)`` in [LL17] eq. (1).
Parameters
    ``p = 0`` is the identity and ``p`` is the row-major flattening of ``M(p) - I`` ([LL17]
    eq. (9)): affine ``[[1+p1, p2, p3], [p4, 1+p5, p6]]``; a homography adds the bottom row
    ``[p7, p8, 1]``; a translation is ``(p3, p6)`` alone, stored as ``(tx, ty)``; a similarity is
    ``(a, b, tx, ty)`` with ``M = [[1+a, -b, tx], [b, 1+a, ty], [0, 0, 1]]``.
Composition
    ``compose(p, q)`` is ``M(p) @ M(q)`` (``q`` acts on the points first), normalised so that
    ``M[2, 2] == 1``. IC-LK updates ``p <- compose(p, inverse(dp))`` ([BM04]); the c-STN/IC-STN
    update of [LL17] eq. (10) is ``p_out = compose(dp, p_in)``.
Shapes
    Parameters ``(..., P)``, points ``(..., N, 2)``, matrices ``(..., 3, 3)``; leading batch
    dimensions broadcast. Inputs are never mutated.

Every family is a linear *basis* ``B`` of shape ``(P, 3, 3)`` with ``M(p) = I + sum_k p_k B_k``;
matrix, params, composition, inverse, Jacobians and fitting are written once for any basis.

Glossary: ``p`` warp parameters, ``dp`` an update, ``M`` the 3x3 matrix, ``xy`` points,
``xh`` homogeneous points, ``B`` the basis, ``P`` the number of parameters.

References: [LL17] Lin & Lucey, Inverse Compositional Spatial Transformer Networks, CVPR 2017.
[BM04] Baker & Matthews, Lucas-Kanade 20 Years On: A Unifying Framework, IJCV 2004.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from lkstn._backend import (
    Array,
    ArrayLike,
    all_finite,
    asarray,
    constant,
    is_torch,
    namespace,
    same_kind,
)
from lkstn.composition import compose_jacobians

__all__ = [
    "Affine",
    "Homography",
    "Similarity",
    "Translation",
    "Warp",
    "compose_jacobians",
    "warp_from_name",
]

_EYE = np.eye(3)
_SINGULAR_TOL = 1e-12


def _unit(i: int, j: int) -> np.ndarray:
    e = np.zeros((3, 3))
    e[i, j] = 1.0
    return e


class Warp:
    """A planar warp family ``M(p) = I + sum_k p_k B_k`` acting on canonical coordinates.

    Warps are stateless values: ``Affine() == Affine()``; pass them as ``warp=Affine()``.

    Examples
    --------
    >>> import numpy as np
    >>> from lkstn import Affine
    >>> warp = Affine()
    >>> p = np.array([0.1, 0.0, 0.2, 0.0, -0.1, 0.0])
    >>> q = warp.compose(p, warp.inverse(p))
    >>> bool(np.allclose(q, 0.0))
    True
    """

    name: ClassVar[str] = "warp"
    basis: ClassVar[np.ndarray]  # (P, 3, 3)
    projective: ClassVar[bool] = False

    # -- value semantics ----------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @property
    def n_params(self) -> int:
        """Number of parameters ``P``."""
        return self.basis.shape[0]

    @classmethod
    def basis_pinv(cls) -> np.ndarray:
        """Pseudo-inverse of the flattened basis, ``(9, P)``, computed once per family."""
        if "_pinv_cache" not in cls.__dict__:
            cls._pinv_cache = np.linalg.pinv(cls.basis.reshape(-1, 9))
        return cls._pinv_cache

    # -- validation -----------------------------------------------------------------------------
    def check_params(self, p: ArrayLike, name: str = "p") -> Array:
        """``p`` as an array after checking its shape ``(..., P)`` and that it is finite.

        Raises ``ValueError`` naming ``name`` and what it got.
        """
        p = asarray(p)
        if p.ndim < 1 or p.shape[-1] != self.n_params:
            raise ValueError(
                f"{name} must have shape (..., {self.n_params}) for {self!r}, got {tuple(p.shape)}"
            )
        if not all_finite(p):
            raise ValueError(f"{name} has non-finite entries (NaN or inf)")
        return p

    def _check_xy(self, xy: ArrayLike, like: Array | None = None) -> Array:
        xy = asarray(xy, like=like)
        if xy.ndim < 2 or xy.shape[-1] != 2:
            raise ValueError(f"xy must have shape (..., N, 2), got {tuple(xy.shape)}")
        return xy

    # -- the family -----------------------------------------------------------------------------
    def _flat_basis(self, like: Array) -> Array:
        return constant(self.basis.reshape(self.n_params, 9), like)  # (P, 9)

    def matrix(self, p: ArrayLike, *, check: bool = True) -> Array:
        """The homogeneous matrix ``M(p)``, shape ``(..., 3, 3)`` ([LL17] eq. (9)).

        ``check=False`` skips the shape and finiteness checks of ``p``, which must then be an
        array of this family's ``(..., P)`` (for inner loops over checked parameters).
        """
        if check:
            p = self.check_params(p)
        flat = p @ self._flat_basis(p) + constant(_EYE.reshape(9), p)  # (..., 9)
        return flat.reshape(*p.shape[:-1], 3, 3)

    def params(self, M: ArrayLike, *, check: bool = True) -> Array:
        """Parameters of a matrix of this family, ``(..., 3, 3) -> (..., P)``.

        Raises ``ValueError`` when ``M`` is singular, has ``M[2, 2] == 0`` (homography), or
        is not in the family (e.g. a projective matrix given to ``Affine``). ``check=False``
        skips these checks (for inner loops): ``M``, an array, is normalised by ``M[2, 2]``
        (homography) and projected on the family, and a singular ``M`` gives non-finite ``p``.
        """
        if not check:
            if self.projective:
                M = M / M[..., 2:3, 2:3]
            pinv = constant(self.basis_pinv(), M)  # (9, P)
            return (M - constant(_EYE, M)).reshape(*M.shape[:-2], 9) @ pinv  # (..., P)
        M = asarray(M)
        if M.ndim < 2 or tuple(M.shape[-2:]) != (3, 3):
            raise ValueError(f"M must have shape (..., 3, 3), got {tuple(M.shape)}")
        if not all_finite(M):
            raise ValueError("M has non-finite entries (NaN or inf)")
        xp = namespace(M)
        if bool((xp.abs(M[..., 2, 2]) < _SINGULAR_TOL).any()):
            raise ValueError("M has M[2, 2] == 0: the warp sends the origin to infinity")
        if bool((xp.abs(xp.linalg.det(M)) < _SINGULAR_TOL).any()):
            raise ValueError("M is singular (determinant ~ 0)")
        p = self.params(M, check=False)
        back = self.matrix(p, check=False)
        scale = M[..., 2:3, 2:3] if self.projective else 1.0
        if not bool((xp.abs(back - M / scale) < 1e-6 * (1 + xp.abs(M / scale))).all()):
            raise ValueError(f"M is not a {type(self).__name__} matrix")
        return p

    def identity(self, batch_shape: tuple[int, ...] = (), like: Array | None = None) -> Array:
        """Identity parameters (zeros), shape ``(*batch_shape, P)``, NumPy unless ``like``."""
        if like is not None and is_torch(like):
            xp = namespace(like)
            return xp.zeros((*batch_shape, self.n_params), dtype=like.dtype, device=like.device)
        return np.zeros((*batch_shape, self.n_params))

    def compose(self, p: ArrayLike, q: ArrayLike, *, check: bool = True) -> Array:
        """Parameters of ``M(p) @ M(q)``: ``q`` acts on the points first.

        ``check=False`` skips the shape and finiteness checks of ``p`` and ``q`` (arrays that a
        caller has checked, or whose non-finite rows it handles itself).
        """
        if check:
            p, q = same_kind(self.check_params(p, "p"), self.check_params(q, "q"))
        else:
            p, q = same_kind(asarray(p), asarray(q))
        return self.params(self.matrix(p, check=False) @ self.matrix(q, check=False), check=False)

    def inverse_matrix(self, p: ArrayLike, *, check: bool = True) -> Array:
        """``M(p)^-1``, shape ``(..., 3, 3)``: the one matrix inversion of the warps.

        ``ValueError`` for a singular warp (``|det M(p)| < 1e-12``). ``check=False`` skips the
        checks of ``p`` (an array of this family's ``(..., P)``) and never raises: where ``M(p)``
        is singular (``|det| <= 1e-12``, or a NaN determinant, as NaN parameters give), the
        inverse is NaN (for inner loops, whose failures are data).
        """
        if check:
            p = self.check_params(p)
        M = self.matrix(p, check=False)  # (..., 3, 3)
        xp = namespace(M)
        with np.errstate(invalid="ignore"):  # NaN parameters: a NaN determinant, flagged below
            det = xp.linalg.det(M)  # (...)
        if check and bool((xp.abs(det) < _SINGULAR_TOL).any()):
            raise ValueError("p gives a singular warp matrix (determinant ~ 0): no inverse")
        bad = ~(xp.abs(det) > _SINGULAR_TOL)  # (...), NaN determinants too
        if not bool(bad.any()):
            return xp.linalg.inv(M)
        bad = bad[..., None, None]  # (..., 1, 1)
        inv = xp.linalg.inv(xp.where(bad, constant(_EYE, M), M))  # the identity stands in
        return xp.where(bad, constant(np.nan, M), inv)

    def inverse(self, p: ArrayLike, *, check: bool = True) -> Array:
        """Parameters of ``M(p)^-1``; ``ValueError`` for a singular warp.

        ``check=False`` skips the checks and never raises: NaN rows where ``M(p)`` is singular
        (see :meth:`inverse_matrix`).
        """
        inv = self.params(self.inverse_matrix(p, check=check), check=False)
        if check and not all_finite(inv):
            raise ValueError("p gives a warp whose inverse sends points to infinity")
        return inv

    def _apply(self, p: Array, xy: Array) -> Array:
        M = self.matrix(p, check=False)  # (..., 3, 3)
        out = xy @ M[..., :2, :2].swapaxes(-1, -2) + M[..., None, :2, 2]  # (..., N, 2)
        if self.projective:
            w = xy @ M[..., 2:3, :2].swapaxes(-1, -2) + M[..., None, 2:3, 2]  # (..., N, 1)
            out = out / w
        return out

    def apply(self, p: ArrayLike, xy: ArrayLike, *, check: bool = True) -> Array:
        """``W(xy; p)``: template points ``(..., N, 2)`` to image points ``(..., N, 2)``.

        ``check=False`` skips the checks of ``p`` (a non-finite ``p`` then gives non-finite
        points rather than a ``ValueError``).
        """
        p = self.check_params(p) if check else asarray(p)
        return self._apply(p, self._check_xy(xy, like=p))

    def jacobian(self, xy: ArrayLike, p: ArrayLike | None = None, *, check: bool = True) -> Array:
        """``dW/dp`` at the points ``xy``, shape ``(..., N, 2, P)``; at the identity by default.

        For ``W = (u / w, v / w)`` with ``(u, v, w) = M(p) xh``:
        ``dW/dp_k = (B_k[:2] xh - W B_k[2] xh) / w`` ([BM04] Sec. 2.1).
        ``check=False`` skips the checks of ``xy`` and ``p``, which must then be arrays of one
        kind (for inner loops: the Jacobian of a homography at each iterate).
        """
        identity = p is None
        if check:
            xy = self._check_xy(xy)
            p = self.identity(like=xy) if p is None else self.check_params(p)
            xy = asarray(xy, like=p)
        elif p is None:
            p = self.identity(like=xy)
        xp = namespace(xy, p)
        ones = xp.ones_like(xy[..., :1])
        xh = xp.concatenate([xy, ones], -1)  # (..., N, 3)
        B = constant(self.basis.swapaxes(0, 1).reshape(-1, 3), xy)  # (3 * P, 3): rows B_k[i]
        Bx = (xh @ B.T).reshape(*xh.shape[:-1], 3, self.n_params)  # (..., N, 3, P): B_k[i] xh
        if identity:  # w = 1 and W = xy: the same numbers, two passes fewer
            return Bx[..., :2, :] - xy[..., :, None] * Bx[..., 2:3, :]
        M = self.matrix(p, check=False)  # (..., 3, 3)
        h = xh @ M.swapaxes(-1, -2)  # (..., N, 3)
        w = h[..., 2:3]  # (..., N, 1)
        W = h[..., :2] / w  # (..., N, 2)
        return (Bx[..., :2, :] - W[..., :, None] * Bx[..., 2:3, :]) / w[..., None]

    def fit(self, src_xy: ArrayLike, dst_xy: ArrayLike) -> Array:
        """Parameters with ``W(src; p) ~ dst``, points ``(..., N, 2) -> (..., P)``.

        Exact for a homography from 4 points, least squares otherwise: the projective equation
        ``dst * (B[2] xh . p + 1) = xy + B[:2] xh . p`` is linear in ``p`` for every family.
        """
        src = self._check_xy(src_xy)
        dst = self._check_xy(dst_xy, like=src)
        if src.shape[-2] != dst.shape[-2]:
            raise ValueError(f"src_xy and dst_xy differ in N: {src.shape} vs {dst.shape}")
        if 2 * src.shape[-2] < self.n_params:
            raise ValueError(
                f"{self!r} needs at least {(self.n_params + 1) // 2} points, got {src.shape[-2]}"
            )
        xp = namespace(src, dst)
        ones = xp.ones_like(src[..., :1])
        xh = xp.concatenate([src, ones], -1)  # (..., N, 3)
        Bx = xp.einsum("kij,...nj->...nik", constant(self.basis, src), xh)  # (..., N, 3, P)
        A = Bx[..., :2, :] - dst[..., :, None] * Bx[..., 2:3, :]  # (..., N, 2, P)
        A = A.reshape(*A.shape[:-3], -1, self.n_params)  # (..., 2N, P)
        r = (dst - src).reshape(*dst.shape[:-2], -1, 1)  # (..., 2N, 1)
        At = A.swapaxes(-1, -2)
        if A.shape[-2] == self.n_params:
            A_, r_ = A, r
        else:
            A_, r_ = At @ A, At @ r
        try:
            p = xp.linalg.solve(A_, r_)[..., 0]
        except Exception as exc:  # numpy LinAlgError / torch linalg error
            raise ValueError(f"fit is degenerate (collinear or repeated points): {exc}") from None
        if not all_finite(p):
            raise ValueError("fit is degenerate (collinear or repeated points)")
        return p

    def corners(self, like: Array | None = None) -> Array:
        """Template corners in the canonical frame, ``(4, 2)``: TL, TR, BR, BL."""
        c = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
        return c if like is None else asarray(c, like=like)


class Translation(Warp):
    """Translation ``(tx, ty)``: ``M = [[1, 0, tx], [0, 1, ty], [0, 0, 1]]``.

    Examples
    --------
    >>> import numpy as np
    >>> Translation().apply(np.array([0.5, -0.25]), np.array([[0.0, 0.0]]))
    array([[ 0.5 , -0.25]])
    """

    name = "translation"
    basis = np.stack([_unit(0, 2), _unit(1, 2)])


class Similarity(Warp):
    """Similarity ``(a, b, tx, ty)``: ``M = [[1+a, -b, tx], [b, 1+a, ty], [0, 0, 1]]``.

    Examples
    --------
    >>> import numpy as np
    >>> theta = np.pi / 2  # a quarter turn: a = cos - 1, b = sin
    >>> p = np.array([np.cos(theta) - 1, np.sin(theta), 0.0, 0.0])
    >>> Similarity().apply(p, np.array([[1.0, 0.0]])).round(12) + 0.0
    array([[0., 1.]])
    """

    name = "similarity"
    basis = np.stack(
        [_unit(0, 0) + _unit(1, 1), _unit(1, 0) - _unit(0, 1), _unit(0, 2), _unit(1, 2)]
    )


class Affine(Warp):
    """Affine, [LL17] eq. (9): ``M = [[1+p1, p2, p3], [p4, 1+p5, p6], [0, 0, 1]]``.

    Examples
    --------
    >>> import numpy as np
    >>> Affine().matrix(np.array([1.0, 0, 0.5, 0, 0, 0]))  # scale x by 2, shift by 0.5
    array([[2. , 0. , 0.5],
           [0. , 1. , 0. ],
           [0. , 0. , 1. ]])
    """

    name = "affine"
    basis = np.stack([_unit(i, j) for i in range(2) for j in range(3)])


class Homography(Warp):
    """Homography: affine plus the bottom row ``[p7, p8, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> warp = Homography()
    >>> corners = warp.corners()
    >>> moved = corners + np.array([[0.1, 0.0], [0.0, 0.1], [-0.1, 0.0], [0.0, -0.1]])
    >>> p = warp.fit(corners, moved)  # exact from four points
    >>> bool(np.allclose(warp.apply(p, corners), moved))
    True
    """

    name = "homography"
    basis = np.stack([_unit(i, j) for i in range(3) for j in range(3) if (i, j) != (2, 2)])
    projective = True


_WARPS = {w.name: w for w in (Translation, Similarity, Affine, Homography)}


def warp_from_name(name: str | Warp) -> Warp:
    """``"affine"`` -> ``Affine()``; a Warp passes through.

    >>> warp_from_name("homography").n_params
    8
    """
    if isinstance(name, Warp):
        return name
    try:
        return _WARPS[str(name).lower()]()
    except KeyError:
        raise ValueError(f"warp must be one of {sorted(_WARPS)}, got {name!r}") from None
