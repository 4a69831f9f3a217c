"""Sphinx configuration of the lkstn documentation site (``make docs``).

Decisions:

* The notebooks are rendered from their stored outputs (``nb_execution_mode = "off"``):
  ``make notebooks`` executes them, the site never does, so a build takes seconds and needs no
  kernel.
* The API reference comes from the numpydoc docstrings (``numpydoc``); type fields are shown as
  written, not cross-referenced (``numpydoc_xref_param_type = False``), so that shapes such as
  ``ndarray (h, w, P)`` read naturally.
* Intersphinx links to NumPy, SciPy, PyTorch and scikit-image need their ``objects.inv``. The
  build is offline by default (no network here nor in CI), so the links are made only from
  inventories found in ``docs/_inventories/<name>.inv`` (for example saved from the projects'
  sites), or fetched when ``LKSTN_DOCS_ONLINE=1``; otherwise the mapping is empty and the build
  emits no warning for an unreachable site.
* Pages that other parts of the project add are included by toctree glob (``guide/*``,
  ``registration*``), so a page that does not exist yet is never referenced by name; the one
  warning this can give, a glob that matches nothing yet, is the only one silenced (by message:
  Sphinx gives it no warning type that ``suppress_warnings`` could name).
* Links from the pages to ``../benchmarks/README.md`` point to the benchmarks page, which
  includes that file; generated tables under ``figures/`` are pages of their own.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import lkstn  # noqa: E402

project = "lkstn"
author = "the lkstn developers"
copyright = "the lkstn developers"  # noqa: A001
release = version = lkstn.__version__

extensions = [
    "myst_nb",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "notebooks", "_inventories", "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# myst-nb: render the stored outputs, never execute
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 4  # GitHub-style anchors, so the pages' #section links resolve

# autodoc + numpydoc
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc's Parameters section says the types
autodoc_mock_imports = ["cv2"]
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

# intersphinx: offline unless inventories are at hand (see the module docstring)
_SITES = {
    "numpy": "https://numpy.org/doc/stable/",
    "scipy": "https://docs.scipy.org/doc/scipy/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "skimage": "https://scikit-image.org/docs/stable/",
}
_ONLINE = os.environ.get("LKSTN_DOCS_ONLINE") == "1"
intersphinx_mapping = {
    name: (url, None if _ONLINE else str(DOCS / "_inventories" / f"{name}.inv"))
    for name, url in _SITES.items()
    if _ONLINE or (DOCS / "_inventories" / f"{name}.inv").is_file()
}

html_theme = "pydata_sphinx_theme"
html_title = f"lkstn {release}"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False
html_context = {"default_mode": "auto"}  # unset, the theme logs a console error on a first visit


class _EmptyGlob(logging.Filter):
    """Drop "toctree glob pattern ... didn't match any documents": pages may appear later."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "didn't match any documents" not in record.getMessage()


def _rewrite(app, docname: str, source: list[str]) -> None:
    """Links to ``../benchmarks/README.md`` go to the page ``benchmarks``, which includes it; a
    generated table under ``figures/`` (no heading of its own) gets its file name as title."""
    if "/" not in docname:
        source[0] = re.sub(r"\]\(\.\./benchmarks/README\.md", "](benchmarks.md", source[0])
    if docname.startswith("figures/") and not source[0].lstrip().startswith("#"):
        source[0] = f"# `docs/{docname}.md`\n\n{source[0]}"


def setup(app):
    logging.getLogger("sphinx.sphinx.directives.other").addFilter(_EmptyGlob())
    app.connect("source-read", _rewrite)
