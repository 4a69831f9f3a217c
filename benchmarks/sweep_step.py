"""Per-step cost of [LL17] Table 1's 20 trainings: one batched sweep against 20 separate runs.

Both sides train the 20 models of ``lkstn reproduce planar`` (5 depths x 4 sigma, first phase of
the recipe) from the same initial weights for ``--steps`` steps:

separate
    ``lkstn.learned.train.train`` on each model in turn (what ``--sweep separate`` runs).
batched
    one ``lkstn.learned.sweep.train_sweep`` call on all 20 (what ``lkstn reproduce planar``
    runs by default).

Each call includes drawing the batches, forward, backward, the Adam update and the final
evaluation on ``n_test = 100`` starts; no run directories. The two sides alternate over
``--rounds`` rounds in this one process, so a change of machine load hits both; the median
seconds per step (all 20 models) and their ratio are reported with the CPU model, the torch
thread count and the load average before and after.

Usage::

    python benchmarks/sweep_step.py --threads 1 --rounds 5 --steps 20 --out sweep_step.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)

    import torch

    from lkstn.experiments.planar import SHAPE, Recipe, build_model
    from lkstn.experiments.planar_sweep import phase_config
    from lkstn.experiments.problems import planar_problem
    from lkstn.learned.streams import AlignmentData
    from lkstn.learned.sweep import train_sweep
    from lkstn.learned.train import train
    from lkstn.machine import fingerprint
    from lkstn.warps import Affine

    torch.set_num_threads(args.threads)
    recipe = Recipe()
    prob = planar_problem(SHAPE, warp=Affine())
    data = AlignmentData(
        torch.as_tensor(prob.image, dtype=torch.float32)[None],
        torch.as_tensor(prob.p_true, dtype=torch.float32),
    )
    cells = [(s, d) for s in recipe.sigmas for d in recipe.depths]
    models = [build_model(prob, d, s, recipe) for s, d in cells]
    configs = [replace(phase_config(recipe, s, d, 0), n_steps=args.steps) for s, d in cells]
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {"separate": [], "batched": []}
    for _ in range(args.rounds):
        fresh = copy.deepcopy(models)
        t0 = time.perf_counter()
        for m, c in zip(fresh, configs, strict=True):
            train(m, c, data)
        times["separate"].append((time.perf_counter() - t0) / args.steps)
        fresh = copy.deepcopy(models)
        t0 = time.perf_counter()
        train_sweep(fresh, configs, [data] * len(fresh))
        times["batched"].append((time.perf_counter() - t0) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "cpu": cpu_model(),
        "fingerprint": fingerprint(),
        "torch": torch.__version__,
        "threads": args.threads,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "seconds_per_step_all_20": med,
        "all_rounds": times,
        "ratio_separate_over_batched": med["separate"] / med["batched"],
        "table1_training_minutes_at_this_rate": {
            k: v * recipe.n_steps / 60 for k, v in med.items()
        },
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
