"""How far CUDA-graph training drifts from eager training, against eager's own run-to-run drift.

    python tools/graph_vs_eager.py [--steps 30] [--out FILE.json]

Trains the MNIST IC-STN-4(a) of tests/learned/test_graphed.py on random digits for ``--steps``
steps four ways per dtype (eager, eager again, graphed, graphed again; float32 and float64) and
prints the largest parameter difference of each pair after every few steps. If graphs computed
something else, graph-vs-eager would exceed eager-vs-eager, and stay large in float64, where
cuDNN's reordered sums are ~1e-16 rather than ~1e-7.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "learned"))
from test_graphed import digits, mnist_icstn4  # noqa: E402

from lkstn.learned.train import TrainConfig, train  # noqa: E402


def params_after(steps: int, dtype: torch.dtype, graph: bool) -> list[torch.Tensor]:
    """The parameters after ``steps`` steps of SGD, eager or graphed."""
    config = TrainConfig(
        n_steps=steps,
        sigma=3.5,
        optimizer="sgd",
        lr_predictor=1e-3,
        lr_classifier=1e-2,
        eval_every=steps,
        progress=False,
        cuda_graph=graph,
    )
    model = mnist_icstn4().to("cuda", dtype)
    train(model, config, digits())
    return [p.detach().cpu().double() for p in model.parameters()]


def _largest_difference(runs: dict, a: str, b: str) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(runs[a], runs[b], strict=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 5, 30])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    for dtype in (torch.float64, torch.float32):
        for n in args.steps:
            runs = {
                k: params_after(n, dtype, k.startswith("graph"))
                for k in ("eager", "eager2", "graph", "graph2")
            }
            diff = partial(_largest_difference, runs)
            row = {
                "dtype": str(dtype),
                "steps": n,
                "eager-eager": diff("eager", "eager2"),
                "graph-graph": diff("graph", "graph2"),
                "graph-eager": diff("graph", "eager"),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
