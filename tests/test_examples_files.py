"""The two user-facing examples run and reach what the guide says (slow: they write files)."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
def test_register_pair_example(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["register_pair.py", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(EXAMPLES / "register_pair.py"), run_name="__main__")
    assert exc.value.code == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "True" in r]
    assert len(rows) == 6  # every photo converged
    assert all(float(r.split("|")[3]) < 0.5 for r in rows)  # final corner error, px
    assert len(list(tmp_path.glob("*_overlay.png"))) == 6


@pytest.mark.slow
def test_track_sequence_example(tmp_path, monkeypatch, capsys):
    argv = ["track_sequence.py", "--out", str(tmp_path), "--n-frames", "15"]  # the jump is at 12
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(EXAMPLES / "track_sequence.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert exc.value.code == 0, out
    assert "15/15 frames tracked" in out and "(re-detected)" in out
    assert (tmp_path / "track_frames.png").is_file()
