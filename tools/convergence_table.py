"""Markdown tables of percent converged from a ``benchmarks/classical_vs_ecc.py`` JSON.

    python tools/convergence_table.py out/classical_vs_ecc_gb.json [--against ECC]

One table per warp and template size, one column per method, a row per sigma; with
``--against M`` a cell in *italics* is below method M's on the same trials, and a last line
counts, per method, the cells at or above M's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--against", default="ECC")
    args = parser.parse_args()
    data = json.loads(args.json.read_text())
    print(f"{args.json} (gain {data.get('gain', 1.0)}, bias {data.get('bias', 0.0)}, "
          f"{data['n_trials']} trials per sigma, {data['n_iter']} iterations)")  # fmt: skip
    at_least: dict[str, int] = {}
    cells = 0
    for rep in data["convergence"]:
        rows = rep["results"]
        methods = list(rows[0]["percent_converged"])
        h, w = rep["template_shape"]
        print(f"\n| {rep['warp']} {h}x{w}, sigma | " + " | ".join(methods) + " |")
        print("|---" * (len(methods) + 1) + "|")
        for row in rows:
            pct = row["percent_converged"]
            ref = pct.get(args.against)
            out = []
            for m in methods:
                below = ref is not None and m != args.against and pct[m] < ref
                at_least[m] = at_least.get(m, 0) + (ref is not None and pct[m] >= ref)
                out.append(f"*{pct[m]:.0f}*" if below else f"{pct[m]:.0f}")
            cells += 1
            print(f"| {row['sigma']:g} | " + " | ".join(out) + " |")
    print(f"\ncells at or above {args.against} (of {cells}): "
          + ", ".join(f"{m} {k}" for m, k in at_least.items() if m != args.against))  # fmt: skip


if __name__ == "__main__":
    main()
