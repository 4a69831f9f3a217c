"""Results of a classification experiment: ``row.json`` per row, ``results.json``, ``table.md``.

Each row's summary is rebuilt from its run directory (checkpoint, ``progress.jsonl`` and
``log.jsonl``), so that a killed or resumed run reports what its checkpoint holds. The paper's
numbers stand beside ours as display data only.

Glossary: ``out`` the folder of one experiment's runs; ``curve`` ``[step, elapsed_s, test_error]``
per evaluation; ``compare`` another ``out`` of the same rows (time-to-accuracy section).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from lkstn import runs
from lkstn.experiments.classification.figures import figure_curves, save_figure
from lkstn.experiments.classification.rows import SIGMA, Experiment, Recipe, Row, build_model
from lkstn.experiments.classification.training import row_progress
from lkstn.learned.predictors import count_parameters

__all__ = ["collect", "format_time", "row_summary", "run_header", "time_to_accuracy",
           "write_report"]  # fmt: skip


def row_summary(
    exp: Experiment, row: Row, recipe: Recipe, progress: Sequence[dict[str, float]]
) -> dict[str, Any]:
    """What ``row.json`` holds: final test error, its step and wall time, the paper's numbers."""
    last = progress[-1] if progress else {"step": 0, "elapsed_s": 0.0, "test_error": None}
    reached = next((r for r in progress if r["test_error"] <= row.paper_error), None)
    return {
        "experiment": exp.name,
        "table": exp.table,
        "row": row.name,
        "recipe": asdict(recipe),
        "capacity": count_parameters(build_model(exp, row, torch.Generator())),  # as trained
        "paper": {"test_error": row.paper_error, "capacity": row.paper_capacity},
        "test_error": last["test_error"],
        "iterations": last["step"],
        "elapsed_s": last["elapsed_s"],
        "steps_per_s": last["step"] / last["elapsed_s"] if last["elapsed_s"] else None,
        "reached_paper_error": None
        if reached is None
        else {"step": reached["step"], "elapsed_s": reached["elapsed_s"]},
        "curve": [[r["step"], r["elapsed_s"], r["test_error"]] for r in progress],
        "skipped_steps": [s for r in progress for s in r.get("skipped_steps", [])],
    }


def collect(exp: Experiment, out: Path) -> list[dict[str, Any]]:
    """``row.json`` of every row with a run in ``out`` (rewritten from its logs), in table order."""
    rows = []
    for row in exp.rows:
        run_dir = out / row.slug
        if not (run_dir / "run.json").exists():
            continue
        run = json.loads((run_dir / "run.json").read_text())
        progress = sum(row_progress(run_dir), [])  # rebuilt from the checkpoint and log
        summary = row_summary(exp, row, Recipe(**run["recipe"]), progress)
        summary.update(run=run, finished=bool(progress) and progress[-1]["step"] >= run["n_steps"])
        runs.write_atomic(run_dir / "row.json", json.dumps(summary, indent=2))
        rows.append(summary)
    return rows


def format_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.2f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


def write_report(exp: Experiment, out: Path, *, compare: Path | None = None) -> dict[str, Any]:
    """Write ``results.json`` and ``table.md`` in ``out`` from the runs found there."""
    rows = collect(exp, out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"experiment": exp.name, "table": exp.table, "sigma_px": SIGMA, "rows": rows}
    lines = [f"# {exp.table} ({exp.name}): classification error on the perturbed test set", ""]
    for r in rows[:1]:
        lines += run_header(r["run"])
    lines += ["| Model | Test error, paper | Test error, ours | Capacity, paper | Capacity, ours "
              "| Iterations | Wall time | Reached paper error at |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        err = "-" if r["test_error"] is None else f"{r['test_error']:.3f} %"
        limit = r["run"].get("time_limit_min")
        done = "" if r["finished"] else " (running/stopped)"
        if not r["finished"] and limit and r["elapsed_s"] >= 60 * limit:
            done = f" (time limit {limit:g} min)"
        if r["run"].get("diverged"):
            done = " (diverged)"
        hit = r["reached_paper_error"]
        hit = "-" if hit is None else f"step {hit['step']}, {format_time(hit['elapsed_s'])}"
        lines.append(f"| {r['row']} | {r['paper']['test_error']:.3f} % | {err} | "
                     f"{r['paper']['capacity']} | {r['capacity']} | {r['iterations']}{done} | "
                     f"{format_time(r['elapsed_s'])} | {hit} |")  # fmt: skip
    lines += ["", "Paper numbers: [LL17] " + exp.table + ", 200K iterations (display only)."]
    if compare is not None:
        other = collect(exp, compare)
        report["compare"] = {"out": str(compare), "rows": other}
        lines += ["", *time_to_accuracy(rows, other)]
        if rows and other:
            save_figure(figure_curves(rows, other), out / "figures" / "time_to_accuracy.png")
    runs.write_atomic(out / "results.json", json.dumps(report, indent=2))
    runs.write_atomic(out / "table.md", "\n".join(lines) + "\n")
    return report


def run_header(run: dict[str, Any]) -> list[str]:
    """Markdown lines: recipe, data, machine and command of a run."""
    m, d = run["machine"], run["data"]
    device = m["device"] + (f" = {m['gpu']}" if m.get("gpu") else "")
    cosine = " (the cosine decay spans them)" if run["recipe"]["schedule"] == "cosine" else ""
    return [
        f"- recipe: `{json.dumps(run['recipe'])}`, seed {run['seed']}; "
        f"this run: {run['n_steps']} steps per row{cosine}",
        f"- data: {d['note']} ({d['n_train']} train / {d['n_test']} test images, one fixed "
        "perturbation each)",
        f"- machine: {m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads, "
        f"device {device}, load average {m['load_average']} at start), torch {m['torch']}",
        f"- command: `{run['command']}`",
        "",
    ]


def time_to_accuracy(rows: Sequence[dict], other: Sequence[dict]) -> list[str]:
    """Markdown: for each row in both runs, the error each reached within the same wall time."""
    lines = ["## Time to accuracy: this run against " + (other[0]["recipe"]["name"] if other
             else "-") + " for the same wall time", "",
             "| Model | Recipe | Iterations | Wall time | Test error | Reached paper error at |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    by_name = {r["row"]: r for r in other}
    for r in rows:
        o = by_name.get(r["row"])
        if o is None or not r["curve"]:
            continue
        budget = r["elapsed_s"]
        within = [c for c in o["curve"] if c[1] <= budget * 1.02] or o["curve"][:1]
        for rec, (step, t, err) in ((r, r["curve"][-1]), (o, within[-1])):
            hit = rec["reached_paper_error"]
            hit = "-" if hit is None else f"step {hit['step']}, {format_time(hit['elapsed_s'])}"
            lines.append(f"| {r['row']} | {rec['recipe']['name']} | {step} | {format_time(t)} | "
                         f"{err:.3f} % | {hit} |")  # fmt: skip
    return lines
