"""The package's import graph: no cycle between modules or between packages (cli -> bench -> agents is one
way), and imports run api -> agents -> blend -> (runner, store, kernels).

Every `import` statement counts, including those inside functions (a lazy import is still a dependency).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "chunkcache"
FORBIDDEN = {  # package -> packages it must not import (they sit above it)
    "api": {"cli", "bench"},  # the HTTP service only: the CLI and the benchmarks sit above it
    "bench": {"cli"},
    "serving": {"api", "agents", "integrations", "cli", "bench"},  # the scheduler: api (and agents' turns) use it
    "blend": {"agents", "api", "integrations", "cli", "serving"},
    "agents": {"api", "cli"},
    "runner": {"blend", "agents", "api", "cli", "serving"},
    "store": {"blend", "agents", "api", "cli"},
    "kernels": {"blend", "agents", "api", "cli", "store"},
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the chunkcache modules it imports (a `from pkg import name` of a submodule counts as that one)."""
    mods = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args \
                    and isinstance(node.args[0], ast.Constant):
                deps.add(node.args[0].value)
        graph[mod] = {d for d in deps if d in mods and d != mod and not mod.startswith(d + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_run_down_the_layers():
    bad = [(m, d) for m, deps in import_graph().items() for d in deps
           if m.split(".")[1:2] and d.split(".")[1] in FORBIDDEN.get(m.split(".")[1], set())]
    assert not bad, bad


def test_no_cycle_between_packages():
    packages: dict[str, set[str]] = {}
    for m, deps in import_graph().items():
        a = m.split(".")[1] if "." in m else m
        packages.setdefault(a, set()).update(d.split(".")[1] for d in deps if d.split(".")[1] != a)
    graph = {p: packages.get(p, set()) for p in set(packages) | set().union(*packages.values())}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
