"""The packages meet only in ``db``: the architecture is checked, not just described."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
FORBIDDEN = {
    "db": {"pacs_node", "worker", "ainode"},
    "pacs_node": {"worker", "ainode"},
    "worker": {"pacs_node", "ainode"},
}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_within_its_stage(package: str) -> None:
    offenders = {
        str(path.relative_to(SRC)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in (SRC / package).rglob("*.py")
        if imported_packages(path) & FORBIDDEN[package]
    }
    assert offenders == {}


def test_nothing_imports_the_command_line_module() -> None:
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "ainode.cli":
                pytest.fail(f"{path.relative_to(SRC)} imports ainode.cli")


def test_only_the_queue_module_writes_job_state() -> None:
    """Assignments to a job's ``state`` appear in db/queue.py and nowhere else."""
    writers = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                for element in ast.walk(target):
                    if isinstance(element, ast.Attribute) and element.attr == "state" and \
                            isinstance(element.value, ast.Name) and element.value.id == "job":
                        writers.add(str(path.relative_to(SRC)))
    assert writers == {"db/queue.py"}
