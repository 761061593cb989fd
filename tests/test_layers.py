"""The library's layering, shown by its folders: one package per concept under ppt_core/, ranked lowest first in
`ppt_core.PACKAGES` (the study's settings and run folders at the bottom, then uncertainty, the machine, models,
data, scoring, pruning, DP training, leakage, the stages, and the study's verdicts and report on top). Read from the
source (every `import`, at the top of a module or inside a function): a module imports only from its own package
or a lower one, every module sits in a declared package, and no chain of imports comes back to where it started."""

import ast
from pathlib import Path

import pytest

from ppt_core import PACKAGES

LIBRARY = Path(__file__).resolve().parent.parent / "ppt_core"
RANK = {package: rank for rank, package in enumerate(PACKAGES)}


def module_name(path: Path, root: Path) -> str:
    """ppt_core/dp/training.py -> "dp.training"; a package's __init__.py -> its package, "dp"; ppt_core's own -> ""."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_imports(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The ppt_core modules `path` imports, wherever the import statement sits, by module_name: `from ppt_core.dp
    import training` and `from ppt_core.dp.training import finetune` import "dp.training", `from ppt_core import
    models` and `from ppt_core.models import load_model` the package "models"."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "ppt_core":
            base = node.module.removeprefix("ppt_core").removeprefix(".")
            for alias in node.names:
                name = f"{base}.{alias.name}" if base else alias.name
                imported.add(name if name in modules else base)
        elif isinstance(node, ast.Import):
            imported |= {a.name.removeprefix("ppt_core.") for a in node.names if a.name.startswith("ppt_core.")}
    return imported - {module_name(path, root), ""}  # "": ppt_core itself (its __init__ imports nothing)


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the ppt_core modules it imports} for every module under `root` but ppt_core/__init__.py."""
    paths = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    paths.pop("")
    return {module: library_imports(path, root, set(paths)) for module, path in paths.items()}


def package(module: str) -> str:
    return module.split(".")[0]


def upward_imports(graph: dict[str, set[str]], module: str) -> dict[str, str]:
    """{imported module: its package} for each import of `module` from a package ranked above its own."""
    return {name: package(name) for name in graph[module] if RANK.get(package(name), -1) > RANK[package(module)]}


def check_no_cycle(graph: dict[str, set[str]]) -> None:
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


GRAPH = import_graph(LIBRARY)


def test_the_package_folders_are_the_declared_packages():
    folders = {path.name for path in LIBRARY.iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert sorted(folders - set(PACKAGES)) == [], "add the package to ppt_core.PACKAGES, at its rank"
    assert sorted(set(PACKAGES) - folders) == [], "ppt_core.PACKAGES names a package that does not exist"
    assert [name for name in PACKAGES if not (LIBRARY / name / "__init__.py").exists()] == []


def test_no_module_sits_directly_in_ppt_core():
    assert sorted(path.name for path in LIBRARY.glob("*.py")) == ["__init__.py"], "move the module into its package"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_from_a_higher_package(module):
    assert sorted(set(GRAPH[module]) - set(GRAPH)) == [], f"{module} imports a ppt_core module that does not exist"
    upward = upward_imports(GRAPH, module)
    assert upward == {}, f"{module} ({package(module)}) imports from a higher package: {upward}"


def test_the_imports_have_no_cycle():
    check_no_cycle(GRAPH)


def test_the_check_finds_a_cycle_and_an_upward_import(tmp_path):
    """The reader itself: an import inside a function counts, and so do `from ppt_core.x.y import z`, `from
    ppt_core.x import y` and `import ppt_core.x.y`."""
    root = tmp_path / "ppt_core"
    sources = {
        "__init__.py": "",
        "run/__init__.py": "",
        "run/arms.py": "from ppt_core.run import artifacts\n",
        "run/artifacts.py": "import ppt_core.run.arms\n",
        "uncertainty/__init__.py": "",
        "uncertainty/roc.py": "from ppt_core.run import arms\n\n\ndef f():\n    from ppt_core.stages.attacks import x\n"
                              "    from ppt_core.study import verdicts\n",
        "stages/__init__.py": "",
        "stages/attacks.py": "",
        "study/__init__.py": "",
        "study/verdicts.py": "",
    }
    for name, text in sources.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    graph = import_graph(root)
    assert graph["uncertainty.roc"] == {"run.arms", "stages.attacks", "study.verdicts"}
    assert upward_imports(graph, "uncertainty.roc") == {"stages.attacks": "stages", "study.verdicts": "study"}
    assert upward_imports(graph, "run.arms") == {}
    with pytest.raises(AssertionError, match="import cycle: run.arms -> run.artifacts -> run.arms"):
        check_no_cycle(graph)
