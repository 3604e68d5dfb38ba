"""The package's house: its import graph (read with `ast`, function-level imports included) has no cycle, and inside
`trl_shaped/study/` every import points down the rooms' order."""

from trl_shaped.study.sources import import_graph

# study/'s rooms, lowest first: a module imports only modules of lower rank (same rank: neither imports the other)
STUDY_RANKS = {
    "config": 0, "stats": 0, "sources": 0, "children": 0,
    "claims": 1, "commands": 1,
    "cells": 2, "figures": 2, "report": 2,
    "builtin_cell": 3, "cell_runner": 3,
    "launchers": 4,
    "runner": 5,
}  # fmt: skip


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (as the modules along it, the first repeated at the end), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_through_function_level_imports(tmp_path):
    package = tmp_path / "trl_shaped"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")
    (package / "c.py").write_text("import trl_shaped.a\n")
    graph = import_graph(package)
    assert graph["trl_shaped.a"] == {"trl_shaped.sub.b"} and graph["trl_shaped.c"] == {"trl_shaped.a"}
    assert find_cycle(graph) == ["trl_shaped.a", "trl_shaped.sub.b", "trl_shaped.a"]


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_study_imports_point_down():
    graph = import_graph()
    modules = {name.rsplit(".", 1)[1] for name in graph if name.startswith("trl_shaped.study.")}
    assert modules == set(STUDY_RANKS), "rank every module of trl_shaped/study/ here"
    upward = [
        f"{name} imports {target}"
        for name, targets in graph.items()
        if name.startswith("trl_shaped.study.")
        for target in targets
        if target.startswith("trl_shaped.study.")
        and STUDY_RANKS[target.rsplit(".", 1)[1]] >= STUDY_RANKS[name.rsplit(".", 1)[1]]
    ]
    assert upward == []
