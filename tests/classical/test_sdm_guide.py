"""``docs/guide/sdm.md``: its example runs as written and prints what the page says."""

from __future__ import annotations

import re
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "sdm.md"


def test_guide_example_runs(tmp_path, monkeypatch, capsys):
    text = GUIDE.read_text()
    block = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    monkeypatch.chdir(tmp_path)  # the example saves astronaut_face.npz here
    namespace: dict = {}
    exec(compile(block, str(GUIDE), "exec"), namespace)
    converged, score, error = capsys.readouterr().out.split()
    assert (tmp_path / "astronaut_face.npz").is_file()
    # the page shows "# True 1.0 0.014": the same flag, ZNCC to 3 decimals, error to 0.01 px
    shown = re.search(r"# (True|False) ([\d.]+) ([\d.]+)", block).groups()
    assert converged == shown[0]
    assert abs(float(score) - float(shown[1])) < 1e-3
    assert abs(float(error) - float(shown[2])) < 0.01
