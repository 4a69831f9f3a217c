"""Peak memory of aligning 100,000 starts: IC-LK and a linear IC-STN, chunked and not.

Problem: :func:`lkstn.experiments.problems.planar_problem` with its defaults (``chelsea()`` in grey,
300 x 451 pixels, the 100 x 100 box ``CAT_BOX``, a 50 x 50 template ``I(p_true)``, affine warps),
starts from the paper's noise model at ``sigma`` = 3 template pixels (seeded), 10 iterations.

Aligners:

- ``ICLK(template, "affine", n_iter=10, tol=1e-4)`` (NumPy, float64);
- ``ICSTN.from_iclk(iclk)`` cast to float32: one linear layer (2500 -> 6) that runs IC-LK's
  iterations ([LL17] eqs. (5)-(6)), ``n_warps=10``: the model a user would deploy, given the
  template so that it reports the cost and judges convergence as IC-LK does.

Each case runs in a fresh interpreter (``python benchmarks/memory.py --case NAME``) that builds the
problem and the aligner, resets its peak resident set size to the current one (Linux
``/proc/self/clear_refs``), aligns, and reports the peak resident set size of the whole process
during the alignment (``resource.getrusage(RUSAGE_SELF).ru_maxrss``: interpreter, torch and the
problem included), its growth over the size before the alignment, the traced NumPy peak
(``tracemalloc``, NumPy cases), and the wall time. The check ``equality`` aligns
2,000 starts chunked and unchunked and reports the largest difference of the histories.

Usage::

    python benchmarks/memory.py                  # every case, 100,000 starts (~5 min, 2 busy cores)
    python benchmarks/memory.py --starts 10000   # smaller
    python benchmarks/memory.py --case iclk-chunked --starts 100000   # one case, JSON out
    python benchmarks/memory.py --out out/memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from lkstn.machine import cpu_info, fingerprint

LIMIT_MIB = 2048.0
CASES = {  # name: (aligner, chunk size or None, fraction of --starts)
    "iclk-whole": ("ICLK", None, 1.0),
    "iclk-chunked": ("ICLK", 10_000, 1.0),
    "icstn-whole-10%": ("ICSTN", None, 0.1),  # 100% unchunked would pass 2 GiB: see the docs
    "icstn-chunked": ("ICSTN", 5_000, 1.0),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--starts", type=int, default=100_000)
    ap.add_argument("--case", choices=[*CASES, "equality"], help="run one case here, print JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", help="also write the table as JSON here")
    return ap.parse_args(argv)


def rss_mib() -> float:
    """Peak resident set size of this process (since the last reset), MiB (Linux: KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    """Resident set size now, MiB (``VmRSS``; the peak where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024.0
    except (OSError, StopIteration):
        return rss_mib()


def reset_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0: ``/proc/self/clear_refs``), so that
    the peak measured afterwards is the alignment's and not the setup's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def setup(n: int, seed: int):
    """``(iclk, icstn, image (H, W), p_init (n, 6), p_true (6,))``."""
    import torch

    from lkstn.classical.iclk import ICLK
    from lkstn.experiments.problems import planar_problem
    from lkstn.learned.stn import ICSTN
    from lkstn.perturb import perturb

    prob = planar_problem()  # 50 x 50 template, affine
    iclk = ICLK(prob.template, prob.warp, n_iter=10, tol=1e-4)
    icstn = ICSTN.from_iclk(iclk).float()
    icstn.template = torch.as_tensor(prob.template, dtype=torch.float32)[None]  # (1, h, w)
    p_init = perturb(prob.warp, prob.p_true, 3.0, prob.template_shape,
                     np.random.default_rng(seed), n=n)  # fmt: skip
    return iclk, icstn, prob.image, p_init, prob.p_true


def run_case(name: str, starts: int, seed: int) -> dict:
    import torch

    from lkstn.chunks import align_in_chunks
    from lkstn.result import corner_error

    kind, chunk, fraction = CASES[name]
    n = int(round(starts * fraction))
    iclk, icstn, image, p_init, p_true = setup(n, seed)
    if kind == "ICLK":
        model, args = iclk, (image, p_init)
    else:
        args = (torch.as_tensor(image, dtype=torch.float32)[None, None],
                torch.as_tensor(p_init, dtype=torch.float32))  # fmt: skip
        model = icstn
        model.align(args[0], args[1][:2])  # warm-up: thread pools, allocator
    setup_peak = rss_mib()
    reset = reset_peak()
    before = current_rss_mib()
    if kind == "ICLK":
        tracemalloc.start()
    t0 = time.perf_counter()
    if chunk is None:
        result = model.align(*args)
    else:
        result = align_in_chunks(model, *args, chunk_size=chunk)
    seconds = time.perf_counter() - t0
    traced = tracemalloc.get_traced_memory()[1] / 2**20 if tracemalloc.is_tracing() else None
    tracemalloc.stop()
    p = np.asarray(result.p, dtype=np.float64)
    err = corner_error(iclk.warp, np.where(np.isfinite(p), p, 0.0), p_true, iclk.template_shape)
    return {
        "case": name,
        "aligner": kind,
        "starts": n,
        "chunk": chunk,
        "setup_peak_rss_mib": round(setup_peak, 1),
        "peak_reset": reset,
        "rss_before_mib": round(before, 1),
        "peak_rss_mib": round(rss_mib(), 1),
        "growth_mib": round(rss_mib() - before, 1),
        "numpy_traced_peak_mib": None if traced is None else round(traced, 1),
        "seconds": round(seconds, 2),
        "converged_1px": round(float((err < 1.0).mean()), 4),
        "history_mib": round(np.asarray(result.history).nbytes / 2**20, 1),
    }


def run_equality(seed: int) -> dict:
    import torch

    from lkstn.chunks import align_in_chunks

    iclk, icstn, image, p_init, _ = setup(2000, seed)
    out = {"case": "equality", "starts": 2000}
    whole, chunked = iclk.align(image, p_init), align_in_chunks(iclk, image, p_init, chunk_size=300)
    out["iclk_bit_equal"] = bool(np.array_equal(whole.history, chunked.history))
    out["iclk_max_abs_diff"] = float(np.abs(whole.history - chunked.history).max())
    out["iclk_flags_equal"] = bool(np.array_equal(whole.converged, chunked.converged))
    x = torch.as_tensor(image, dtype=torch.float32)[None, None]
    p = torch.as_tensor(p_init, dtype=torch.float32)
    whole, chunked = icstn.align(x, p), align_in_chunks(icstn, x, p, chunk_size=300)
    out["icstn_bit_equal"] = bool(torch.equal(whole.history, chunked.history))
    out["icstn_max_abs_diff"] = float((whole.history - chunked.history).abs().max())
    return out


def table(rows: list[dict], threads: int) -> str:
    """The markdown table of docs/reliability.md, and the equality line."""
    load = os.getloadavg()[0]
    lines = [
        f"machine: {cpu_info()['model_name']}, {os.cpu_count()} CPUs, load {load:.1f}; "
        f"torch threads {threads}; limit {LIMIT_MIB:.0f} MiB",
        "| aligner | starts | chunk | peak RSS MiB | growth MiB | NumPy traced MiB "
        "| history MiB | time s | < 1 px | < 2 GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows[:-1]:
        ok = "yes" if r["peak_rss_mib"] < LIMIT_MIB else "NO"
        cells = [r["aligner"], f"{r['starts']:,}", f"{r['chunk']:,}" if r["chunk"] else "none"]
        cells += [r["peak_rss_mib"], r["growth_mib"], r["numpy_traced_peak_mib"] or "-"]
        cells += [r["history_mib"], r["seconds"], f"{100 * r['converged_1px']:.1f} %", ok]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    eq = rows[-1]
    lines.append(
        f"equality, {eq['starts']} starts, chunks of 300: ICLK bit-equal {eq['iclk_bit_equal']} "
        f"(max |diff| {eq['iclk_max_abs_diff']:.3g}, flags equal {eq['iclk_flags_equal']}); "
        f"IC-STN bit-equal {eq['icstn_bit_equal']} (max |diff| {eq['icstn_max_abs_diff']:.3g})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.case is not None:  # the child: one case in this fresh interpreter
        import torch

        torch.set_num_threads(args.threads)
        if args.case == "equality":
            print(json.dumps(run_equality(args.seed)))
        else:
            print(json.dumps(run_case(args.case, args.starts, args.seed)))
        return
    rows = []
    for name in [*CASES, "equality"]:
        cmd = [sys.executable, __file__, "--case", name, "--starts", str(args.starts),
               "--seed", str(args.seed), "--threads", str(args.threads)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.splitlines()[-1]))
        print(f"  {name}: {rows[-1].get('seconds', '')} s", file=sys.stderr, flush=True)
    print(table(rows, args.threads))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            report = {"starts": args.starts, "seed": args.seed, "rows": rows}
            json.dump({**report, "machine": fingerprint()}, f, indent=2)


if __name__ == "__main__":
    main()
