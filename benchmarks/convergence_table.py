"""Markdown tables of percent converged from a ``benchmarks/classical_vs_ecc.py`` JSON.

    python benchmarks/convergence_table.py out/classical_vs_ecc_gb.json [--against ECC]

One table per warp and template size, one column per method, a row per sigma; with
``--against M`` a cell in *italics* is below method M's on the same trials, and a last line
counts, per method, the cells at or above M's. Then issue 3's second criterion: per pyramid
method (``-pyr`` in its name), the cells at sigma >= 5 where it converges on MORE trials than
OpenCV's multiscale ECC (``ECC-ms``), when the file has it. It measures nothing itself: the
header names the machine the JSON was measured on (its :func:`lkstn.machine.fingerprint`).
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
    machine = data.get("machine", {})
    if machine:
        cpu = machine.get("cpu", {})
        cpu = cpu.get("model_name") if isinstance(cpu, dict) else cpu
        load = machine.get("load_average")
        print(f"measured on {cpu}, {machine.get('cores')} cores, load {load}")
    digits = 1 if data["n_trials"] > 100 else 0  # one trial in 500 is 0.2 %
    at_least: dict[str, int] = {}
    above_ms: dict[str, int] = {}
    cells = cells_ms = 0
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
                key = m.rstrip("0123456789")  # ICLK-pyr2 and ICLK-pyr3 count together
                at_least[key] = at_least.get(key, 0) + (ref is not None and pct[m] >= ref)
                out.append(f"*{pct[m]:.{digits}f}*" if below else f"{pct[m]:.{digits}f}")
            ms = next((m for m in methods if m.startswith("ECC-ms")), None)
            if ms is not None and row["sigma"] >= 5:
                cells_ms += 1
                for m in methods:
                    if "-pyr" in m:
                        key = m.rstrip("0123456789")
                        above_ms[key] = above_ms.get(key, 0) + (pct[m] > pct[ms])
            cells += 1
            print(f"| {row['sigma']:g} | " + " | ".join(out) + " |")
    print(f"\ncells at or above {args.against} (of {cells}): "
          + ", ".join(f"{m} {k}" for m, k in at_least.items() if m != args.against))  # fmt: skip
    if above_ms:
        print(f"cells at sigma >= 5 above ECC-ms (of {cells_ms}): "
              + ", ".join(f"{m} {k}" for m, k in above_ms.items()))  # fmt: skip


if __name__ == "__main__":
    main()
