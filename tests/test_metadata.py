"""Package metadata: one version everywhere, the licence the metadata names, a changelog."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import lkstn

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_is_the_projects():
    assert lkstn.__version__ == PYPROJECT["project"]["version"]


def test_cli_prints_the_version():
    out = subprocess.run(
        [sys.executable, "-m", "lkstn", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"lkstn {lkstn.__version__}"


def test_licence_file_matches_the_metadata():
    assert PYPROJECT["project"]["license"] == "BSD-3-Clause"  # an SPDX expression (PEP 639)
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License")
    assert "Neither the name of the copyright holder" in text  # the third clause
    # PEP 639: the expression replaces licence classifiers, which setuptools >= 77 refuses beside it
    assert not any(c.startswith("License ::") for c in PYPROJECT["project"]["classifiers"])


def test_changelog_and_docs_extra():
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")
    docs = " ".join(PYPROJECT["project"]["optional-dependencies"]["docs"])
    for package in ("sphinx", "pydata-sphinx-theme", "myst-nb", "numpydoc", "jupytext"):
        assert package in docs


def test_every_top_level_function_and_class_has_a_runnable_example():
    """What ``from lkstn import ...`` gives shows itself in use (the doctests run the examples)."""
    import inspect

    missing = [
        name
        for name in lkstn.__all__
        if (inspect.isfunction(obj := getattr(lkstn, name)) or inspect.isclass(obj))
        and ">>>" not in (inspect.getdoc(obj) or "")
    ]
    assert not missing, f"no Examples section with >>>: {missing}"
