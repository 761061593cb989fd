"""The library's layering: data and models at the bottom, the stages' kernels above them, the stages, then
the study's verdicts and report. Read from the source (every `import`, at the top of a module or inside a
function): a module imports only from its own layer or a lower one, every module has a layer, and no
chain of imports comes back to where it started."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ppt_core"

# Lowest first. A new module joins the layer of what it is.
LAYERS = {
    "foundation": ["__init__", "errors", "artifacts", "record_files", "arms", "profiles", "tokens", "stats", "roc",
                   "memory", "timing", "pii", "corpus", "user_data", "precision", "power", "run_settings"],
    "inputs": ["models", "data", "bertscore", "plots"],
    "model structure": ["architectures"],
    "kernels": ["similarity", "evaluation", "flops", "pruning", "batching", "frozen_prefix", "head_loss", "privacy",
                "distributed", "train_config", "training", "generation", "membership", "canaries", "extraction",
                "audit", "implementation_audit"],
    "stages": ["conformance", "arm_training", "launch", "utility", "attacks", "cost"],
    "study": ["verdicts", "pooling", "summary", "report", "figures", "checks"],
    "tools": ["lr_tuning"],
}
LAYER_OF = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}
NAMES = list(LAYERS)


def library_imports(path: Path) -> set[str]:
    """The ppt_core modules `path` imports, wherever the import statement sits."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "ppt_core":
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ppt_core."):
            imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imported |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ppt_core.")}
    return imported - {path.stem}


GRAPH = {path.stem: library_imports(path) for path in sorted(PACKAGE.glob("*.py"))}


def test_every_module_has_a_layer():
    assert sorted(set(GRAPH) - set(LAYER_OF)) == [], "add the module to LAYERS"
    assert sorted(set(LAYER_OF) - set(GRAPH)) == [], "LAYERS names a module that does not exist"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_from_a_higher_layer(module):
    upward = {name: NAMES[LAYER_OF[name]] for name in GRAPH[module] if LAYER_OF.get(name, -1) > LAYER_OF[module]}
    assert upward == {}, f"{module} ({NAMES[LAYER_OF[module]]}) imports from a higher layer: {upward}"


def test_the_imports_have_no_cycle():
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for imported in sorted(GRAPH.get(module, ())):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)


def test_the_check_finds_a_cycle_and_an_upward_import(tmp_path):
    """The reader itself: an import inside a function counts, and so does `from ppt_core.x import y`."""
    module = tmp_path / "similarity.py"
    module.write_text("def f():\n    from ppt_core.attacks import roc_auc\n    from ppt_core import tokens, verdicts\n")
    assert library_imports(module) == {"attacks", "tokens", "verdicts"}
