"""Re-measure the test error of trained rows from their checkpoints, beside the logged value.

    python tools/reevaluate.py mnist runs/mnist-fast50k-lrp1e-4 [--rows "IC-STN-4(a)" ...]
        [--data /work/shared/data] [--threads 2]

For each row folder of a ``lkstn reproduce`` output that holds a ``checkpoint.pt``: rebuild the
model, load the weights, rebuild the data exactly as ``run.json`` says the row was trained (frame,
standardisation, seed) and evaluate on the whole fixed perturbed test set, the evaluation that
training logs. Prints the step of the checkpoint, the error measured now and the error logged at
that step, so that numbers in the docs can be checked without retraining.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lkstn.experiments import classification as cl
from lkstn.experiments.gtsrb import GTSRB
from lkstn.experiments.mnist import MNIST
from lkstn.learned.checkpoint import load_checkpoint
from lkstn.learned.train import _evaluate

EXPERIMENTS = {"mnist": MNIST, "gtsrb": GTSRB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("out", type=Path, help="a `lkstn reproduce --out` folder")
    parser.add_argument("--rows", nargs="*", help="row names (default: every row with a run)")
    parser.add_argument("--data", default="/work/shared/data")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    exp = EXPERIMENTS[args.experiment]
    rows = [exp.row(n) for n in args.rows] if args.rows else exp.rows
    cache: dict[tuple, object] = {}
    for row in rows:
        run_dir = args.out / row.slug
        if not (run_dir / "checkpoint.pt").exists():
            continue
        run = json.loads((run_dir / "run.json").read_text())
        key = (run.get("frame", "own"), run.get("standardize", False), run["seed"])
        if key not in cache:
            data, _ = cl.load_data(exp, args.data, seed=run["seed"], frame=key[0],
                                   standardize=key[1])  # fmt: skip
            cache[key] = data.to("cpu", torch.float32)
        data = cache[key]
        model = cl.build_model(exp, row, torch.Generator().manual_seed(run["seed"]))
        step = load_checkpoint(run_dir / "checkpoint.pt", model).step
        aligner = model.aligner  # every row has one (the CNN's is an empty CSTN)
        test = data.test_set(aligner.warp, aligner.template_shape, cl.SIGMA, 100, run["seed"])
        start = time.time()
        measured = _evaluate(model, data, test)["test_error"]
        logged = [
            json.loads(line)
            for line in (run_dir / "progress.jsonl").read_text().splitlines()
            if json.loads(line)["step"] == step
        ]
        at_step = logged[-1]["test_error"] if logged else float("nan")
        print(f"{exp.name} {row.name:12} step {step:6d}: test error now {measured:.2f} %, "
              f"logged {at_step:.2f} % ({time.time() - start:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
