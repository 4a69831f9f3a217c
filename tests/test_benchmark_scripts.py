"""The convergence benchmark against OpenCV's ECC and its table tool, in miniature.

The full runs take minutes (``benchmarks/README.md``); here a few starts per sigma check that the
method names carry their settings, that the ``--methods`` filter matches them without their
numbers, and that the table tool counts cells against ECC and ECC multiscale.
"""

from __future__ import annotations

import json

import pytest


def test_classical_vs_ecc_quick_run_and_its_table(tmp_path, capsys, monkeypatch, load_benchmark):
    pytest.importorskip("cv2")
    bench = load_benchmark("classical_vs_ecc")
    out = tmp_path / "ecc.json"
    methods = "ICLK,ECC,ICLK-g-gb,ICLK-g-gb-pyr,ECC-ms"
    argv = ["--quick", "--skip-speed", "--n-trials", "6", "--methods", methods, "--out", str(out)]
    assert bench.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["gradient_sigma"] == 3.0 and data["n_trials"] == 6
    first = data["convergence"][0]  # affine 50x50
    names = list(first["results"][0]["percent_converged"])
    assert names[:3] == ["ICLK", "ECC", "ICLK-g3-gb"] and names[3].startswith("ICLK-g3-gb-pyr")
    if bench.HAS_MULTISCALE:
        assert names[4].startswith("ECC-ms")
    sigma1 = first["results"][0]
    assert sigma1["sigma"] == 1.0 and sigma1["percent_converged"]["ICLK-g3-gb"] == 100.0

    table = load_benchmark("convergence_table")
    capsys.readouterr()
    monkeypatch.setattr("sys.argv", ["convergence_table.py", str(out)])
    table.main()
    text = capsys.readouterr().out
    assert "| affine 50x50, sigma | ICLK | ECC | ICLK-g3-gb |" in text
    assert "cells at or above ECC (of 10): ICLK " in text  # 5 sigmas x 2 problems (--quick)
    if bench.HAS_MULTISCALE:
        assert "cells at sigma >= 5 above ECC-ms (of 6): ICLK-g3-gb-pyr " in text


def test_family_names_drop_their_numbers(load_benchmark):
    pytest.importorskip("cv2")
    bench = load_benchmark("classical_vs_ecc")
    assert bench._family("ICLK-g3-gb-pyr2") == "ICLK-g-gb-pyr"
    assert bench._family("ICLK-g1.5") == "ICLK-g"
    assert bench._family("ECC-ms3") == "ECC-ms"


def test_paired_counts_add_up(capsys, load_benchmark):
    pytest.importorskip("cv2")
    tool = load_benchmark("paired_vs_ecc")
    tool.main(["--size", "50", "--sigmas", "1", "6", "--n-trials", "8"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("seed")]
    assert len(rows) == 2
    for row in rows:
        n = dict(part.rsplit(" ", 1) for part in row.split(": ", 1)[1].split(", "))
        i, e, both = int(n["ICLK"]), int(n["ECC"]), int(n["both"])
        assert i == both + int(n["ICLK only"]) and e == both + int(n["ECC only"])
    assert "sigma 1: ICLK 8, ECC 8, both 8" in rows[0]  # 1 px starts: everyone converges


def test_align_command_times_every_command_and_the_alignments_converge(tmp_path, load_benchmark):
    bench = load_benchmark("align_command")
    out = tmp_path / "align.json"
    assert bench.main(["--repeats", "1", "--photos", "coins", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {row["command"]: row for row in report["rows"]}
    assert list(rows) == [
        "python -c pass",
        "python -c 'import numpy'",
        "lkstn align --no-overlay",
        "lkstn align",
    ]
    assert report["converged"] == [2, 2]  # both lkstn runs exit 0: the start 3 px off is found
    floor, run = rows["python -c 'import numpy'"], rows["lkstn align --no-overlay"]
    assert 0 < floor["wall_best_s"] <= floor["wall_median_s"] and run["cpu_median_s"] > 0
    assert report["machine"]["cpu"]["model_name"]
