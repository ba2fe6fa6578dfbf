"""No import cycle among our modules, deferred imports (inside functions) included.

A cycle makes the import order matter: the module imported second sees the first half
built (`cannot import name ...` on some entry points and not others). Python only hits
it on the paths that run, so the graph is read from the source by grimp, the graph
import-linter checks the layer contracts on (`make lint`, pyproject.toml's
[tool.importlinter]): every ``import`` in a module, at any depth, is an edge.
"""

from __future__ import annotations

import grimp

PACKAGES = ("orchestrator", "jobs", "tuning", "serve", "cluster")


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """A chain back to the importer for every direct import that closes a circle."""
    found = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                found.append([importer, *back])
    return found


def test_no_module_of_ours_imports_itself_through_others():
    graph = grimp.build_graph(*PACKAGES)
    assert len(graph.modules) > 100
    # a deferred import is in the graph (orch's CLI imports the queue's client on use)
    assert graph.direct_import_exists(
        importer="orchestrator.cli", imported="orchestrator.queue_client"
    )
    assert cycles(graph) == []


def test_a_deferred_import_that_closes_a_circle_is_found():
    graph = grimp.build_graph(*PACKAGES)
    graph.add_import(importer="jobs.rows", imported="jobs.rank_reader")  # rank_reader uses rows
    assert ["jobs.rank_reader", "jobs.rows", "jobs.rank_reader"] in cycles(graph)
