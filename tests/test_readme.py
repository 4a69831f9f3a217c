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


def test_icstn_from_iclk_is_iclk_with_tol_zero_and_until_the_first_freeze():
    """What the README says: every iterate equal with ``tol=0``; with the default ``tol`` equal
    until IC-LK freezes an alignment, after which the network goes on and IC-LK does not."""
    import torch

    from lkstn import ICLK, ICSTN, Affine
    from lkstn.perturb import perturb
    from lkstn.problems import planar_problem

    problem = planar_problem((50, 50))
    starts = perturb(Affine(), problem.p_true, 5.0, (50, 50), np.random.default_rng(0), n=40)
    image = torch.as_tensor(problem.image, dtype=torch.float64)[None, None].expand(40, -1, -1, -1)
    for tol, n_iter in ((0.0, 20), (1e-4, 20)):
        iclk = ICLK(problem.template, warp=Affine(), n_iter=n_iter, tol=tol)
        ref = iclk.align(problem.image, starts).history  # (21, 40, 6)
        hist = ICSTN.from_iclk(iclk).align(image, torch.as_tensor(starts)).history.numpy()
        # the same float64 arithmetic in another order (einsum vs matmul): 1e-9 canonical
        # units is far below the 1e-4 steps at which IC-LK freezes
        same = np.abs(hist - ref).max(-1) < 1e-9  # (21, 40)
        if tol == 0:
            assert same.all()
        else:
            frozen = np.linalg.norm(np.diff(ref, axis=0), axis=-1) <= tol  # (20, 40)
            first = np.where(frozen.any(0), frozen.argmax(0) + 1, n_iter)  # row of the freeze
            for j in range(40):
                assert same[: first[j] + 1, j].all()
            assert not same.all()  # some alignments froze, and the network moved on
