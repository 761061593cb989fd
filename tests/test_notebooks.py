"""Committed notebooks: no outputs, one tagged parameters cell holding the default profile's values, and the
notebooks whose logic lives in ppt_core keep none of their own."""

import ast
from pathlib import Path

import nbformat
import papermill
import pytest

from ppt_core.run import profiles

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_notebooks_are_numbered_in_order():
    numbers = [int(nb.name[:2]) for nb in NOTEBOOKS]
    assert numbers == list(range(len(numbers))) and numbers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_holds_the_default_profile(path):
    notebook = nbformat.read(path, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    default = profiles.get_profile(profiles.DEFAULT_PROFILE)
    assignments = [node for node in ast.parse(tagged[0].source).body if isinstance(node, ast.Assign)]
    assert assignments
    for node in assignments:
        name = node.targets[0].id
        assert name in default, f"{path.name}: parameter {name!r} is not a profile key"
        assert ast.literal_eval(node.value) == default[name], f"{path.name}: {name} differs from the default profile"
        assert "  # " in tagged[0].source.splitlines()[node.lineno - 1], f"{path.name}: say what {name} does"
    assert "run_all.py --set" in tagged[0].source  # how to change a value for the whole study
    # papermill must read every one (run_all.py passes a profile's values by what it reads): a comment it cannot
    # parse (one holding "=") hides its parameter
    assert set(papermill.inspect_notebook(str(path))) == {node.targets[0].id for node in assignments}


# Every notebook's code cells only call ppt_core and show what it returns: no loop, comprehension, function or
# lambda of their own (the logic a reader could not test lives in the library, beside its peers).
LOGIC = (ast.For, ast.While, ast.FunctionDef, ast.Lambda, ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_holds_no_logic_of_its_own(path):
    notebook = nbformat.read(path, as_version=4)
    name = path.name
    for cell in notebook.cells:
        if cell.cell_type == "code":
            nodes = ast.walk(ast.parse(cell.source))
            found = sorted({type(node).__name__ for node in nodes if isinstance(node, LOGIC)})
            assert not found, f"{name}: a code cell holds {', '.join(found)}: move it into ppt_core\n{cell.source}"
