"""The sandbox is written from the vendor's facts: no module under sandbox/ imports the product.

A sandbox that imports the product's format code cannot disagree with it, so it cannot catch the
product misreading the vendor's backups. Every import counts: ``import x``, ``from x import y``,
imports inside functions, relative imports that climb out of the package, and
``importlib.import_module``/``__import__`` calls with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SANDBOX = ROOT / "sandbox"
PRODUCT = {"connectors", "flows", "journal", "checklists"}


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, a module of ``package``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up) if up else "<outside the tree>"
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found += [(node.lineno, module)] + [(node.lineno, f"{module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def product_imports(path: Path) -> list[str]:
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    return [f"{path.relative_to(ROOT)}:{line}: {module}"
            for line, module in imported_modules(path.read_text(), package)
            if module.split(".")[0] in PRODUCT or module.startswith("<outside")]


def test_no_sandbox_module_imports_the_product():
    modules = sorted(SANDBOX.rglob("*.py"))
    assert len(modules) > 5  # the walk found the package
    offenders = [hit for path in modules for hit in product_imports(path)]
    assert offenders == [], "sandbox/ must not import the product:\n" + "\n".join(offenders)


def test_the_check_sees_every_kind_of_import():
    source = """
import os, connectors.bitrix24.backup_format
from flows import phase
def f():
    from journal.store import Journal
    import importlib
    importlib.import_module("checklists.verify")
    __import__("connectors")
from .. import connectors
from ..flows import x
from . import backup_maker
"""
    modules = [m for _, m in imported_modules(source, "sandbox")]
    hits = {m.split(".")[0] for m in modules if m.split(".")[0] in PRODUCT}
    assert hits == PRODUCT
    assert "connectors.bitrix24.backup_format" in modules and "flows.x" not in modules
    assert "<outside the tree>.flows" in modules and "sandbox.backup_maker" in modules
