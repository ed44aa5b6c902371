"""The layers import downwards only: values -> structures -> api -> engines -> apps.

Every import statement counts, those inside functions too (a lazy import upwards is still a
cycle between layers); the package root and the command line sit above all layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "swarmguard"
LAYERS = ["values", "structures", "api", "engines", "apps"]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[0] == "swarmguard" and parts[1] in LAYERS else None


def _imports(source: str, package: str) -> list[str]:
    """Absolute names of everything ``source`` (a module of ``package``) imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return found


MODULES = sorted(p for layer in LAYERS for p in (PACKAGE / layer).rglob("*.py"))


def test_every_layer_has_modules():
    assert {p.relative_to(PACKAGE).parts[0] for p in MODULES} == set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_no_layer_above_its_own(path):
    own = LAYERS.index(path.relative_to(PACKAGE).parts[0])
    package = ".".join(("swarmguard", *path.relative_to(PACKAGE).parts[:-1]))
    above = [m for m in _imports(path.read_text(encoding="utf-8"), package) if (_layer(m) or 0) > own]
    assert not above, f"{path.relative_to(PACKAGE)} imports {above}"


def test_the_check_sees_an_upward_import_inside_a_function():
    lazy = "def f():\n    if True:\n        from ..engines.ray_engine import RayDistributedBehavioralDetector\n"
    names = _imports(lazy, "swarmguard.api")
    assert "swarmguard.engines.ray_engine" in names
    assert _layer("swarmguard.engines.ray_engine") > LAYERS.index("api")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(paths: list[Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (every import statement, TYPE_CHECKING ones too)."""
    names = {_module_name(p): p for p in paths}
    graph = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {m for m in _imports(path.read_text(encoding="utf-8"), package) if m in names and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_two_modules_of_a_layer_import_each_other():
    # Inside a layer too (ray_engine <-> ray_views once did, through a TYPE_CHECKING import).
    assert _cycle(_import_graph(MODULES)) is None, " -> ".join(_cycle(_import_graph(MODULES)))


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
