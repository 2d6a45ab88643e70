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
# inside the worker, each stage uses only those before it: assembly → models → results → pipeline → runner
WORKER_LAYERS = {
    "worker.assembly": {"worker.models", "worker.results", "worker.pipeline", "worker.runner"},
    "worker.models": {"worker.results", "worker.pipeline", "worker.runner"},
    "worker.results": {"worker.pipeline", "worker.runner"},
}
# the ainode modules that belong to the people who make models: the demo generates phantoms with training code
RESEARCH_MODULES = {"ainode.demo"}


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


def imported_modules(tree: ast.Module) -> set[str]:
    """Every module an import names, in full (those inside functions too: a lazy import is still a use)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def within(module: str, packages: set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_within_its_stage(package: str) -> None:
    offenders = {name: sorted(imported_packages(tree) & FORBIDDEN[package])
                 for name, tree in modules(package) if imported_packages(tree) & FORBIDDEN[package]}
    assert offenders == {}


@pytest.mark.parametrize("layer", sorted(WORKER_LAYERS))
def test_worker_stages_import_only_the_stages_before_them(layer: str) -> None:
    offenders = {name: sorted(m for m in imported_modules(tree) if within(m, WORKER_LAYERS[layer]))
                 for name, tree in modules(layer.replace(".", "/"))}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_nothing_imports_the_command_line_module() -> None:
    for name, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "ainode.cli":
                pytest.fail(f"{name} imports ainode.cli")


def test_the_runtime_never_loads_the_training_code() -> None:
    """What ``ainode serve`` and ``ainode worker`` import, imported for real: no ``training`` module comes in.
    That is the runtime packages and every ainode module but the demo's, the command line included (its
    research commands import the training code inside the command, when one runs)."""
    runtime = sorted(module_name(name) for name, _ in modules(*RUNTIME, "ainode")
                     if not name.startswith("db/migrations/") and module_name(name) not in RESEARCH_MODULES)
    assert "ainode.cli" in runtime and "ainode.research" in runtime
    code = f"import sys\nfor m in {runtime!r}: __import__(m)\n" \
           "print(sorted(m for m in sys.modules if m == 'training' or m.startswith('training.')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[]"


STATE_OF = {"Job": "job", "Series": "series", "Delivery": "delivery",
            "JobState": "job", "SeriesState": "series", "DeliveryState": "delivery"}
NOT_RECORDS = {"rng.bit_generator"}  # objects with a ``state`` of their own that is not a row's (numpy's)


def _named(node: ast.AST) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def _records(owner: ast.AST | None, value: ast.AST | None) -> set[str]:
    """Whose state a write sets: told by the value (``JobState.FAILED``) or by the name the object goes by
    (``job``, ``self.job``, ``job.supersedes``: the innermost name that says job, series or delivery)."""
    found = {STATE_OF[n.id] for n in ast.walk(value) if isinstance(n, ast.Name) and n.id in STATE_OF} \
        if value is not None else set()
    chain = []
    while owner is not None and (name := _named(owner)) is not None:
        chain.append(name.lower())
        owner = owner.value if isinstance(owner, ast.Attribute) else None
    for name in chain:
        if kind := next((k for word, k in (("job", "job"), ("series", "series"), ("deliver", "delivery"))
                         if word in name), None):
            return found | {kind}
    return found


def _values_of(call: ast.Call) -> tuple[str, str | None]:
    """How an ``update(Model)...values(...)`` or ``insert(Model)...values(...)`` statement writes (a change,
    or a new row) and which model."""
    node: ast.AST = call.func
    while isinstance(node, (ast.Attribute, ast.Call)):
        if isinstance(node, ast.Call) and _named(node.func) in ("update", "insert") and node.args:
            return "create" if _named(node.func) == "insert" else "change", _named(node.args[0])
        node = node.value if isinstance(node, ast.Attribute) else node.func
    return "change", None


def state_writes(tree: ast.Module) -> Iterator[tuple[str, str, str]]:
    """(record, how, where) for every write of a ``state`` in a module: ``how`` is "create" for a new row
    (``Job(state=...)``, ``insert(Job).values(state=...)``), "change" for an existing one (an assignment to
    ``<x>.state``, ``setattr(x, "state", ...)``, ``update(Job).values(state=...)``). A write whose record
    cannot be told is reported as "unknown", so that a new writer is never missed by its naming."""
    for node in ast.walk(tree):
        writes: list[tuple[str, set[str], str]] = []  # how, records, the object written on
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for element in (e for t in targets for e in ast.walk(t)):
                if isinstance(element, ast.Attribute) and element.attr == "state":
                    writes.append(("change", _records(element.value, node.value), ast.unparse(element.value)))
        elif isinstance(node, ast.Call):
            state = next((k.value for k in node.keywords if k.arg == "state"), None)
            if _named(node.func) == "setattr" and len(node.args) == 3 and \
                    isinstance(node.args[1], ast.Constant) and node.args[1].value == "state":
                writes.append(("change", _records(node.args[0], node.args[2]), ast.unparse(node.args[0])))
            elif state is not None and _named(node.func) == "values":
                how, model = _values_of(node)
                writes.append((how, _records(None, state) | ({STATE_OF[model]} if model in STATE_OF else set()), ""))
            elif state is not None and _named(node.func) in ("Job", "Series", "Delivery"):
                writes.append(("create", _records(None, state) | {STATE_OF[str(_named(node.func))]}, ""))
        for how, records, owner in writes:
            if records or owner not in NOT_RECORDS:
                for record in records or {"unknown"}:
                    yield record, how, f"line {node.lineno}: {ast.unparse(node)[:80]}"


def writers(record: str, *hows: str) -> set[str]:
    return {name for name, tree in modules() for found, how, _ in state_writes(tree)
            if found == record and how in (hows or ("create", "change"))}


def test_only_the_queue_module_writes_job_state() -> None:
    """A job's ``state``, set on a new job or changed, in any form (an assignment, ``setattr``, an
    ``update(Job).values``, a ``Job(...)``), is written in db/queue.py and nowhere else."""
    assert writers("job") == {"db/queue.py"}


def test_only_the_outbox_changes_delivery_state() -> None:
    """The outbox moves a delivery on; db/queue.py creates the pending ones, with the job's success."""
    assert writers("delivery", "change") == {"db/outbox.py"}
    assert writers("delivery", "create") == {"db/queue.py"}


def test_series_state_is_written_by_the_receiving_and_the_routing() -> None:
    """db/ingest.py creates a series and marks it receiving; db/queue.py marks it queued or not routed."""
    assert writers("series", "create") == {"db/ingest.py"}
    assert writers("series", "change") == {"db/ingest.py", "db/queue.py"}


def test_every_state_write_says_whose_state_it_is() -> None:
    """A ``state`` written on an object whose name and value say neither job, series nor delivery is not
    let through: it could be a job's."""
    unknown = {f"{name} {where}" for name, tree in modules() for record, _, where in state_writes(tree)
               if record == "unknown"}
    assert unknown == set()


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
