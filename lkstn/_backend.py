"""A two-line dispatch between NumPy and torch, so that one implementation serves both.

Only what the warps need: which namespace an array belongs to, and constants made in its
dtype and device. torch is imported only when a torch tensor is actually passed in.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias, TypeGuard

import numpy as np

if TYPE_CHECKING:  # precise for type checkers, without importing torch at run time
    import numpy.typing as npt
    import torch

    Array: TypeAlias = np.ndarray | torch.Tensor
    ArrayLike: TypeAlias = npt.ArrayLike | torch.Tensor  # what np.asarray or a tensor accepts
else:
    Array = Any  # np.ndarray or torch.Tensor
    ArrayLike = Any  # anything np.asarray accepts, or a torch.Tensor


def is_torch(x: object) -> TypeGuard[torch.Tensor]:
    """True when ``x`` is a torch tensor (checked without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def namespace(*arrays: object) -> ModuleType:
    """``torch`` if any argument is a tensor, else ``numpy``."""
    if any(is_torch(a) for a in arrays):
        return sys.modules["torch"]
    return np


def asarray(x: ArrayLike, like: Array | None = None) -> Array:
    """``x`` as a floating array of the kind (and dtype/device) of ``like``."""
    if like is not None and is_torch(like):
        torch = sys.modules["torch"]
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    if is_torch(x):
        return x if x.is_floating_point() else x.double()
    arr = np.asarray(x)
    if like is not None:
        return arr.astype(np.result_type(like.dtype, np.float32), copy=False)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def constant(values: ArrayLike, like: Array) -> Array:
    """A constant array with the dtype and device of ``like``."""
    if is_torch(like):
        torch = sys.modules["torch"]
        return torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return np.asarray(values, dtype=like.dtype)


def all_finite(x: Array) -> bool:
    """Whether every entry of ``x`` is finite."""
    if is_torch(x):
        return bool(sys.modules["torch"].isfinite(x).all())
    return bool(np.isfinite(x).all())


def same_kind(a: Array, b: Array) -> tuple[Array, Array]:
    """Both as torch tensors (dtype/device of the tensor) when either one is."""
    if is_torch(a) and not is_torch(b):
        return a, asarray(b, like=a)
    if is_torch(b) and not is_torch(a):
        return asarray(a, like=b), b
    return a, b
