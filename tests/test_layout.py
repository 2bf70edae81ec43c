"""The layering of the tree, read from the imports themselves: adapters, curricula and backends
depend on the core, never the other way round; the demo room is entered only by the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each installed package lives on disk (pyproject's package-dir).
ROOMS = {"syllabus_eval": ROOT / "syllabus_eval", "syllabus_eval.adapters": ROOT / "adapters",
         "syllabus_eval.curricula": ROOT / "curricula"}


def modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    found = {}
    for package, folder in ROOMS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """The modules ``name`` imports, relative imports resolved (``from x import y`` counts as
    ``x.y`` too, since ``y`` may be a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = modules()
GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def in_room(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def importers_of(room: str) -> set[str]:
    return {name for name, imported in GRAPH.items() if not in_room(name, room)
            and any(in_room(target, room) for target in imported)}


class TestDependencyDirection:
    def test_the_tree_was_read(self):
        assert {"syllabus_eval.query.evaluator", "syllabus_eval.rollout.loop",
                "syllabus_eval.evaluation.backends.pool", "syllabus_eval.demo.ppo",
                "syllabus_eval.adapters.cleanrl",
                "syllabus_eval.curricula.plr.worker"} <= set(GRAPH)
        assert "syllabus_eval.rollout.records" in GRAPH["syllabus_eval.rollout.loop"]

    def test_only_the_cli_enters_the_demo_room(self):
        assert importers_of("syllabus_eval.demo") == {"syllabus_eval.cli"}

    @pytest.mark.parametrize("room", ["syllabus_eval.adapters", "syllabus_eval.curricula"])
    def test_the_core_imports_no_adapter_or_curriculum(self, room):
        core = {name for name in GRAPH if not in_room(name, "syllabus_eval.adapters")
                and not in_room(name, "syllabus_eval.curricula")
                and not in_room(name, "syllabus_eval.demo") and name != "syllabus_eval.cli"}
        assert not {name for name in core if any(in_room(t, room) for t in GRAPH[name])}

    def test_curricula_and_adapters_do_not_know_each_other(self):
        assert not importers_of("syllabus_eval.adapters") & {
            name for name in GRAPH if in_room(name, "syllabus_eval.curricula")}
        assert not importers_of("syllabus_eval.curricula") & {
            name for name in GRAPH if in_room(name, "syllabus_eval.adapters")}

    def test_the_engine_does_not_know_its_facade_or_backends(self):
        for name in [name for name in GRAPH if in_room(name, "syllabus_eval.rollout")]:
            assert not any(in_room(t, "syllabus_eval.evaluation") for t in GRAPH[name]), name

    def test_backends_only_through_the_registry(self):
        users = importers_of("syllabus_eval.evaluation.backends")
        assert users <= {"syllabus_eval.evaluation.runner", "syllabus_eval.cli"}


# The rooms from the bottom up: a module imports only from its own room or rooms below it.
LAYERS = [
    ["syllabus_eval.errors", "syllabus_eval.processes", "syllabus_eval.moved"],
    ["syllabus_eval.query"],
    ["syllabus_eval.rollout", "syllabus_eval.adapters"],
    ["syllabus_eval.results"],
    ["syllabus_eval.evaluation"],
    ["syllabus_eval.curricula"],
    ["syllabus_eval.sweep", "syllabus_eval.integrations", "syllabus_eval.cli",
     "syllabus_eval.__main__", "syllabus_eval.demo"],
]


def layer_of(module: str) -> int | None:
    if module == "syllabus_eval":  # the package's facade re-exports every room
        return len(LAYERS)
    for level, rooms in enumerate(LAYERS):
        if any(in_room(module, room) for room in rooms):
            return level
    return None


class TestRoomsByLayer:
    def test_every_module_has_a_room(self):
        assert [name for name in GRAPH if layer_of(name) is None] == []

    def test_imports_run_downward(self):
        upward = [(name, target) for name, imported in GRAPH.items() for target in imported
                  if target in MODULES and layer_of(target) > layer_of(name)]
        assert upward == []

    @pytest.mark.parametrize("name", sorted(MODULES))
    def test_modules_and_functions_stay_short(self, name):
        """One job per module and per function: none over 520 and 80 lines."""
        source = MODULES[name].read_text()
        assert source.count("\n") <= 520, f"{name}: over 520 lines"
        long = {node.name: node.end_lineno - node.lineno + 1
                for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.end_lineno - node.lineno + 1 > 80}
        assert long == {}, f"{name}: functions over 80 lines"

    def test_few_modules_lie_flat_in_the_package(self):
        flat = sorted(path.name for path in (ROOT / "syllabus_eval").glob("*.py"))
        assert len(flat) <= 8, flat


class TestImportsReadRightOnDisk:
    @pytest.mark.parametrize("room", ["syllabus_eval.adapters", "syllabus_eval.curricula"])
    def test_relative_imports_stay_inside_their_folder(self, room):
        for name, path in MODULES.items():
            if not in_room(name, room):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level:
                    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                    depth = len(package.split(".")) - len(room.split("."))
                    assert node.level - 1 <= depth, (
                        f"{path.relative_to(ROOT)}: a relative import leaves its folder; "
                        "import the core as syllabus_eval....")
