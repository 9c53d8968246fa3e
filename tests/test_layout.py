"""The package's layers (README "Layout"): import-linter's contracts from pyproject.toml, no
import circle anywhere in the package, and the public names of ``agcn_pyg`` unchanged."""

import os

import grimp
import pytest
from importlinter import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every name `from agcn_pyg import ...` offered before the layout moved the modules.
PUBLIC_NAMES = {
    "ADJACENCY_KINDS", "AdaptiveGCNConv", "AdaptiveGraphs", "CocoMultiLabel",
    "DEFAULT_ADJACENCY", "LabelGraph", "ListFileMultiLabel", "MLAGCN", "MultiLabelHead",
    "MultiLabelMetrics", "__version__", "asymmetric_loss", "build_transforms",
    "collate_skip_corrupt", "conditional_probability", "cooccurrence_counts", "count_parameters",
    "create_model", "export_model", "format_table", "from_pretrained", "identity_features",
    "image_embeddings", "label_graph_from_coco", "load_exported", "load_node_features",
    "make_synthetic_coco", "mlgcn_adjacency", "mlgcn_normalize", "multilabel_metrics",
    "plot_learned_graphs", "predict", "row_normalize", "save_pretrained", "squash_data_config",
    "strongest_edges",
}


def test_import_linter_contracts_hold(monkeypatch):
    monkeypatch.chdir(ROOT)  # the contracts live in pyproject.toml
    assert cli.lint_imports() == 0, "an import breaks a layer contract: run `lint-imports`"


def _cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import circle among the package's modules (depth-first search), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                return path[path.index(imported):] + [imported]
            if imported not in state and (found := visit(imported)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph.modules):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_circle():
    graph = grimp.build_graph("agcn_pyg", include_external_packages=False)
    assert len(graph.modules) > 30
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_circle():
    graph = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.d", "p.a")]:
        graph.add_import(importer=a, imported=b)
    assert _cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]


@pytest.mark.parametrize("folder", ["nn", "models", "data", "train", "tools"])
def test_concerns_have_folders(folder):
    assert os.path.isfile(os.path.join(ROOT, "agcn_pyg", folder, "__init__.py"))


def test_public_names_unchanged():
    import agcn_pyg

    assert set(agcn_pyg.__all__) == PUBLIC_NAMES
    for name in PUBLIC_NAMES:
        assert getattr(agcn_pyg, name) is not None
