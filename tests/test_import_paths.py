"""Every ``from beagle... import name`` in the repository's scripts and tests names a module and a name that exist.

The vLLM tests and the GPU recipes run in environments the main suite does not reach (a separate venv, the lent
GPU), and many of their imports sit inside functions, so a moved module breaks them only there. This reads
their imports statically and resolves each one here.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("bench", "tests", "src/beagle", "examples")


def beagle_imports() -> list[tuple[str, int, str, str | None]]:
    """(file, line, module, name or None) for every absolute import of a beagle module."""
    found = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")) if (ROOT / folder).is_dir() else []:
            tree = ast.parse(path.read_text(), filename=str(path))
            relative = str(path.relative_to(ROOT))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                        and (node.module == "beagle" or node.module.startswith("beagle.")):
                    found.extend((relative, node.lineno, node.module, alias.name) for alias in node.names)
                elif isinstance(node, ast.Import):
                    found.extend((relative, node.lineno, alias.name, None) for alias in node.names
                                 if alias.name == "beagle" or alias.name.startswith("beagle."))
    return found


def test_the_scan_sees_the_vllm_tests_and_the_gpu_recipes():
    files = {entry[0] for entry in beagle_imports()}
    assert any(f.startswith("tests/with_vllm/") for f in files)
    assert any(f.startswith("bench/gpu/") for f in files)


def test_every_beagle_import_resolves():
    broken = []
    for relative, line, module, name in beagle_imports():
        try:
            imported = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name and (error.name == "beagle" or error.name.startswith("beagle.")):
                broken.append(f"{relative}:{line}: no module {module}")
                continue
            pytest.fail(f"{relative}:{line}: importing {module} needs {error.name}, which the project does not install")
        if name is not None and name != "*" and not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                broken.append(f"{relative}:{line}: {module} has no {name}")
    assert not broken, "imports of moved or renamed modules:\n" + "\n".join(broken)
