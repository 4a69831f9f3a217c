"""The machine fingerprint: keys and types, and flags parsed from sample /proc/cpuinfo text."""

from __future__ import annotations

import json

from lkstn.machine import fingerprint, parse_cpuinfo

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
stepping\t: 1
flags\t\t: fpu sse2 avx fma avx2 bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
flags\t\t: fpu avx512f
"""


def test_parse_cpuinfo_reads_the_first_processor() -> None:
    cpu = parse_cpuinfo(EPYC)
    assert cpu["model_name"] == "AMD EPYC 7B13" and cpu["vendor"] == "AuthenticAMD"
    assert (cpu["family"], cpu["model"], cpu["stepping"]) == (25, 1, 1)
    # avx512f appears only in the second block: the first processor has none
    assert cpu["flags"] == {"avx2": True, "avx512f": False, "fma": True}


def test_parse_cpuinfo_of_nothing() -> None:
    cpu = parse_cpuinfo("")
    assert cpu["model_name"] is None and cpu["family"] is None
    assert not any(cpu["flags"].values())


def test_fingerprint_keys_and_types(monkeypatch) -> None:
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Zen")
    info = fingerprint()
    assert isinstance(info["cpu"]["model_name"], str) and info["cpu"]["model_name"]
    assert set(info["cpu"]["flags"]) == {"avx2", "avx512f", "fma"}
    assert isinstance(info["cpu_count"], int) and info["cpu_count"] >= 1
    assert len(info["load_average"]) == 3
    assert info["versions"]["numpy"] and info["versions"]["python"].count(".") == 2
    assert info["openblas_coretype"] == "Zen"
    assert any(b["user_api"] == "blas" for b in info["blas"])  # numpy's BLAS is found
    json.dumps(info)  # it goes into benchmark JSON files
