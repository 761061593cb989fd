"""A notebook run by hand, as a learner runs it: JupyterLab in headless Chromium (Playwright) opens notebook 01 on a
copy of the session's smoke run, Run ▸ Run All Cells, and every cell finishes without an error."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import chromium
import nbformat
import pytest
from conftest import REPO, load_run_all, one_thread_env
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from ppt_core.run import profiles

NOTEBOOK = REPO / "notebooks" / "01_layer_similarity.ipynb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notebook_for(run_name: str, folder) -> str:
    """NOTEBOOK with the smoke profile's values for run `run_name` injected after its parameters cell, as papermill
    injects them; written to `folder`. Returns its file name."""
    params = profiles.get_profile("smoke", run_name=run_name)
    source = load_notebook_node(str(NOTEBOOK))  # papermill's reading: every cell gets its tags
    injected = parameterize_notebook(source, load_run_all().notebook_parameters(NOTEBOOK, params))
    nbformat.write(injected, folder / NOTEBOOK.name)
    return NOTEBOOK.name


def wait_for_server(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"jupyter lab did not answer {url} in {timeout} s")


def executed_cells(path) -> tuple[int, int, list[str]]:
    """(code cells, code cells with an execution count, the errors) of the notebook file as last saved."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    outputs = [output for cell in cells for output in cell.get("outputs", [])]
    errors = [f"{o['ename']}: {o['evalue']}" for o in outputs if o["output_type"] == "error"]
    return len(cells), sum(c.get("execution_count") is not None for c in cells), errors


@pytest.mark.slow
def test_a_notebook_runs_by_hand_in_jupyterlab_in_a_real_browser(smoke_run, run_name, tmp_path):
    from playwright.sync_api import sync_playwright

    shutil.copytree(smoke_run.paths.root, REPO / "runs" / run_name)
    served = tmp_path / "served"
    served.mkdir()
    name = notebook_for(run_name, served)
    port, token = free_port(), secrets.token_hex(16)
    env = dict(one_thread_env(), HF_HUB_OFFLINE="1", JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={served}"]
    command += ["--allow-root"] if os.geteuid() == 0 else []  # a container's root, as in CI
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium.executable()), args=chromium.LAUNCH_ARGS,
                                                 env={**os.environ, **chromium.environment()})
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/lab/tree/{name}?token={token}")
            page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=120_000)
            page.locator(".jp-StatusBar-Widget", has_text="| Idle").first.wait_for(timeout=120_000)  # the kernel
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            deadline = time.monotonic() + 600
            while True:  # save as it runs, read the file: every code cell executed, or an error
                page.keyboard.press("Control+s")
                time.sleep(3)
                n_cells, executed, errors = executed_cells(served / name)
                if errors or executed == n_cells or time.monotonic() > deadline:
                    break
            page.screenshot(path=str(tmp_path / "notebook.png"))  # what the learner saw, kept with the test's files
            browser.close()
        assert not errors, errors
        assert executed == n_cells, f"{executed} of {n_cells} code cells ran in 600 s"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
