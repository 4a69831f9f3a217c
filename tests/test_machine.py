"""The machine fingerprint recorded beside every benchmark figure (:mod:`lkstn.machine`)."""

from __future__ import annotations

import json
import subprocess
import sys

from lkstn.machine import cpu_info, fingerprint

AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
stepping\t: 0
flags\t\t: fpu sse4_2 avx fma avx2 bmi2

processor\t: 1
vendor_id\t: SomethingElse
"""


def test_cpu_info_reads_the_first_processor_and_the_flags_that_matter() -> None:
    info = cpu_info(AMD)
    assert info["model_name"] == "AMD EPYC 7B13" and info["vendor"] == "AuthenticAMD"
    assert (info["family"], info["model"], info["stepping"]) == (25, 1, 0)
    assert info["flags"] == ["avx", "avx2", "fma", "sse4_2"]  # no avx512f on this CPU


def test_cpu_info_without_cpuinfo_still_names_something() -> None:
    info = cpu_info("")
    assert isinstance(info["model_name"], str) and info["flags"] == []
    assert info["family"] is None


def test_fingerprint_is_json_and_names_the_blas_kernel_and_coretype() -> None:
    import numpy as np

    np.ones((4, 4)) @ np.ones((4, 4))  # NumPy's BLAS is loaded
    code = (
        "import json, numpy; from lkstn.machine import fingerprint; "
        "print(json.dumps(fingerprint()))"
    )
    env = {"OPENBLAS_CORETYPE": "Prescott", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    fp = json.loads(out.stdout)
    assert fp["openblas_coretype"] == "Prescott"
    assert fp["versions"]["numpy"] == np.__version__ and fp["cores"] >= 1
    blas = [lib for lib in fp["blas"] if lib.get("user_api") == "blas"]
    assert blas and all("internal_api" in lib for lib in blas)
    assert len(fp["load_average"]) == 3
    json.dumps(fingerprint())  # in this process too
