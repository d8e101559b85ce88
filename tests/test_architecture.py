"""The dependency rule, checked on the source: tools <- agents <- graphs <- API/CLI, no cycles.

Why a test: the rule is what keeps each layer usable on its own (the tools without an LLM,
the agents without a graph) and it erodes one convenient import at a time. This walks every
``import`` in the four code folders and ``metallmix/`` with :mod:`ast` (function-level and
``TYPE_CHECKING`` imports included: they are dependencies too) and fails with the offending
file and line. See docs/architecture.md for what each module owns.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> import prefix (pyproject.toml [tool.setuptools.package-dir]).
FOLDERS = {
    "tools": "metallmix.tools",
    "agents": "metallmix.agents",
    "graphs": "metallmix.graphs",
    "prompts": "metallmix.prompts",
    "metallmix": "metallmix",
}
# The bottom layer anything may import: errors, settings, progress lines, the graph's node
# names, atomic files and the prompt templates (text, no code dependencies).
CORE = (
    "metallmix.errors",
    "metallmix.config",
    "metallmix.progress",
    "metallmix.node_names",
    "metallmix.atomic",
    "metallmix.prompts",
)
LAYERS = {"core": 0, "tools": 1, "agents": 2, "graphs": 3, "top": 4}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: Path
    line: int


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    prefix = FOLDERS[rel.parts[0]]
    parts = list(rel.with_suffix("").parts[1:])
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([prefix, *parts])


def source_files() -> list[Path]:
    files: list[Path] = []
    for folder in FOLDERS:
        files.extend(p for p in sorted((ROOT / folder).rglob("*.py")) if "data" not in p.parts)
    return files


def layer(module: str) -> int:
    if module == "metallmix":  # the root package: __version__ and lazy re-exports only
        return LAYERS["core"]
    if any(module == c or module.startswith(c + ".") for c in CORE):
        return LAYERS["core"]
    for name in ("tools", "agents", "graphs"):
        prefix = f"metallmix.{name}"
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[name]
    return LAYERS["top"]


def resolve(target: str, known: set[str]) -> str | None:
    """The project module an import names (``from pkg import sub`` may name a submodule)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def edges() -> list[Edge]:
    files = source_files()
    known = {module_name(p) for p in files}
    found: list[Edge] = []
    for path in files:
        source = module_name(path)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = source if is_package else source.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    module = f"{base}.{node.module}" if node.module else base
                else:
                    module = node.module or ""
                names = [f"{module}.{alias.name}" for alias in node.names] or [module]
            for name in names:
                if not name.startswith("metallmix"):
                    continue
                target = resolve(name, known)
                if target is not None and target != source:
                    found.append(Edge(source, target, path, node.lineno))
    return found


def test_the_walk_sees_the_project() -> None:
    """Guard against a vacuous pass: the walk finds the layers and their imports."""
    found = edges()
    assert len(source_files()) > 50
    assert {layer(e.source) for e in found} >= {LAYERS[n] for n in ("tools", "agents", "top")}
    assert {layer(e.target) for e in found} >= {LAYERS[n] for n in ("core", "tools", "agents")}
    assert any(
        e.source.startswith("metallmix.agents") and e.target.startswith("metallmix.tools")
        for e in found
    )


def test_dependencies_point_one_way() -> None:
    found = [
        e
        for e in edges()
        # a package's __init__ may re-export its own submodules
        if layer(e.target) > layer(e.source) and not e.target.startswith(e.source + ".")
    ]
    upward = [f"{e.path.relative_to(ROOT)}:{e.line}: {e.source} imports {e.target}" for e in found]
    assert not upward, "imports against tools <- agents <- graphs <- API/CLI:\n" + "\n".join(upward)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_find_cycles_finds_one() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for e in edges():
        # A package importing its own submodules (re-exports) is not a cycle of concepts.
        if e.target.startswith(e.source + "."):
            continue
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)
