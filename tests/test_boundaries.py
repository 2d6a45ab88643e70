"""The shape of the code is checked, not just described: which package may import which, where each
concept lives, and that nothing grows past what a reader can hold."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
RUNTIME = ("db", "pacs_node", "worker")
FORBIDDEN = {
    "db": {"pacs_node", "worker", "ainode", "training"},
    "pacs_node": {"worker", "ainode", "training"},
    "worker": {"pacs_node", "ainode", "training"},
    "training": {"pacs_node", "ainode"},
}
GEOMETRY_KEYWORDS = {"ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SpacingBetweenSlices",
                     "PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence"}
GEOMETRY_MODULE = "worker/assembly/geometry.py"


def modules(*packages: str) -> Iterator[tuple[str, ast.Module]]:
    for package in packages or sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").exists()):
        for path in sorted((SRC / package).rglob("*.py")):
            yield str(path.relative_to(SRC)), ast.parse(path.read_text())


def module_name(relative: str) -> str:
    return relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def top_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported (not those inside functions or ``if TYPE_CHECKING``)."""
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            yield from (n for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom)))


def imported_packages(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_within_its_stage(package: str) -> None:
    offenders = {name: sorted(imported_packages(tree) & FORBIDDEN[package])
                 for name, tree in modules(package) if imported_packages(tree) & FORBIDDEN[package]}
    assert offenders == {}


def test_nothing_imports_the_command_line_module() -> None:
    for name, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "ainode.cli":
                pytest.fail(f"{name} imports ainode.cli")


def test_the_runtime_never_loads_the_training_code() -> None:
    """What ``ainode serve`` and ``ainode worker`` import, imported for real: no ``training`` module comes in."""
    runtime = sorted(module_name(name) for name, _ in modules(*RUNTIME) if not name.startswith("db/migrations/"))
    runtime += ["ainode.config", "ainode.status"]
    code = f"import sys\nfor m in {runtime!r}: __import__(m)\n" \
           "print(sorted(m for m in sys.modules if m == 'training' or m.startswith('training.')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[]"


def _state_writers(attribute_owner: str) -> set[str]:
    writers = set()
    for name, tree in modules():
        for node in ast.walk(tree):
            for target in node.targets if isinstance(node, ast.Assign) else []:
                for element in ast.walk(target):
                    if isinstance(element, ast.Attribute) and element.attr == "state" and \
                            isinstance(element.value, ast.Name) and element.value.id == attribute_owner:
                        writers.add(name)
    return writers


def test_only_the_queue_module_writes_job_state() -> None:
    """Assignments to a job's ``state`` appear in db/queue.py and nowhere else."""
    assert _state_writers("job") == {"db/queue.py"}


def test_only_the_outbox_writes_delivery_state() -> None:
    assert _state_writers("delivery") == {"db/outbox.py"}


def test_geometry_is_decided_in_one_module() -> None:
    """In the runtime, only the geometry module reads where a frame lies (position, orientation, spacing)."""
    readers = set()
    for name, tree in modules(*RUNTIME):
        for node in ast.walk(tree):
            text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else \
                node.attr if isinstance(node, ast.Attribute) else None
            if text in GEOMETRY_KEYWORDS:
                readers.add(name)
    assert readers == {GEOMETRY_MODULE}


def test_no_module_imports_a_siblings_private_names() -> None:
    offenders = []
    for name, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] in {"ainode", "db", "pacs_node", "worker", "training"}:
                offenders += [f"{name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert offenders == []


def test_no_import_circle() -> None:
    known = {module_name(name) for name, _ in modules()}
    graph: dict[str, set[str]] = {}
    for name, tree in modules():
        edges = set()
        for node in top_level_imports(tree):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] + [f"{node.module}.{a.name}" for a in node.names] if node.module else []
            edges |= {t for t in targets if t in known}
        graph[module_name(name)] = edges - {module_name(name)}

    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_every_module_stays_readable() -> None:
    long = {name: n for name, _ in modules() if (n := len((SRC / name).read_text().splitlines())) > 400}
    assert long == {}
