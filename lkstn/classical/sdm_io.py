"""SDM model files: one ``.npz`` of plain arrays with the configuration as JSON text, no pickle.

Members (all float64 unless said)::

    config        0-d unicode string: JSON {format, version, warp, template_shape, n_channels,
                  n_stages, alpha, features, channel_axis, tol, pool, min_score, n_features, mask,
                  photometric, residual_px}
    R             (n_stages, P, D)   the regressors, stage by stage
    b             (n_stages, P)
    template      (h, w) or (h, w, C)
    train_errors  (n_stages + 1,)    NaN where unknown
    mask          (h, w)             only when config["mask"] is true

Reading checks everything before building a model: the zip's declared sizes (at most
:data:`MAX_BYTES` in all, before anything is inflated), the member names, ``allow_pickle=False``,
the JSON fields and their types, each array's dtype, shape and finiteness against the
configuration. Any failure is one ``ValueError`` naming the file and the field.

Glossary: ``P`` warp parameters, ``D`` feature length, ``C`` channels.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # sdm.py imports this module
    from lkstn.classical.sdm import SDM

__all__ = ["FORMAT", "MAX_BYTES", "VERSION", "load_sdm", "save_sdm"]

FORMAT, VERSION = "lkstn.SDM", 1
MAX_BYTES = 1 << 30
"""Largest model file (uncompressed bytes) that :func:`load_sdm` inflates."""

_ARRAYS = ("R", "b", "template", "train_errors")
_KEYS = {
    "format": str, "version": int, "warp": str, "template_shape": list,
    "n_channels": (int, type(None)), "n_stages": int, "alpha": float, "features": str,
    "channel_axis": (int, type(None)), "tol": float, "pool": int, "min_score": float,
    "n_features": int, "mask": bool, "photometric": (str, type(None)), "residual_px": float,
}  # fmt: skip


def save_sdm(sdm: SDM, path: str | Path) -> Path:
    """Write a fitted SDM to ``path`` (``.npz`` appended if missing); returns the path.

    One ``.npz`` of float64 arrays and the configuration as JSON text, no pickle (the module
    docstring lists the members). ``RuntimeError`` before ``fit``; ``ValueError`` for a model
    whose features are a callable (only ``"pixels"`` and ``"hog"`` can be named in a file).
    """
    if not isinstance(sdm.features, str):
        raise ValueError(f"features: only named features can be saved, got {sdm.features!r}")
    regressors, T = sdm.regressors, sdm.template  # RuntimeError before fit
    errors = sdm.train_errors
    config = {
        "format": FORMAT, "version": VERSION, "warp": sdm.warp.name,
        "template_shape": list(sdm.template_shape),
        "n_channels": None if sdm.channel_axis is None else int(T.shape[-1]),
        "n_stages": sdm.n_stages, "alpha": sdm.alpha, "features": sdm.features,
        "channel_axis": sdm.channel_axis, "tol": sdm.tol, "pool": sdm.pool,
        "min_score": sdm.min_score, "n_features": int(regressors[0][0].shape[1]),
        "mask": sdm.mask is not None, "photometric": sdm.photometric,
        "residual_px": sdm.residual_px,
    }  # fmt: skip
    arrays = {
        "config": np.array(json.dumps(config)),
        "R": np.stack([R for R, _ in regressors]),  # (n_stages, P, D)
        "b": np.stack([b for _, b in regressors]),  # (n_stages, P)
        "template": T,
        "train_errors": np.full(sdm.n_stages + 1, np.nan) if errors is None else errors,
    }
    if sdm.mask is not None:
        arrays["mask"] = sdm.mask
    path = Path(path)
    path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
    np.savez(path, **arrays)
    return path


def load_sdm(cls: type[SDM], path: str | Path) -> SDM:
    """Read, check and rebuild an SDM written by :func:`save_sdm` (``SDM.load(path)``).

    Any file it did not write, or a damaged one, gives one ``ValueError`` naming the file and
    the field; nothing larger than :data:`MAX_BYTES` is inflated.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    config, arrays = _read(path)

    def fail(field: str, why: str) -> ValueError:
        return ValueError(f"{path}: {field}: {why}")

    h, w = config["template_shape"]
    try:
        sdm = cls(
            (h, w), config["warp"], config["n_stages"], config["alpha"], config["features"],
            channel_axis=config["channel_axis"], tol=config["tol"], pool=config["pool"],
            min_score=config["min_score"], mask=arrays.get("mask"),
            photometric=config["photometric"], residual_px=config["residual_px"],
        )  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise fail("config", str(exc)) from None
    S, P, C = sdm.n_stages, sdm.warp.n_params, config["n_channels"]
    t_shape = (h, w) if C is None else (h, w, C)
    want = {"R": (S, P, config["n_features"]), "b": (S, P), "template": t_shape,
            "train_errors": (S + 1,)}  # fmt: skip
    for name, shape in want.items():
        if arrays[name].shape != shape:
            raise fail(name, f"expected shape {shape}, got {arrays[name].shape}")
    try:
        sdm.set_regressors(list(zip(arrays["R"], arrays["b"], strict=True)), arrays["template"])
    except ValueError as exc:
        raise fail("R", str(exc)) from None
    if sdm.n_features != config["n_features"]:
        raise fail("n_features", f"{config['n_features']} but the features give {sdm.n_features}")
    errors = arrays["train_errors"]
    sdm.train_errors = None if np.isnan(errors).all() else errors
    return sdm


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The configuration and the arrays, each checked on its own."""

    def fail(field: str, why: str) -> ValueError:
        return ValueError(f"{path}: {field}: {why}")

    if not zipfile.is_zipfile(path):
        raise fail("file", "not an SDM model file (not an .npz archive)")
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    names = {i.filename.removesuffix(".npy") for i in infos}
    allowed = {"config", "mask", *_ARRAYS}
    if not {"config", *_ARRAYS} <= names or not names <= allowed or len(infos) != len(names):
        raise fail("file", f"not an SDM model file (members {sorted(names)})")
    total = sum(i.file_size for i in infos)
    if total > MAX_BYTES:
        raise fail("file", f"declares {total} bytes uncompressed, over the {MAX_BYTES} limit")
    arrays, name = {}, "file"
    try:
        with np.load(path, allow_pickle=False) as npz:
            for name in sorted(names):
                arrays[name] = npz[name]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise fail(name, f"unreadable ({type(exc).__name__}: {exc})") from None
    config = _config(arrays.pop("config"), fail)
    if config["mask"] != ("mask" in arrays):
        raise fail("mask", "present and declared differ")
    for name, a in arrays.items():
        if a.dtype != np.float64:
            raise fail(name, f"expected float64, got {a.dtype}")
        if name != "train_errors" and not np.isfinite(a).all():
            raise fail(name, "non-finite entries")
    return config, arrays


def _config(text: np.ndarray, fail: Callable[[str, str], ValueError]) -> dict:
    if text.shape != () or text.dtype.kind != "U":
        raise fail("config", f"expected a JSON string, got {text.dtype} {text.shape}")
    try:
        config = json.loads(str(text))
    except json.JSONDecodeError as exc:
        raise fail("config", f"not JSON ({exc.msg})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise fail("config", f"not an SDM model file (format is not {FORMAT!r})")
    if config.get("version") != VERSION:
        raise fail("version", f"{config.get('version')!r}; this lkstn reads version {VERSION}")
    if set(config) != set(_KEYS):
        raise fail("config", f"fields {sorted(config)}, expected {sorted(_KEYS)}")
    for key, kind in _KEYS.items():
        value = config[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = config[key] = float(value)
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            raise fail(key, f"wrong type {type(value).__name__}")
    shape = config["template_shape"]
    if len(shape) != 2 or not all(isinstance(s, int) and 2 <= s <= 1 << 16 for s in shape):
        raise fail("template_shape", f"expected [h, w] with 2 <= h, w <= 65536, got {shape}")
    if config["n_channels"] is not None and not 1 <= config["n_channels"] <= 64:
        raise fail("n_channels", f"expected 1..64, got {config['n_channels']}")
    return config
