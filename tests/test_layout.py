"""The package's shape: no import circles, no import up a floor, and a trainer that names no architecture.

Imports are read from the source (AST), not by importing: ``import a.b`` / ``from a.b import c`` is an edge
to module ``a.b`` (or ``a.b.c`` when that is a module). ``if TYPE_CHECKING:`` blocks are not imports.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from beagle.cli.main import SUBCOMMAND_MODULES
from beagle.models import registry

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "beagle"

# Lower floors never import higher ones (a package may import its own floor's other packages only where
# listed in SAME_FLOOR_ORDER, so that floors stay acyclic too).
FLOORS = [
    {"beagle", "beagle.errors", "beagle.files", "beagle.ranks"},
    {"beagle.assets", "beagle.kernels"},
    {"beagle.vocab", "beagle.target_model"},
    {"beagle.models"},
    {"beagle.data"},
    {"beagle.training", "beagle.decoding"},
    {"beagle.bench", "beagle.serving"},
    {"beagle.cli"},
]
# The packages whose every import (module top or inside a function) is checked against the floors.
CHECKED = ("beagle.models", "beagle.training", "beagle.assets", "beagle.vocab")
# Where an architecture is never named: the trainer and `beagle train` read them from the registry.
ARCHITECTURE_FREE = sorted((PACKAGE / "training").rglob("*.py")) + [PACKAGE / "cli" / "train.py"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported(node: ast.AST, current: str) -> list[str]:
    """The beagle modules an Import / ImportFrom node imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "beagle"]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative import
            package = current.split(".") if MODULES[current].name == "__init__.py" else current.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
        if base.split(".")[0] != "beagle":
            return []
        return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    return []


def imports_of(name: str, top_level_only: bool) -> set[str]:
    """Modules ``name`` imports: at module top (top_level_only), or anywhere in it (functions too)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        if is_type_checking(node):
            for child in node.orelse:
                visit(child, top)
            return
        found.update(imported(node, name))
        nested = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if top_level_only and nested:
            return
        for child in ast.iter_child_nodes(node):
            visit(child, top and not nested)

    visit(tree, True)
    return {module for module in found if module in MODULES and module != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as [a, b, ..., a], or None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for following in sorted(graph.get(node, ())):
            if state.get(following) == 1:
                return path[path.index(following):] + [following]
            if following not in state and (cycle := walk(following)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def floor(module: str) -> int:
    for parts in range(min(2, len(module.split("."))), 0, -1):
        prefix = ".".join(module.split(".")[:parts])
        for number, packages in enumerate(FLOORS):
            if prefix in packages:
                return number
    raise AssertionError(f"{module} is on no floor: add its package to FLOORS")


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_at_module_top():
    graph = {name: imports_of(name, top_level_only=True) for name in MODULES}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_import_circle_even_inside_functions():
    graph = {name: imports_of(name, top_level_only=False) for name in MODULES}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("package", CHECKED)
def test_no_import_up_a_floor_even_inside_functions(package):
    members = [name for name in MODULES if name == package or name.startswith(package + ".")]
    upward = [f"{name} imports {module}" for name in members
              for module in sorted(imports_of(name, top_level_only=False)) if floor(module) > floor(name)]
    assert not upward, upward


def test_floors_name_every_package():
    for name in MODULES:
        floor(name)


def architecture_words() -> list[str]:
    return [item.name for item in registry.architectures()] + [item.model.partition(":")[2]
                                                              for item in registry.architectures()]


def named_architectures(text: str) -> list[str]:
    """Architecture names / model classes in ``text`` as words; ``beagle <subcommand>`` (the command) and
    dotted module paths (``beagle.training``) are not architecture names."""
    found = []
    for word in architecture_words():
        for match in re.finditer(rf"(?<![\w.`/-]){re.escape(word)}(?![\w./-])", text):
            following = text[match.end():].split()
            if word == "beagle" and following and following[0].strip("`'\".,)") in SUBCOMMAND_MODULES:
                continue
            found.append(word)
    return found


def test_named_architectures_finds_names_not_the_command():
    assert named_architectures("choose beagle or eagle2") == ["beagle", "eagle2"]
    assert named_architectures("a `beagle datagen` folder; the logger beagle.training; Beagle") == []
    assert named_architectures("Eagle2Draft(config)") == ["Eagle2Draft"]


@pytest.mark.parametrize("path", ARCHITECTURE_FREE, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_training_and_beagle_train_name_no_architecture(path):
    """Strings, comments and names of the trainer and `beagle train` name no architecture (the registry
    does), and they import no architecture's package."""
    source = path.read_text(encoding="utf-8")
    hits = []
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for token, following in zip(tokens, tokens[1:] + tokens[-1:]):
        if token.type == tokenize.NAME and following.string == ".":
            continue  # a module path: beagle.models...
        if token.type in (tokenize.STRING, tokenize.COMMENT, tokenize.NAME):
            hits += [(token.start[0], word) for word in named_architectures(token.string)]
    assert not hits, f"{path.name} names architectures at (line, word): {hits}"
    packages = tuple(f"beagle.models.{name}" for name in registry.names())
    name = module_name(path)
    assert not [module for module in imports_of(name, top_level_only=False) if module.startswith(packages)]


def test_architecture_strings_live_in_their_own_package():
    """Outside its package, no module of beagle.models holds an architecture's name as a string."""
    for name, path in MODULES.items():
        if not name.startswith("beagle.models") or any(name.startswith(f"beagle.models.{arch}")
                                                     for arch in registry.names()):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        constants = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                     and isinstance(node.value, str) and node.value in registry.names()]
        assert not constants, f"{name} holds {constants}"


def test_no_source_file_over_500_lines():
    long = {str(path.relative_to(PACKAGE)): count for path in PACKAGE.rglob("*.py")
            if (count := len(path.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, long
