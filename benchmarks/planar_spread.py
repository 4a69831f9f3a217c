"""Run-to-run spread of Table 1 cells: separate trainings vs batched sweeps, several seeds.

For each ``--cells`` entry (``sigma:depth``) and each ``--seeds`` seed, trains the cell with the
recipe of ``lkstn reproduce planar`` (``Recipe(seed=s)``) twice: alone
(:func:`lkstn.experiments.planar.train_model`, what ``--sweep separate`` runs) and in a batched
sweep of all the cells of that seed (:func:`lkstn.experiments.planar_sweep.train_cells`). Every
model is evaluated on the same 1000 fixed test starts per sigma (those of seed 0, i.e. of the
default command) after its trained number of warps: mean parameter L2 error (canonical) and
mean corner error (px), the two numbers of Table 1. Prints and writes the per-seed values with
their min-max range, the CPU model and the load average.

Usage::

    python benchmarks/planar_spread.py --cells 5:4 10:1 --seeds 1 2 --out planar_spread.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["5:4", "10:1"], help="sigma:depth")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's 4000")
    parser.add_argument("--work", default="out/planar_spread", help="run directories")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    from lkstn.experiments.convergence import fixed_starts
    from lkstn.experiments.planar import SHAPE, Recipe, build_model, train_model
    from lkstn.experiments.planar_sweep import train_cells
    from lkstn.experiments.problems import planar_problem
    from lkstn.result import corner_error
    from lkstn.warps import Affine

    torch.set_num_threads(1)
    prob = planar_problem(SHAPE, warp=Affine())
    image = torch.as_tensor(prob.image, dtype=torch.float32)[None, None]
    p_true = torch.as_tensor(prob.p_true, dtype=torch.float32)
    cells = [(float(c.split(":")[0]), int(c.split(":")[1])) for c in args.cells]
    base = Recipe() if args.steps is None else replace(Recipe(), n_steps=args.steps)

    def evaluate(model, sigma: float) -> dict[str, float]:
        starts = fixed_starts(prob.warp, prob.p_true, sigma, SHAPE, base.n_test, base.seed + 1)
        with torch.no_grad():
            p = model(image, torch.as_tensor(starts, dtype=torch.float32)).p
        target = p_true.expand_as(p)
        return {
            "param_l2": float((p - target).norm(dim=-1).mean()),
            "corner_px": float(corner_error(prob.warp, p, target, SHAPE).mean()),
        }

    load = [os.getloadavg()[0]]
    results: dict[str, dict[str, list]] = {f"{s:g}:{d}": {"separate": [], "batched": []}
                                           for s, d in cells}  # fmt: skip
    for seed in args.seeds:
        recipe = replace(base, seed=seed)
        work = Path(args.work) / f"seed{seed}"
        start = time.perf_counter()
        trained = train_cells(cells, recipe, work / "batched")
        batched_seconds = time.perf_counter() - start
        for sigma, depth in cells:
            key = f"{sigma:g}:{depth}"
            model = build_model(prob, depth, sigma, recipe)
            model.load_state_dict(trained[(sigma, depth)][0])
            results[key]["batched"].append({"seed": seed, **evaluate(model, sigma),
                                            "seconds": batched_seconds})  # fmt: skip
            model = build_model(prob, depth, sigma, recipe)
            run = work / "separate" / f"sigma{sigma:g}" / f"K{depth}"
            seconds = train_model(model, prob, sigma, recipe, run)
            results[key]["separate"].append({"seed": seed, **evaluate(model, sigma),
                                             "seconds": seconds})  # fmt: skip
        load.append(os.getloadavg()[0])
    for row in results.values():
        for side in ("separate", "batched"):
            for metric in ("param_l2", "corner_px"):
                values = [r[metric] for r in row[side]]
                row[f"{side}_{metric}_range"] = [min(values), max(values)]
    from sweep_step import cpu_model  # same folder

    from lkstn.machine import fingerprint

    record = {"cpu": cpu_model(), "fingerprint": fingerprint(), "recipe_steps": base.n_steps,
              "seeds": args.seeds, "results": results,
              "load_average_at_each_seed": load}  # fmt: skip
    print(json.dumps(record, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
