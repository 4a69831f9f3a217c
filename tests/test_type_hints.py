"""Type hints of the public API: no parameter or return annotation is a bare ``Any``.

The public API is every function and class that ``lkstn.__all__`` or a public submodule's
``__all__`` names (a module without ``__all__``: its public functions and classes), and of each
class its ``__init__``, ``__new__``, ``__call__``, public methods and properties, inherited ones
from lkstn classes included. Annotations are read as the strings ``from __future__ import
annotations`` leaves (nothing is evaluated, so torch-only names need no import).

``PASS_THROUGH`` lists the values that really can be anything, each with its reason.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

import lkstn

ROOT = Path(__file__).resolve().parents[1]

# Values that really can be anything: (name, parameter) -> why.
PASS_THROUGH: dict[tuple[str, str], str] = {
    ("lkstn.experiments.convergence.ConvergenceReport.to_json", "kwargs"): (
        "json.dumps's keyword options, passed on unchanged (each has its own type there)"
    ),
}

_ANY = {"Any", "typing.Any", "t.Any"}
_SPECIAL = ("__init__", "__new__", "__call__")  # the dunder methods that are public API


def _is_any(annotation: object) -> bool:
    if annotation is typing.Any:
        return True
    return isinstance(annotation, str) and annotation.strip().strip("'\"") in _ANY


def _public_modules() -> Iterator[str]:
    yield "lkstn"
    for info in pkgutil.walk_packages(lkstn.__path__, "lkstn."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            yield info.name


def _exported(module) -> Iterator[object]:
    names = getattr(module, "__all__", None)
    if names is None:  # its own public functions and classes
        names = [
            n for n, v in vars(module).items() if getattr(v, "__module__", "") == module.__name__
        ]
        names = [n for n in names if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            yield obj


def _members(cls: type) -> Iterator[tuple[str, Callable]]:
    """``(qualified name, function)`` of the public API of ``cls`` defined in lkstn classes."""
    seen = set()
    for owner in cls.__mro__:
        if not owner.__module__.startswith("lkstn"):
            continue
        for name, value in vars(owner).items():
            if name in seen or (name.startswith("_") and name not in _SPECIAL):
                continue
            seen.add(name)
            if isinstance(value, staticmethod | classmethod):
                value = value.__func__
            elif isinstance(value, property):
                value = value.fget
            if inspect.isfunction(value):
                yield f"{owner.__module__}.{owner.__qualname__}.{name}", value


def _functions() -> dict[str, Callable]:
    """Every public function and method, by ``module.qualname`` of where it is defined."""
    found: dict[str, Callable] = {}
    for module_name in _public_modules():
        for obj in _exported(importlib.import_module(module_name)):
            if inspect.isclass(obj):
                found.update(_members(obj))
            else:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def _any_annotations() -> dict[str, set[str]]:
    """``{name: parameters annotated Any}`` (``"return"`` for the return annotation)."""
    found = {}
    for name, fn in _functions().items():
        signature = inspect.signature(fn, eval_str=False)
        bad = {p.name for p in signature.parameters.values() if _is_any(p.annotation)}
        if _is_any(signature.return_annotation):
            bad.add("return")
        bad -= {param for (where, param) in PASS_THROUGH if where == name}
        if bad:
            found[name] = bad
    return found


def test_the_checker_sees_the_public_api():
    functions = _functions()
    for name in (
        "lkstn.pixels.pixel_matrix",  # a module's __all__
        "lkstn.result.Aligner.align",  # a method of a public class
        "lkstn.result.AlignmentResult.__init__",  # a dataclass's generated __init__
        "lkstn.result.AlignmentResult.p",  # a property
        "lkstn.learned.stn.ICSTN.__init__",  # a lazy name of lkstn.__all__
        "lkstn.classical.iclk.ICLK.regressor",
    ):
        assert name in functions, name
    assert _is_any("Any") and _is_any(typing.Any) and not _is_any("dict[str, Any]")


def test_no_public_annotation_is_any():
    found = _any_annotations()
    assert not found, f"annotated Any (give the precise type): {found}"


def test_the_pass_through_values_are_still_any():
    functions = _functions()
    for name, param in PASS_THROUGH:
        parameter = inspect.signature(functions[name]).parameters[param]
        assert _is_any(parameter.annotation), (name, param)


def test_type_only_imports_stay_out_of_import_lkstn():
    """The annotations name torch and matplotlib types under ``TYPE_CHECKING`` only: importing
    lkstn and its NumPy modules still imports neither."""
    code = (
        "import sys\n"
        "import lkstn, lkstn.viz, lkstn.pixels, lkstn.register, lkstn.track, lkstn.chunks\n"
        "import lkstn.experiments.curves, lkstn.experiments.convergence, lkstn.runs\n"
        "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_the_lazy_names_are_visible_to_type_checkers():
    """``lkstn.__init__`` imports each name of ``_LAZY`` under ``TYPE_CHECKING`` too."""
    import ast

    tree = ast.parse((ROOT / "lkstn" / "__init__.py").read_text())
    typed = {
        f"{node.module}.{alias.name}"
        for block in tree.body
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == {f"{module}.{name}" for name, module in lkstn._LAZY.items()}
