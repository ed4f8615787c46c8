"""The package layout the code relies on: the simulator stands apart from the exporter, and no
module imports another that (through any chain) imports it back."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("exporter", "simulator")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(tree: ast.AST, *, deferred: bool = True) -> Iterator[str]:
    """Every module named by an import, except under `if TYPE_CHECKING:`; with `deferred`
    false, only those run at import time (not inside a function)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if not deferred and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)
        stack.extend(ast.iter_child_nodes(node))


def _graph(*, deferred: bool = True) -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {m for m in _imports(tree, deferred=deferred) if m in mods and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_simulator_imports_nothing_from_the_exporter() -> None:
    graph = _graph()
    leaks = {
        f"{mod} -> {dep}"
        for mod, deps in graph.items()
        if mod.startswith("simulator")
        for dep in deps
        if dep.startswith("exporter")
    }
    raw = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "simulator").rglob("*.py")
        if "exporter." in "".join(_imports(ast.parse(p.read_text(encoding="utf-8"))))
    }
    assert not leaks and not raw, sorted(leaks | raw)


def test_no_import_cycle_at_import_time() -> None:
    cycle = _cycle(_graph(deferred=False))
    assert cycle is None, " -> ".join(cycle or [])


def test_no_import_cycle_even_through_deferred_imports() -> None:
    """A function-level import is still a dependency: the packages are layered without one."""
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# Modules below the adapters: they learn about providers from the registry, never by name.
PROVIDER_NEUTRAL = (
    "exporter/settings.py",
    "exporter/schema.py",
    "exporter/checks.py",
    "exporter/app.py",
    "exporter/model.py",
    "exporter/fold.py",
    "exporter/aggregates.py",
    "exporter/pricing.py",
    "exporter/budgets.py",
    "exporter/forecast.py",
    "exporter/poller.py",
    "exporter/ledger.py",
)


def test_no_provider_is_named_outside_its_adapter() -> None:
    from exporter.sources import adapters

    names = sorted(adapters())
    assert {"openai", "anthropic", "groq"} <= set(names)
    found = []
    for rel in PROVIDER_NEUTRAL:
        text = (ROOT / rel).read_text(encoding="utf-8").lower()
        for name in names:
            if name.replace("_", "") in text.replace("_", ""):
                found.append(f"{rel}: {name}")
    assert not found, found


def test_every_adapter_declares_itself_completely() -> None:
    from exporter.sources import adapters

    for name, adapter in adapters().items():
        module = adapter.build.__module__
        assert module == f"exporter.sources.{name}", (name, module)
        assert adapter.options.model_config.get("extra") == "forbid", name


def _expand(name: str) -> list[str]:
    """`llm_x_{a,b}_y` as the README writes families: llm_x_a_y and llm_x_b_y."""
    m = re.search(r"_\{([a-z_,]+)\}_", name)  # inside the name; label sets end it
    if m is None:
        return [re.sub(r"\{.*", "", name)]
    return [f"{name[: m.start()]}_{part}_{name[m.end() :]}" for part in m.group(1).split(",")]


def test_the_readme_metric_table_lists_every_metric_and_no_other() -> None:
    """names.py promises that the README's metric table is checked against it."""
    from exporter.names import SPECS

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Metrics\n")
    table = [
        line for line in readme[start:].split("\n## ", 2)[1].splitlines() if line.startswith("| `")
    ]
    listed: set[str] = set()
    for line in table:
        for code in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
            for name in _expand(code):
                if name.startswith("llm_"):
                    listed.add(re.sub(r"\{.*", "", name))
    specs = {s.name for s in SPECS}
    assert specs - listed == set(), "metrics missing from the README's table"
    assert listed - specs == set(), "README's table lists metrics that do not exist"
