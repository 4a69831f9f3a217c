"""The README's quickstart runs as written and says what it claims."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quickstart_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    blocks = [b for b in blocks if "planar_problem" in b]
    assert blocks, "README has no python block of the planar problem"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "converged:" in out
    # the one-linear-layer IC-STN built from IC-LK reproduces its trajectory
    import torch

    iclk, net, problem = namespace["iclk"], namespace["net"], namespace["problem"]
    starts = namespace["starts"][:5]
    ref = iclk.align(problem.image, starts, n_iter=3).history  # (4, 5, 6)
    image = torch.as_tensor(problem.image, dtype=torch.float64)[None, None]
    hist = net.align(image, torch.as_tensor(starts), n_iter=3).history.numpy()
    assert np.abs(hist - ref).max() < 1e-6
