"""Where a number was measured: a fingerprint of the machine, recorded beside every figure.

Speed depends on the CPU (model, vector extensions), on the BLAS kernel that NumPy's OpenBLAS
picks for that CPU (or that ``OPENBLAS_CORETYPE`` forces), on the library versions and on the
load. Every benchmark writes :func:`fingerprint` into its JSON, so that two figures can be
compared only when their machines match.

Glossary: ``flags`` the CPU features that matter for the kernels (``avx2``, ``avx512f``,
``fma``); ``blas`` threadpoolctl's description of each BLAS/OpenMP library loaded.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = ["cpu_info", "fingerprint"]

FLAGS = ("avx", "avx2", "avx512f", "fma", "sse4_2", "neon", "asimd")
"""CPU features reported when present (x86 vector extensions; ARM's NEON/ASIMD)."""


def cpu_info(text: str | None = None) -> dict[str, Any]:
    """CPU vendor, model name, family/model/stepping and flags, from ``/proc/cpuinfo``.

    Parameters
    ----------
    text : str, optional
        The contents of ``/proc/cpuinfo``; read from the file when omitted (Linux). Elsewhere
        only ``platform.processor()`` is known.

    Examples
    --------
    >>> sample = "vendor_id : AuthenticAMD\\ncpu family : 25\\nmodel : 1\\n"
    >>> sample += "model name : AMD EPYC 7B13\\nflags : fpu avx avx2 fma\\n"
    >>> info = cpu_info(sample)
    >>> info["model_name"], info["family"], info["flags"]
    ('AMD EPYC 7B13', 25, ['avx', 'avx2', 'fma'])
    """
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" not in line:
            if fields and not line.strip():  # the first processor is enough
                break
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        fields.setdefault(key, value)
    present = set((fields.get("flags") or fields.get("Features") or "").split())

    def number(key: str) -> int | None:
        try:
            return int(fields[key], 0)
        except (KeyError, ValueError):
            return None

    return {
        "model_name": fields.get("model name") or platform.processor() or platform.machine(),
        "vendor": fields.get("vendor_id"),
        "family": number("cpu family"),
        "model": number("model"),
        "stepping": number("stepping"),
        "flags": [f for f in FLAGS if f in present],
    }


def _version(module: str) -> str | None:
    if module not in sys.modules:  # report only what the measurement imported: importing
        try:  # torch or OpenCV here would itself cost seconds
            importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        return "not imported"
    return getattr(sys.modules[module], "__version__", None)


def _blas() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        return []
    keys = ("user_api", "internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{k: lib.get(k) for k in keys if k in lib} for lib in threadpool_info()]


def fingerprint() -> dict[str, Any]:
    """The machine and software a measurement ran on, as a JSON-ready dict.

    CPU (model name, vendor, family/model/stepping, flags), logical core count, load averages
    (1, 5, 15 min), Python and the versions of numpy, scipy, torch and OpenCV (those imported by
    the measurement; "not imported" for the others installed), the BLAS in use with its kernel
    (threadpoolctl), ``OPENBLAS_CORETYPE`` if set, and torch's thread count when torch is loaded.

    Examples
    --------
    >>> fp = fingerprint()
    >>> sorted(fp)[:4]
    ['blas', 'cores', 'cpu', 'host']
    """
    fp: dict[str, Any] = {
        "blas": _blas(),
        "cores": os.cpu_count(),
        "cpu": cpu_info(),
        "host": platform.node(),
        "load_average": [round(v, 2) for v in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in ("numpy", "scipy", "torch", "cv2", "lkstn")},
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        fp["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            fp["gpu"] = torch.cuda.get_device_name()
    return fp
