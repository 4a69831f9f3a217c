"""The teaching notebooks ``docs/0N_*.ipynb`` run top to bottom and are stored with their outputs.

Each notebook is executed with nbclient in a fresh ``python3`` kernel, on a copy in a temporary
folder, with a per-cell timeout; any error fails the test. The notebooks state their claims as
checks (hand-built steepest-descent images against ``ICLK.sd_images``, one Gauss-Newton step
against ``ICLK``, eq. (11) against autograd, the equivalence table, ...), so executing them tests
what they teach. The stored files must hold the outputs of one top-to-bottom run (figures render
on GitHub and on the documentation site) and the cell sources of their jupytext ``py:percent``
sources ``docs/notebooks/0N_*.py``, from which ``make notebooks`` regenerates them.

These tests run in the default ``-m "not slow"`` selection on purpose: CI executes every notebook
(about 25 s each on a loaded 2-core CPU).
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the dev extra (nbformat, nbclient, jupytext)")
jupytext = pytest.importorskip("jupytext", reason="the dev extra (nbformat, nbclient, jupytext)")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SOURCES = DOCS / "notebooks"
NAMES = [
    "01_lucas_kanade.ipynb",
    "02_supervised_descent.ipynb",
    "03_spatial_transformers.ipynb",
    "04_equivalence.ipynb",
]
CELL_TIMEOUT_S = 300
MAX_BYTES = 500 * 1024


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _image_cells(nb) -> list[int]:
    """Indices of the cells with a PNG output, after checking that each one is a PNG."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png")
            if png is not None:
                assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n", f"cell {i}: not a PNG"
                found.append(i)
    return sorted(set(found))


def test_every_notebook_has_its_source():
    assert sorted(p.name for p in DOCS.glob("0*.ipynb")) == NAMES
    assert sorted(p.with_suffix(".ipynb").name for p in SOURCES.glob("0*.py")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_stored_with_outputs_of_one_clean_run(name):
    path = DOCS / name
    assert path.stat().st_size < MAX_BYTES, f"{name} is {path.stat().st_size} bytes"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "What to try next" in nb.cells[-1].source
    counts = [c.execution_count for c in _code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), f"not one top-to-bottom run: {counts}"
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"{name} cell {i} stored an error"
            assert out.get("name") != "stderr", f"{name} cell {i} stored stderr: {out.text[:200]}"
    assert _image_cells(nb), f"{name} has no stored figures"


@pytest.mark.parametrize("name", NAMES)
def test_matches_its_source(name):
    stored = nbformat.read(DOCS / name, as_version=4)
    source = jupytext.read(SOURCES / name.replace(".ipynb", ".py"), fmt="py:percent")
    assert [(c.cell_type, c.source) for c in stored.cells] == [
        (c.cell_type, c.source) for c in source.cells
    ], f"{name} differs from docs/notebooks/{name[:-6]}.py: run `make notebooks`"


@pytest.mark.parametrize("name", NAMES)
def test_executes_top_to_bottom(name, tmp_path):
    copy = tmp_path / name
    shutil.copy(DOCS / name, copy)
    stored = nbformat.read(copy, as_version=4)
    nb = nbformat.read(copy, as_version=4)
    for cell in _code_cells(nb):
        cell.outputs, cell.execution_count = [], None
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    assert all(c.execution_count is not None for c in _code_cells(nb))
    assert _image_cells(nb) == _image_cells(stored), "the figures come from other cells than stored"
