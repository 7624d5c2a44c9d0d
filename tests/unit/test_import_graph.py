"""The floors of fleetdesk/ hold as a test, beside `lint-imports` (pyproject.toml): no import cycle at any depth,
every module directly under fleetdesk/ named on a floor of the layers contract, Qt only in fleetdesk.gui, and the
on-device agent on the standard library alone.

Imports are read as grimp reads them: those inside functions count, and so do those under TYPE_CHECKING (a name
used only in annotations is still a dependency; none of them runs upwards today, and none may).
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import grimp
import pytest

ROOT = "fleetdesk"
QT = ("PySide6", "pyqtgraph", "qasync", "shiboken6")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(ROOT, include_external_packages=True, cache_dir=None)


def internal(graph: grimp.ImportGraph) -> set[str]:
    return {m for m in graph.modules if m == ROOT or m.startswith(ROOT + ".")}


def contracts() -> list[dict[str, Any]]:
    with PYPROJECT.open("rb") as f:
        return list(tomllib.load(f)["tool"]["importlinter"]["contracts"])


def cycles(nodes: Iterable[str], edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one node (Tarjan, without recursion), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
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
                        found.append(sorted(component))
    return sorted(found)


def one_cycle(component: list[str], edges: Mapping[str, set[str]]) -> list[str]:
    """A shortest walk from the component's first member back to itself, inside the component (to name it)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(edges.get(node, set()) & members):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"{component} is not a cycle")


def describe(found: list[list[str]], edges: Mapping[str, set[str]]) -> str:
    return "\n".join(" -> ".join(one_cycle(component, edges)) for component in found)


def test_no_import_cycle_between_modules(graph: grimp.ImportGraph) -> None:
    modules = internal(graph)
    edges = {m: graph.find_modules_directly_imported_by(m) & modules for m in modules}
    found = cycles(modules, edges)
    assert not found, f"import cycles in fleetdesk/ (break each at its root, see README.md):\n{describe(found, edges)}"


def test_no_import_cycle_between_sibling_packages(graph: grimp.ImportGraph) -> None:
    """At every depth, the children of a package (each with everything under it) import each other without a
    cycle: fleetdesk.inventory importing fleetdesk.rollout while fleetdesk.rollout imports fleetdesk.inventory
    is a cycle even when no single module closes it."""
    modules = internal(graph)
    problems = []
    for package in sorted(m for m in modules if graph.find_children(m)):
        children = graph.find_children(package)
        owner = {}
        for child in children:
            owner[child] = child
            for descendant in graph.find_descendants(child):
                owner[descendant] = child
        edges: dict[str, set[str]] = {child: set() for child in children}
        for module, child in owner.items():
            for imported in graph.find_modules_directly_imported_by(module):
                if imported in owner and owner[imported] != child:
                    edges[child].add(owner[imported])
        found = cycles(children, edges)
        if found:
            problems.append(f"in {package}:\n{describe(found, edges)}")
    assert not problems, "import cycles between siblings:\n" + "\n".join(problems)


def layers_contract() -> dict[str, Any]:
    [contract] = [c for c in contracts() if c.get("type") == "layers" and c.get("containers") == [ROOT]]
    return contract


def floors() -> list[list[str]]:
    return [[name.strip().strip("()") for name in re.split(r"[|:]", layer)] for layer in layers_contract()["layers"]]


def test_every_module_under_fleetdesk_takes_a_floor(graph: grimp.ImportGraph) -> None:
    named = [name for floor in floors() for name in floor]
    present = {child.removeprefix(ROOT + ".") for child in graph.find_children(ROOT)}
    assert layers_contract().get("exhaustive") is True
    assert sorted(present - set(named)) == [], "give each new module a floor in pyproject.toml's layers contract"
    assert sorted(set(named) - present) == [], "the layers contract names modules that are gone"
    assert len(named) == len(set(named)), "a module is on two floors"


def test_the_root_package_imports_nothing_of_fleetdesk(graph: grimp.ImportGraph) -> None:
    """fleetdesk/__init__.py (its __version__) is read from every floor, so it stands below all of them."""
    assert graph.find_modules_directly_imported_by(ROOT) & internal(graph) == set()


def test_only_the_gui_imports_qt(graph: grimp.ImportGraph) -> None:
    outside = {m for m in internal(graph) if m != f"{ROOT}.gui" and not m.startswith(f"{ROOT}.gui.")}
    wrong = sorted((m, q) for m in outside for q in graph.find_modules_directly_imported_by(m) if q in QT)
    assert wrong == []


def test_the_agent_imports_only_itself_and_the_standard_library(graph: grimp.ImportGraph) -> None:
    [contract] = [c for c in contracts() if c.get("name") == "The on-device agent imports no third-party package"]
    allowed = {tuple(part.strip() for part in line.split("->")) for line in contract.get("ignore_imports", [])}
    agent = f"{ROOT}.agent"
    wrong = []
    for module in sorted(m for m in graph.modules if m == agent or m.startswith(agent + ".")):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported == agent or imported.startswith(agent + "."):
                continue
            if imported.partition(".")[0] in sys.stdlib_module_names or (module, imported) in allowed:
                continue
            wrong.append(f"{module} -> {imported}")
    assert wrong == []
