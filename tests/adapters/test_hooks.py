"""Adapters use only the base class's documented hooks: every underscore name of the Evaluator
that an adapter calls, reads or overrides is one the Evaluator's docstring lists under "Hooks
for adapters"; and the query room keeps its modules and functions short."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from syllabus_eval import Evaluator

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = sorted(p for p in (ROOT / "adapters").glob("*.py") if p.name != "__init__.py")


def documented_hooks() -> set[str]:
    """The names in backquotes in the docstring's "Hooks for adapters:" section."""
    section = re.search(r"Hooks for adapters:\n(.*?)\n    \w[\w ]*:\n", Evaluator.__doc__, re.S)
    assert section, "the Evaluator's docstring has a 'Hooks for adapters:' section"
    return set(re.findall(r"``(_[a-z]\w*)", section.group(1)))


def base_names() -> set[str]:
    """The base class's underscore names: its methods, class attributes and what its
    constructor sets on an instance."""
    names = {name for name in dir(Evaluator) if name.startswith("_")}
    names |= set(vars(Evaluator(None)))
    return {name for name in names if not name.startswith("__")}


def uses(path: Path) -> tuple[dict[str, int], set[str]]:
    """``{name: line}`` of the underscore names ``path`` reaches on ``self``, ``super()`` or a
    clone, and every override it makes, and the names the module itself defines."""
    tree = ast.parse(path.read_text())
    used, defined = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    defined.add(item.name)
                    used.setdefault(item.name, item.lineno)  # an override counts as a use
                targets = (item.targets if isinstance(item, ast.Assign)
                           else [item.target] if isinstance(item, ast.AnnAssign) else [])
                defined.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            owner = node.value
            on_self = isinstance(owner, ast.Name) and owner.id in ("self", "clone")
            on_super = (isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name)
                        and owner.func.id == "super")
            if on_self or on_super:
                used.setdefault(node.attr, node.lineno)
                if on_self and isinstance(node.ctx, ast.Store):
                    defined.add(node.attr)
    return used, defined


class TestDocumentedHooks:
    def test_the_documented_set(self) -> None:
        # What adapters need from the base class (read off the adapters, by hand).
        assert documented_hooks() == {
            "_get_action", "_get_value", "_get_action_and_value", "_get_value_sequence",
            "_prepare_state", "_prepare_lstm", "_set_eval_mode", "_set_train_mode",
            "_copy_memo", "_batched_observations", "_prepare_recurrent_state",
            "_prepare_done", "_steps", "_preprocess_obs"}

    def test_every_documented_hook_exists(self) -> None:
        assert documented_hooks() <= base_names()

    @pytest.mark.parametrize("path", ADAPTERS, ids=lambda p: p.name)
    def test_an_adapter_reaches_only_documented_hooks(self, path: Path) -> None:
        used, defined = uses(path)
        base, documented = base_names(), documented_hooks()
        internal = {name: line for name, line in used.items()
                    if name in base and name not in documented}
        assert internal == {}, f"{path.name} reaches the base class's internals (name: line)"
        unknown = {name: line for name, line in used.items()
                   if name not in base and name not in defined}
        assert unknown == {}, f"{path.name} uses names it does not define (name: line)"

    def test_the_reading_catches_an_internal(self, tmp_path: Path) -> None:
        adapter = tmp_path / "reaching.py"
        adapter.write_text("class Reaching(Evaluator):\n"
                           "    def _check_done(self, done, b):\n"
                           "        return self._live_source is None\n")
        used, _ = uses(adapter)
        assert {"_check_done", "_live_source"} <= set(used) - documented_hooks()
