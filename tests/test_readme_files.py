"""The README's quickstart on image files runs as written and finds the template."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def test_file_quickstart_recovers_the_cut(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    block = next(b for b in blocks if "read_image" in b)
    monkeypatch.chdir(tmp_path)  # it writes image.png and template.png
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    out = namespace["out"]
    # the template is astronaut()[120:248, 180:308]: a pure shift by (180, 120) pixels; the
    # only error is the aligner's, far below a hundredth of a pixel on an exact crop
    np.testing.assert_allclose(out.H, [[1, 0, 180], [0, 1, 120], [0, 0, 1]], atol=0.01)
    assert out.converged and out.score > 0.999
    assert "score" in capsys.readouterr().out
