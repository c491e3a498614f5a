"""The floor plan holds: pygup's modules import only downward, with no
import circle (DESIGN "Layout").

Layers, lowest first: the ground (errors, flags, _native, the compiled
_core), config/, kernel/, then machine / callers / explain, then tools/;
the package's __init__ re-exports from any of them.  Every import counts:
at module level, inside functions, and under ``if TYPE_CHECKING:`` (a
type-only import upward is still a reach-through the reader must follow).
Run it: ``python -m pytest tests/unit/test_layers.py``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "pygup"

LAYERS = [
    ("ground", {"pygup.errors", "pygup.flags", "pygup._native", "pygup._core"}),
    ("config", "pygup.config"),
    ("kernel", "pygup.kernel"),
    ("front", {"pygup.machine", "pygup.callers", "pygup.explain", "pygup.canpin"}),
    ("tools", "pygup.tools"),
]


def layer_of(module: str) -> int:
    for rank, (_, members) in enumerate(LAYERS):
        if isinstance(members, set):
            if module in members:
                return rank
        elif module == members or module.startswith(members + "."):
            return rank
    if module in ("pygup", "pygup.__main__"):
        return len(LAYERS)
    raise AssertionError(f"{module} belongs to no layer of the floor plan")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """The pygup modules ``path`` imports, anywhere in it."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("pygup"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("pygup"):
                continue
            for a in node.names:       # "from pygup.kernel import gup" imports a module
                sub = f"{base}.{a.name}"
                out.add(sub if _is_module(sub) else base)
    out.discard(me)
    return out


def _is_module(name: str) -> bool:
    p = PKG.parent.joinpath(*name.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PKG.rglob("*.py"))}


def test_every_import_goes_down_or_sideways():
    bad = []
    for mod, deps in graph().items():
        for dep in deps:
            if dep.startswith("pygup._core"):
                dep = "pygup._core"
            if layer_of(dep) > layer_of(mod):
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports that go up a layer:\n  " + "\n  ".join(sorted(bad))


def test_the_kernel_never_sees_the_machine():
    for mod, deps in graph().items():
        if mod.startswith("pygup.kernel"):
            assert "pygup.machine" not in deps, mod


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(g.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_circle():
    g = {m: {d for d in deps if d != "pygup"} for m, deps in graph().items()}
    # a package's __init__ importing its own children is not a circle of code
    cycle = find_cycle({m: {d for d in deps if not m or not d.startswith(m + ".")}
                        for m, deps in g.items()})
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", ["pygup.tools.fuzz", "pygup.kernel.gup"])
def test_modules_are_found(name):
    assert name in graph()
