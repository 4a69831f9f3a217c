"""``benchmarks/sdm_template.py`` in miniature: one photo, a 32 px template, a few starts."""

from __future__ import annotations

import json


def test_sdm_template_benchmark_runs_and_records_its_machine(tmp_path, capsys, load_benchmark):
    bench = load_benchmark("sdm_template")
    out = tmp_path / "sdm.json"
    argv = ["--size", "32", "--photos", "camera", "--n-test", "20", "--n-samples", "200"]
    report = bench.main([*argv, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    (row,) = report["rows"]
    assert row["photo"] == "camera" and row["n_features"] == 32 * 32
    # starts ~2 px off (sigma 1.28 px); the fitted cascade lands well inside a pixel
    assert row["sdm"]["median_px"] < 0.25 * row["start_median_px"]
    assert 0 <= row["sdm"]["false_pos"] <= row["sdm"]["flag"] <= 1
    assert report["machine"]["cpus"] >= 1 and len(report["machine"]["load_start"]) == 3
    assert "camera" in capsys.readouterr().out
