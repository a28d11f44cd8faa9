"""Packaged modules never import the test suite: `tests/` is not installed, so `bench` (and every other
package the project ships) takes its shared fixtures from the packaged `testkit` instead."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in a file, nested ones (inside functions) included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def imports_tests(path: Path) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for line, module in imported_modules(path)
        if module == "tests" or module.startswith("tests.")
    ]


def shipped_packages() -> list[str]:
    """Top-level packages of the distribution, from pyproject's `packages.find.include`."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.rstrip("*").rstrip(".") for pattern in include})


def test_the_import_scan_sees_nested_and_from_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\n"
        "from tests.server import x\n"
        "def f():\n"
        "    import tests.training.y as y\n"
        "    from testkit.tiny_gateway import b64\n"
        "    from . import tests\n"
    )
    modules = [m for _, m in imported_modules(probe)]
    assert modules == ["os", "tests.server", "tests.training.y", "testkit.tiny_gateway"]


def test_no_bench_module_imports_tests():
    files = sorted((ROOT / "bench").rglob("*.py"))
    assert len(files) > 10
    offenders = [hit for path in files for hit in imports_tests(path)]
    assert not offenders, offenders


def test_no_shipped_package_imports_tests():
    packages = shipped_packages()
    assert {"bench", "testkit", "server", "clients"} <= set(packages) and "tests" not in packages
    offenders = [
        hit
        for package in packages
        if (ROOT / package).is_dir()
        for path in sorted((ROOT / package).rglob("*.py"))
        for hit in imports_tests(path)
    ]
    assert not offenders, offenders


def test_bench_fixtures_come_from_testkit():
    """The gateway and training-kill benchmarks use the same tiny model and reference tree as the tests."""
    used = {
        module
        for name in ("gateway_proc.py", "reliability.py")
        for _, module in imported_modules(ROOT / "bench" / name)
    }
    assert {"testkit.tiny_gateway", "testkit.reference_datasets"} <= used
