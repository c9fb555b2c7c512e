"""The package's shape: no import cycles (function-level imports included) and arrows one way."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "napari_histo"
#: The core's base: what every feature may use, and which uses no feature.
BASE = {"errors", "progress", "atomic", "resources", "device", "color", "tiling", "weights"}
FEATURES = ("io", "stain", "seg", "labels", "slide", "translate")


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" for a in node.names]
                deps |= {n for n in names if n in modules} or ({target} & modules.keys())
                if target in modules:
                    deps.add(target)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
        deps.discard(mod)
        graph[mod] = deps
    return graph


def _feature(mod: str) -> str | None:
    parts = mod.split(".")
    if len(parts) >= 3 and parts[1] == "core":
        return parts[2] if parts[2] in FEATURES else ("base" if parts[2] in BASE else None)
    return None


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            # A package __init__ importing its own submodules is not a cycle of the design.
            if dep.startswith(node + "."):
                continue
            if state.get(dep) == 1:
                cycle.extend([*stack[stack.index(dep) :], dep] if dep in stack else [node, dep])
                return True
            if state.get(dep) is None and visit(dep, [*stack, dep]):
                return True
        state[node] = 2
        return False

    for mod in sorted(graph):
        if state.get(mod) is None and visit(mod, [mod]):
            break
    assert not cycle, " -> ".join(cycle)


def test_arrows_run_one_way():
    """The core never imports a face; the base never imports a feature."""
    bad = []
    for mod, deps in _graph().items():
        for dep in deps:
            if mod.startswith("napari_histo.core") and dep.startswith(
                ("napari_histo.widgets", "napari_histo.cli", "napari_histo._")
            ):
                bad.append(f"{mod} -> {dep}")
            if _feature(mod) == "base" and _feature(dep) in FEATURES:
                bad.append(f"{mod} -> {dep}")
    assert not bad, bad
