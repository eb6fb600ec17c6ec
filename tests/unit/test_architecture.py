"""The package's shape: no import cycles, and imports only go down the layers.

Imports inside functions count (an import moved into a function to dodge a cycle
is still a cycle); ``if TYPE_CHECKING:`` imports do not, since they never run.
"""

from __future__ import annotations

import grimp
import pytest

LAYERS = (
    "ops",
    "api | serving",
    "pipeline",
    "tracking",
    "compress",
    "families",
    "evaluate | training",
    "backends",
    "models",
    "core",
)
"""Top to bottom; a module may import from its own layer's package and any layer below.
Names joined by ``|`` are siblings that must not import each other."""


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("hamnet", exclude_type_checking_imports=True)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
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
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
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
                    found.append(sorted(component))
    return found


KNOWN_CYCLES: list[list[str]] = []


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    cycles = [c for c in _cycles(graph) if c not in KNOWN_CYCLES]
    details = []
    for component in cycles:
        first, *rest = component
        chain = next(
            (graph.find_shortest_chain(importer=other, imported=first) for other in rest), None
        )
        back = graph.find_shortest_chain(importer=first, imported=rest[0])
        details.append(f"{component}: {chain} and back {back}")
    assert not cycles, "import cycles inside hamnet:\n" + "\n".join(details)


def test_imports_only_go_down_the_layers(graph: grimp.ImportGraph) -> None:
    layers = [
        grimp.Layer(*(f"{name.strip()}" for name in level.split("|")), independent=True)
        for level in LAYERS
    ]
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers, containers={"hamnet"})
    lines = []
    for dependency in sorted(illegal, key=lambda d: (d.importer, d.imported)):
        for route in dependency.routes:
            lines.append(
                f"{dependency.importer} -> {dependency.imported}: "
                f"{' -> '.join([*route.heads, *route.middle, *route.tails][:6])}"
            )
    assert not illegal, "imports that go up a layer:\n" + "\n".join(lines)


def test_the_package_root_stays_light(graph: grimp.ImportGraph) -> None:
    """``import hamnet`` loads only the core layer; the API is loaded on first use."""
    eager = graph.find_modules_directly_imported_by("hamnet")
    assert all(m.startswith("hamnet.core") or m.startswith("hamnet.api") for m in eager)
