"""The package's layout rules, checked on the source: small files, private names kept private,
torch kept out of the classical aligners, the experiments independent of the command line.

- every file in ``lkstn/`` has at most 400 lines (a module a reader takes in at one sitting;
  ``LONG`` lists the files being rewritten elsewhere);
- no module uses another module's underscore names: neither ``from lkstn.x import _name``, nor
  ``module._name``, nor ``obj._name`` for a ``_name`` defined only in other modules (a method of
  another module's class). A leading-underscore *module* is private to its package and may be
  imported by the modules of that package. ``EXCEPTIONS`` lists, by file, the uses that wait for
  their module's next change (each of those names has a public twin already);
- in ``lkstn/classical`` (NumPy/SciPy) only ``TORCH_MODULE``, ICLK's float32 sampler, imports
  torch, anywhere in its body: ICLK imports that module only for ``dtype="float32"``;
- ``lkstn.experiments`` never imports ``lkstn.cli``, and ``lkstn.cli`` runs no script of
  ``benchmarks/``;
- the tests of the classical aligners (``tests/classical``) never import ``lkstn.experiments``:
  their fixture, the planar problem, lives in ``lkstn.problems``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lkstn"
CLASSICAL_TESTS = ROOT / "tests" / "classical"
MAX_LINES = 400
# Files being rewritten elsewhere at the time of writing; their next change removes the entry.
LONG: set[str] = set()
EXCEPTIONS: dict[str, set[str]] = {}
TORCH_MODULE = "lkstn/classical/torch_sampler.py"


def _modules() -> dict[str, ast.Module]:
    return {
        str(p.relative_to(ROOT)): ast.parse(p.read_text(), filename=str(p))
        for p in sorted(PACKAGE.rglob("*.py"))
    }


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined(tree: ast.Module) -> set[str]:
    """Underscore names a module defines: functions, classes, methods, attributes, globals."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {n for n in names if _private(n)}


def _uses(path: str, tree: ast.Module, owners: dict[str, set[str]]) -> set[str]:
    """Another module's underscore names that ``tree`` uses (see the module docstring)."""
    own = owners[path]
    found = set()
    modules = set()  # local names bound to lkstn modules
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lkstn"):
            for alias in node.names:
                if _private(alias.name) and not _sibling(path, f"{node.module}.{alias.name}"):
                    found.add(alias.name)
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name for a in node.names if a.name.startswith("lkstn"))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            continue
        if isinstance(base, ast.Name) and base.id in modules:
            found.add(node.attr)
        elif node.attr not in own and any(node.attr in d for p, d in owners.items() if p != path):
            found.add(node.attr)
    return found


def _sibling(path: str, dotted: str) -> bool:
    """Whether ``dotted`` (``lkstn.learned._x``) is a private module of ``path``'s package."""
    package = ".".join(Path(path).parent.parts)
    parent, _, name = dotted.rpartition(".")
    return (PACKAGE.parent / Path(*dotted.split("."))).with_suffix(".py").exists() and (
        package.startswith(parent) and _private(name)
    )


def test_no_file_in_the_package_is_over_400_lines():
    long = {
        path: n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
        and (path := str(p.relative_to(ROOT))) not in LONG
    }
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_no_module_uses_another_modules_private_names():
    trees = _modules()
    owners = {path: _defined(tree) for path, tree in trees.items()}
    offences = defaultdict(set)
    for path, tree in trees.items():
        extra = _uses(path, tree, owners) - EXCEPTIONS.get(path, set())
        if extra:
            offences[path] = extra
    assert not offences, dict(offences)


def test_the_checker_sees_each_kind_of_use(tmp_path):
    """The checker itself: each of the three forms is reported, ``self._x`` is not."""
    owners = {"lkstn/a.py": {"_helper", "_method"}, "lkstn/b.py": {"_mine"}}
    source = (
        "from lkstn.a import _helper\n"
        "import lkstn.a as a\n"
        "a._other\n"
        "def f(obj, self):\n"
        "    obj._method()\n"
        "    self._anything()\n"
        "    obj._mine()\n"
    )
    assert _uses("lkstn/b.py", ast.parse(source), owners) == {"_helper", "_other", "_method"}


def _imports_torch(tree: ast.Module) -> bool:
    """Whether ``tree`` has ``import torch[...]`` or ``from torch[...] import ...`` anywhere."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(n == "torch" or n.startswith("torch.") for n in names):
            return True
    return False


def test_only_one_classical_module_imports_torch():
    importing = {
        str(p.relative_to(ROOT))
        for p in sorted((PACKAGE / "classical").rglob("*.py"))
        if _imports_torch(ast.parse(p.read_text(), filename=str(p)))
    }
    assert importing == {TORCH_MODULE}


def test_the_torch_check_sees_each_form_of_import():
    for source in (
        "import torch",
        "import torch.nn.functional as F",
        "from torch import nn",
        "from torch.nn import functional",
        "def f():\n    import torch\n",
    ):
        assert _imports_torch(ast.parse(source)), source
    for source in (
        "import torchvision",
        "from torchaudio import x",
        "from . import torch_sampler",
        "from lkstn.classical import torch_sampler",
        "x = 'import torch'",
    ):
        assert not _imports_torch(ast.parse(source)), source


def test_experiments_never_import_the_command_line():
    for path in sorted((PACKAGE / "experiments").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert not any(n == "lkstn.cli" or n.startswith("lkstn.cli.") for n in names), path


def test_the_command_line_runs_no_benchmark_script():
    for path in sorted((PACKAGE / "cli").rglob("*.py")):
        text = path.read_text()
        assert "subprocess" not in text and "benchmarks" not in text, path


def _imports_experiments(text: str) -> bool:
    """Whether ``text`` imports ``lkstn.experiments`` (also inside a string run by a subprocess)."""
    return "lkstn.experiments" in text or any(
        isinstance(node, ast.ImportFrom)
        and node.module == "lkstn"
        and any(a.name == "experiments" for a in node.names)
        for node in ast.walk(ast.parse(text))
    )


def test_classical_tests_never_import_the_experiments():
    files = sorted(CLASSICAL_TESTS.rglob("*.py"))
    assert files
    importing = [str(p.relative_to(ROOT)) for p in files if _imports_experiments(p.read_text())]
    assert not importing, f"import lkstn.experiments (use lkstn.problems): {importing}"


def test_the_experiments_check_sees_each_form_of_import():
    for source in (
        "from lkstn.experiments.problems import planar_problem",
        "import lkstn.experiments.problems",
        "from lkstn import experiments",
        "code = 'from lkstn.experiments.problems import planar_problem'",
    ):
        assert _imports_experiments(source), source
    assert not _imports_experiments("from lkstn.problems import planar_problem")


def _layout_names(design: str) -> set[str]:
    """The file names DESIGN.md's layout block gives a line of their own (or lists)."""
    start = design.index("\nlkstn/\n")
    block = design[start : design.index("```", start)]
    return {word.strip(",()") for word in block.split() if word.strip(",()").endswith(".py")}


def test_design_md_gives_every_module_of_the_package_its_line():
    named = _layout_names((ROOT / "DESIGN.md").read_text())
    files = {p.name for p in (ROOT / "lkstn").rglob("*.py")}
    assert files - named == set(), "add these to DESIGN.md's layout"


def test_the_layout_check_reads_the_names_of_the_block():
    design = "text\n```\nlkstn/\n  a.py   one\n  b/     c.py (two), d.py\n```\nmore e.py"
    assert _layout_names(design) == {"a.py", "c.py", "d.py"}
