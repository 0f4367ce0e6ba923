"""The platform boundary: outside its own package, no product module imports a CRM platform or names it.

Scope: every module under flows/, connectors/, checklists/ and journal/, except each platform's
package ``connectors/<platform>/`` and the registry ``connectors/platforms.py``, where only the
registry literal ``_REGISTRY`` and ``DEFAULT`` may name a platform. sandbox/, tests/ and bench/
drive or test a platform and are out of scope; so are data files (runbooks, checks, templates),
chosen by path in the config.

A module leaks if (a) it imports a platform package (every kind of import, see
tests/sandbox/test_independence.py), or (b) a name, string, comment or docstring spells a
platform. Any leak fails.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

from connectors.platforms import names
from tests.sandbox.test_independence import imported_modules

ROOT = Path(__file__).resolve().parents[1]
SCOPE = ("flows", "connectors", "checklists", "journal")
REGISTRY = "connectors/platforms.py"
PLATFORMS = tuple(names())

PATTERN = re.compile("|".join([r"(?i:bitrix|\bb24\b)", *(re.escape(p) for p in PLATFORMS),
                               *(re.escape(p.upper()) for p in PLATFORMS)]))



def platform_imports(source: str, package: str) -> list[str]:
    """Imports of ``source`` (a module of ``package``) that reach a platform package."""
    return [f"{line}: import {module}" for line, module in imported_modules(source, package)
            if any(module == f"connectors.{p}" or module.startswith(f"connectors.{p}.") for p in PLATFORMS)]


def platform_names(source: str, allowed_lines: set[int] = frozenset()) -> list[str]:
    """Names, strings (docstrings, f-strings) and comments of ``source`` that spell a platform."""
    kinds = (tokenize.NAME, tokenize.STRING, tokenize.COMMENT)
    return [f"{tok.start[0]}: {tok.string[:60]}" for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type in kinds and tok.start[0] not in allowed_lines and PATTERN.search(tok.string)]


def registry_lines(source: str) -> set[int]:
    """The lines of the registry's ``_REGISTRY`` and ``DEFAULT`` assignments, the only ones that may
    name a platform."""
    lines = set()
    for node in ast.parse(source).body:
        targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id in ("_REGISTRY", "DEFAULT") for t in targets):
            lines |= set(range(node.lineno, node.end_lineno + 1))
    return lines


def leaks(path: Path) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    source = path.read_text(encoding="utf-8")
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    allowed = registry_lines(source) if rel == REGISTRY else set()
    return platform_imports(source, package) + platform_names(source, allowed)


def scanned() -> list[Path]:
    own = tuple(f"connectors/{p}/" for p in PLATFORMS)
    return [p for top in SCOPE for p in sorted((ROOT / top).rglob("*.py"))
            if not p.relative_to(ROOT).as_posix().startswith(own)]


def _all_leaks() -> dict[str, list[str]]:
    return {p.relative_to(ROOT).as_posix(): hits for p in scanned() if (hits := leaks(p))}


def test_no_module_outside_a_platform_knows_it():
    found = _all_leaks()
    assert not found, "generic code names a platform (use connectors.platforms / the Platform protocols):\n" + \
        "\n".join(f"{m}:{hit}" for m, hits in found.items() for hit in hits)


def test_the_check_sees_every_kind_of_leak():
    source = '''"""Reads a Bitrix24 backup."""
import os
from connectors.http_download import downloader
from ..bitrix24 import rest
def f(section):
    import importlib
    importlib.import_module("connectors.bitrix24.platform")
    return section.source == "bitrix24"  # B24 only
BX_HEADER = 22
'''
    assert platform_imports(source, "connectors.http_download") == [
        "4: import connectors.bitrix24", "4: import connectors.bitrix24.rest",
        "7: import connectors.bitrix24.platform"]
    assert [hit.split(":")[0] for hit in platform_names(source)] == ["1", "4", "7", "8", "8"]
    registry = '''"""The registry of platforms."""
_REGISTRY = {
    "bitrix24": "connectors.bitrix24.platform",
}
DEFAULT = "bitrix24"
def get(name): return name  # bitrix24 is the default
'''
    assert platform_names(registry, registry_lines(registry)) == ["6: # bitrix24 is the default"]
