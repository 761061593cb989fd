"""Every notebook ends with one to three exercises, each with a solution hidden in a <details> block, and every
solution runs on the smoke profile: appended to its notebook and executed from a copy of the session's smoke run,
with the parameters the solution asks the learner to set first."""

import json
import re
import shutil

import nbformat
import papermill
import pytest
from conftest import REPO, load_run_all

from ppt_core.run import profiles

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
QUESTION = re.compile(r"^\d+\. \*\*", re.M)
SOLUTION = re.compile(r"<details><summary>Solution (\d+)</summary>(.*?)</details>", re.S)
CODE = re.compile(r"```python\n(.*?)```", re.S)
PARAMETERS = re.compile(r"<!-- solution parameters: (\{.*?\}) -->")


def exercises(notebook) -> tuple[int, list[tuple[dict, str]]]:
    """(the number of exercises, [(the parameters a solution sets first, its code)]) of a notebook's last cell."""
    cell = nbformat.read(notebook, as_version=4).cells[-1]
    assert cell.cell_type == "markdown" and cell.source.startswith("## Exercises"), notebook.name
    solutions = []
    for _, body in SOLUTION.findall(cell.source):
        parameters = PARAMETERS.search(body)
        solutions.append((json.loads(parameters.group(1)) if parameters else {}, "\n".join(CODE.findall(body))))
    return len(QUESTION.findall(cell.source)), solutions


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_notebook_ends_with_exercises_each_with_its_solution(notebook):
    questions, solutions = exercises(notebook)
    assert 1 <= questions <= 3 and len(solutions) == questions
    assert all(code.strip() for _, code in solutions)
    known = profiles.get_profile("smoke")
    assert all(set(parameters) <= set(known) for parameters, _ in solutions)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_solution_runs_on_the_smoke_profile(notebook, smoke_run, run_name, tmp_path):
    driver = load_run_all()
    shutil.copytree(smoke_run.paths.root, REPO / "runs" / run_name)
    from jupyter_client.kernelspec import KernelSpecManager

    kernel = driver.KERNEL if driver.KERNEL in KernelSpecManager().find_kernel_specs() else "python3"
    by_parameters: dict[str, list[str]] = {}
    for parameters, code in exercises(notebook)[1]:
        by_parameters.setdefault(json.dumps(parameters, sort_keys=True), []).append(code)
    for parameters, codes in by_parameters.items():
        source = nbformat.read(notebook, as_version=4)
        source.cells += [nbformat.v4.new_code_cell(code) for code in codes]
        path = tmp_path / notebook.name
        nbformat.write(source, path)
        params = profiles.get_profile("smoke", run_name=run_name, **json.loads(parameters))
        with driver.tempfile.TemporaryDirectory(prefix="ppt-kernels-") as sockets:
            papermill.execute_notebook(str(path), str(tmp_path / f"executed-{notebook.name}"),
                                       parameters=driver.notebook_parameters(path, params),
                                       cwd=str(REPO / "notebooks"), progress_bar=False, kernel_name=kernel,
                                       kernel_manager_class=driver.local_socket_kernels(sockets))
