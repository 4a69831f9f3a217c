"""Where a number was measured: a fingerprint of the CPU, the BLAS and the library versions.

A speed or a rounding difference means little without the machine behind it: OpenBLAS picks its
kernel by CPU (AVX-512 or AVX2, or what ``OPENBLAS_CORETYPE`` names), so every benchmark records
:func:`fingerprint` beside its numbers.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

FLAGS = ("avx2", "avx512f", "fma")  # the instruction sets that pick a BLAS kernel


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Model name, vendor, family/model/stepping and the flags of :data:`FLAGS`, from
    ``/proc/cpuinfo`` text (its first processor block).

    Parameters
    ----------
    text : str
        The contents of ``/proc/cpuinfo``.

    Returns
    -------
    dict
        ``model_name``, ``vendor``, ``family``, ``model``, ``stepping`` (``None`` when absent)
        and ``flags``: ``{flag: bool}`` for each of :data:`FLAGS`.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())

    def number(key: str) -> int | None:
        value = fields.get(key, "")
        return int(value) if value.isdigit() else None

    return {
        "model_name": fields.get("model name"),
        "vendor": fields.get("vendor_id"),
        "family": number("cpu family"),
        "model": number("model"),
        "stepping": number("stepping"),
        "flags": {flag: flag in flags for flag in FLAGS},
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _blas() -> list[dict[str, Any]]:
    """The BLAS and OpenMP libraries loaded in this process, as threadpoolctl sees them."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "version", "architecture", "num_threads", "prefix")
    return [{k: info.get(k) for k in keys} for info in threadpool_info()]


def fingerprint() -> dict[str, Any]:
    """The machine and software a number was measured on.

    Returns
    -------
    dict
        ``cpu`` (:func:`parse_cpuinfo` of ``/proc/cpuinfo``, or the platform's processor name
        elsewhere), ``machine``, ``cpu_count``, ``load_average`` (1, 5, 15 min), ``versions``
        (python, numpy, scipy, torch, opencv; ``None`` when not installed), ``blas`` (threadpoolctl:
        internal_api, version, architecture (the core type in use), num_threads) and
        ``openblas_coretype`` (the environment variable, ``None`` if unset).
    """
    try:
        cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        cpu = parse_cpuinfo("")
    cpu["model_name"] = cpu["model_name"] or platform.processor() or platform.machine()
    import numpy  # noqa: F401  (load the BLAS so threadpoolctl sees it)

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(v, 2) for v in load],
        "versions": {
            "python": sys.version.split()[0],
            **{
                name: _version(package)
                for name, package in [
                    ("numpy", "numpy"),
                    ("scipy", "scipy"),
                    ("torch", "torch"),
                    ("opencv", "opencv-python-headless"),
                ]
            },
        },
        "blas": _blas(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
    }
