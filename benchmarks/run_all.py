"""Run every benchmark in this folder, one after the other, writing JSON under ``out/bench/``.

``python benchmarks/run_all.py [--quick]`` (also ``make bench``). Each benchmark compares lkstn
against the tool a user would pick instead, side by side in one process; see
``benchmarks/README.md`` for what each measures and the recorded numbers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks(quick: bool, out: Path) -> list[list[str]]:
    """The command line of each benchmark."""
    q = ["--quick"] if quick else []
    return [
        ["classical_vs_ecc.py", *q, "--out", str(out / "classical_vs_ecc.json")],
        ["sdm_vs_iclk.py", *q, "--out", str(out / "sdm_vs_iclk.json")],
        [
            "train_step.py",
            "--threads",
            "2",
            "1",
            "--rounds",
            "2" if quick else "5",
            "--out",
            str(out / "train_step.json"),
        ],  # fmt: skip
        ["memory.py", *(["--starts", "20000"] if quick else []), "--out", str(out / "memory.json")],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small versions (a few minutes)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for cmd in benchmarks(args.quick, args.out):
        print(f"== {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:]])
        print(f"== {cmd[0]}: exit {code}, {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(cmd[0])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
