"""Execute the teaching notebooks' sources ``docs/notebooks/0N_*.py`` into ``docs/0N_*.ipynb``.

The sources are jupytext ``py:percent`` files, the single source of truth: edit them, then

    python docs/make_notebooks.py          # execute all four (nbclient) and write the .ipynb
    python docs/make_notebooks.py 01 03    # only the notebooks whose name contains "01" or "03"

(``make notebooks`` runs the first). Each notebook is executed top to bottom in a fresh
``python3`` kernel, in a temporary working folder, and stored *with* its outputs so that the
documentation site and GitHub render its figures without running it again. Cell ids are
numbered (``cell-00``, ...) so that regenerating does not churn the diff.
``tests/test_notebooks.py`` checks that each stored notebook has the cells of its source.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

DOCS = Path(__file__).resolve().parent
SOURCES = DOCS / "notebooks"
CELL_TIMEOUT_S = 300


def read_source(path: Path) -> nbformat.NotebookNode:
    """The unexecuted notebook of the ``py:percent`` file ``path``, with stable cell ids."""
    nb = jupytext.read(path, fmt="py:percent")
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = CELL_TIMEOUT_S) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom in a fresh ``python3`` kernel, in a temporary folder."""
    with tempfile.TemporaryDirectory() as cwd:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": cwd}},
            record_timing=False,
        )
        client.execute()
    nb.metadata["language_info"] = {"name": "python"}  # drop the kernel's version details
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="substrings of the notebooks to build")
    args = parser.parse_args(argv)
    sources = sorted(SOURCES.glob("0*.py"))
    chosen = [p for p in sources if not args.names or any(s in p.name for s in args.names)]
    if not chosen:
        parser.error(f"no notebook matches {args.names}; have {[p.name for p in sources]}")
    for source in chosen:
        start = time.perf_counter()
        nb = execute(read_source(source))
        path = DOCS / f"{source.stem}.ipynb"
        nbformat.write(nb, path)
        seconds = time.perf_counter() - start
        print(f"{path.name}: executed in {seconds:.1f} s, {path.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
