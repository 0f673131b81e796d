"""The kernel knows no service: nothing under kembed/ imports predictor, transformer or eventing, and
no service imports another (each builds on kembed alone). Lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("predictor", "transformer", "eventing")


def imported_packages(path: Path) -> set[str]:
    """The top-level package of every absolute import in one module."""
    packages = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            packages.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            packages.add(node.module.split(".")[0])
    return packages


@pytest.mark.parametrize("package", ["kembed", *SERVICES])
def test_a_package_imports_no_service_but_itself(package: str) -> None:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules
    reaching_up = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & (set(SERVICES) - {package}))
        for path in modules
    }
    assert {module: names for module, names in reaching_up.items() if names} == {}
