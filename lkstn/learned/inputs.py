"""Input checks of the spatial transformers: the image a network is given, what a predictor returns.

A network holds its constants (sampling grid, warp basis) in one dtype on one device; an image of
another dtype (``uint8``, ``bool``, ``float32`` given to a ``float64`` network) or on another device
is refused with a ``ValueError`` naming ``image``, both dtypes and the conversion, rather than
converted silently (a ``uint8`` image would need a scale the network cannot guess) or failing
inside ``grid_sample``. A predictor must map ``(B, C, h, w)`` to ``(B, P)``: its output is checked
at every call (a shape comparison), and a failure of the first call, whose input comes from the
user's image, is reported as a ``ValueError`` naming the warped image's shape.

Glossary: ``B`` batch, ``C`` channels, ``(h, w)`` the template frame, ``P`` warp parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lkstn.warps import Warp

__all__ = ["check_image", "predict"]

_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def check_image(
    image: Tensor, dtype: torch.dtype, device: torch.device, channels: int | None = None
) -> None:
    """Refuse an ``image`` ``(B, C, H, W)`` of another dtype or device than the network's, or
    with other than ``channels`` channels (where the network knows them, from its template).

    Raises
    ------
    ValueError
        Naming ``image``, what it is and what the network expects.
    """
    if image.dtype != dtype or image.device != device:  # no silent conversion or copy
        hint = " (scale integers, e.g. uint8 / 255)" if not image.is_floating_point() else ""
        raise ValueError(
            f"image is {image.dtype} on {image.device}, the network {dtype} on {device}: "
            f"pass image.to({device.type!r}, {dtype}){hint} or move the network"
        )
    if channels is not None and image.shape[1] != channels:
        raise ValueError(
            f"image has {image.shape[1]} channels, the template {channels}: expected "
            f"(B, {channels}, H, W), got {tuple(image.shape)}"
        )


def predict(f: nn.Module, x: Tensor, warp: Warp, *, first: bool) -> Tensor:
    """``dp = f(x)``, checked to be ``(B, P)`` for ``warp``.

    Parameters
    ----------
    f : nn.Module
        The predictor.
    x : Tensor (B, C, h, w)
        The warped image it sees.
    warp : Warp
    first : bool
        Whether this is the first predictor call of a forward pass: a ``RuntimeError`` there
        (other than out of memory) comes from the user's image and becomes a ``ValueError``.

    Returns
    -------
    Tensor (B, P)
    """
    try:
        dp = f(x)
    except RuntimeError as exc:
        if not first or isinstance(exc, _OUT_OF_MEMORY):
            raise
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"the predictor fails on the warped image {tuple(x.shape)} (channels, frame or "
            f"dtype not what it was built for): {line}"
        ) from exc
    P = warp.n_params
    if not isinstance(dp, Tensor) or tuple(dp.shape) != (x.shape[0], P):
        got = tuple(dp.shape) if isinstance(dp, Tensor) else type(dp).__name__
        raise ValueError(
            f"the predictor must output (B, P) = ({x.shape[0]}, {P}) for {warp!r}, got {got}"
        )
    return dp
