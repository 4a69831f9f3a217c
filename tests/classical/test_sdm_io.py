"""SDM model files: a saved and reloaded model aligns as the original; damaged files are refused
with one ValueError naming the file and the field."""

from __future__ import annotations

import json
import zipfile
from functools import cache

import numpy as np
import pytest
from scipy import ndimage

from lkstn import SDM, Homography
from lkstn.classical import sdm_io
from lkstn.perturb import perturb


@cache
def fitted() -> tuple[SDM, np.ndarray]:
    """A small masked, pooled homography SDM fitted on a smooth texture, and that texture."""
    T = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal((40, 36)), 2.0)
    mask = np.ones((40, 36))
    mask[5:15, 20:30] = 0.0
    sdm = SDM.for_template(T, warp="homography", mask=mask, pool=2, n_samples=200, sigma_px=1.5)
    return sdm, T


def test_round_trip_aligns_as_the_original(tmp_path):
    sdm, T = fitted()
    path = sdm.save(tmp_path / "model")  # the suffix is added
    assert path.name == "model.npz"
    again = SDM.load(path)
    for name in ("template_shape", "n_stages", "alpha", "features", "pool", "tol", "min_score"):
        assert getattr(again, name) == getattr(sdm, name), name
    assert again.warp == sdm.warp or type(again.warp) is type(sdm.warp) is Homography
    np.testing.assert_array_equal(again.mask, sdm.mask)
    np.testing.assert_array_equal(again.train_errors, sdm.train_errors)
    starts = perturb(Homography(), np.zeros(8), 1.5, T.shape, np.random.default_rng(4), n=50)
    a, b = sdm.align(T, starts), again.align(T, starts)
    # the same arrays run through the same code: equal up to rounding (BLAS may differ in the
    # last bit between runs on some kernels, far below the 1e-12 canonical units allowed here)
    np.testing.assert_allclose(b.history, a.history, rtol=0, atol=1e-12)
    np.testing.assert_allclose(b.score, a.score, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(b.converged, a.converged)
    assert a.converged.mean() > 0.9  # the model is worth saving


def test_colour_round_trip(tmp_path):
    T = ndimage.gaussian_filter(np.random.default_rng(1).random((24, 24, 3)), (1.5, 1.5, 0))
    sdm = SDM.for_template(T, warp="affine", n_samples=100, sigma_px=1.0)
    again = SDM.load(sdm.save(tmp_path / "rgb.npz"))
    assert again.channel_axis == -1 and again.template.shape == (24, 24, 3)
    p = np.zeros((3, 6)) + [[0.02], [0.0], [-0.02]]
    np.testing.assert_allclose(again.align(T, p).history, sdm.align(T, p).history, atol=1e-12)


def test_save_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(RuntimeError, match="not fitted"):
        SDM(template_shape=(8, 8)).save(tmp_path / "x.npz")
    sdm, T = fitted()
    custom = SDM(
        template_shape=(40, 36), n_stages=1, features=lambda s, channel_axis=None: s[..., 0, :2]
    )
    custom.fit_perturbed(T, np.zeros(6), 1.0, 20, np.random.default_rng(0))
    with pytest.raises(ValueError, match="features"):
        custom.save(tmp_path / "custom.npz")


def _members(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _config(members) -> dict:
    return json.loads(str(members["config"]))


def _rewrite(tmp_path, change) -> str:
    """The fitted model saved, one change applied to its members, written back as an npz."""
    sdm, _ = fitted()
    members = _members(sdm.save(tmp_path / "good.npz"))
    change(members)
    path = tmp_path / "bad.npz"
    np.savez(path, **members)
    return str(path)


def _set_config(**fields):
    def change(m):
        m["config"] = np.array(json.dumps({**_config(m), **fields}))

    return change


def _drop_config(key):
    def change(m):
        c = _config(m)
        del c[key]
        m["config"] = np.array(json.dumps(c))

    return change


def _set(name, value):
    def change(m):
        m[name] = value(m[name]) if callable(value) else value

    return change


def _nan_at_first(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


DAMAGE = {
    "format": (_set_config(format="other.model"), "config"),
    "version": (_set_config(version=2), "version"),
    "missing field": (_drop_config("pool"), "config"),
    "field type": (_set_config(pool="2"), "pool"),
    "bool as int": (_set_config(n_stages=True), "n_stages"),
    "config template_shape": (_set_config(template_shape=[40, -1]), "template_shape"),
    "bad warp": (_set_config(warp="projective"), "config"),
    "bad alpha": (_set_config(alpha=-1.0), "config"),
    "bad photometric": (_set_config(photometric="gain"), "config"),
    "bad residual_px": (_set_config(residual_px=-1.0), "config"),
    "config not json": (_set("config", np.array("{not json")), "config"),
    "config not text": (_set("config", np.zeros(3)), "config"),
    "R float32": (_set("R", lambda a: a.astype(np.float32)), "R"),
    "R nan": (_set("R", _nan_at_first), "R"),
    "R shape": (_set("R", lambda a: a[:, :, :-1]), "R"),
    "b shape": (_set("b", lambda a: a[:-1]), "b"),
    "template inf": (_set("template", lambda a: a * np.inf), "template"),
    "template array shape": (_set("template", lambda a: a[:-1]), "template"),
    "n_features": (_set_config(n_features=17), "R"),
    "mask declared absent": (_set_config(mask=False), "mask"),
    "object array": (_set("b", np.array([None, 1.0], dtype=object)), "b"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_load_refuses_damaged_files(tmp_path, case):
    change, field = DAMAGE[case]
    path = _rewrite(tmp_path, change)
    with pytest.raises(ValueError) as info:
        SDM.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}") and "\n" not in message


def test_load_refuses_files_it_did_not_write(tmp_path):
    cases = {
        "absent.npz": None,
        "random.npz": np.random.default_rng(0).bytes(500),
        "image.png": b"\x89PNG\r\n\x1a\n" + bytes(100),
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(ValueError, match=f"^{path}: "):
            SDM.load(path)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))  # an npz, not a model
    with pytest.raises(ValueError, match="not an SDM model file"):
        SDM.load(other)


def test_load_checks_declared_sizes_before_inflating(tmp_path, monkeypatch):
    sdm, _ = fitted()
    path = sdm.save(tmp_path / "m.npz")
    with zipfile.ZipFile(path) as zf:
        total = sum(i.file_size for i in zf.infolist())
    monkeypatch.setattr(sdm_io, "MAX_BYTES", total - 1)
    with pytest.raises(ValueError, match="limit"):
        SDM.load(path)
