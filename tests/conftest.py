"""Shared fixtures: the tiny random Llama (seconds), the embedded SmolLM2 (loaded once), and one smoke run of
the whole study that every test needing a pipeline reads.

Two tiers: `make test` runs every test not marked `slow` (at most 10 minutes from a fresh clone on a
2-core CPU); `make test-all` adds the `slow` ones (a whole pipeline per architecture, per seed pair and
in 2 processes; the embedded 135M model).
"""

import contextlib
import importlib.util
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from ppt_core.models import load_model  # noqa: E402
from ppt_core.run import artifacts, profiles  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# Short clinical notes for the tests that run a tiny model on text (similarity, pruning, a DP-LoRA step).
CLINICAL_NOTES = [
    "Patient admitted with community-acquired pneumonia and discharged on amoxicillin.",
    "Follow-up in two weeks with the cardiology clinic; continue apixaban 5 mg twice daily.",
    "The patient tolerated the procedure well.",
    "Atrial fibrillation with rapid ventricular response, rate controlled with metoprolol.",
    "Discharge note for a fall at home; no fracture on imaging.",
    "Sepsis of urinary origin, treated with ceftriaxone, afebrile at discharge.",
    "Asthma exacerbation, nebulised salbutamol, oral prednisolone for five days.",
    "Chest pain ruled out for acute coronary syndrome; outpatient stress test booked.",
]


def save_config_only(config, folder) -> str:
    """A checkpoint folder holding `config` and no weights (the early checks read only the config)."""
    config.save_pretrained(folder)
    return str(folder)


def one_thread_env() -> dict:
    """The environment of a test's subprocess: one thread per torch process. On a 2-core machine two torch
    processes spinning two threads each slow each other down by an order of magnitude."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run_all_command(*args) -> list[str]:
    """The command line of run_all.py with `args`, for a subprocess started from the repository root."""
    return [sys.executable, "run_all.py", *args]


def run_all(*args, timeout=1500):
    """run_all.py in a subprocess from the repository root, as a user runs it (on one thread)."""
    return subprocess.run(run_all_command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=one_thread_env())


def load_run_all():
    """run_all.py as a module."""
    spec = importlib.util.spec_from_file_location("run_all_module", REPO / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_all_in_process(*args) -> subprocess.CompletedProcess:
    """run_all.py's command line run in this process, its exit status and output captured as a subprocess's
    would be: for the checks that stop before any notebook runs (no interpreter, torch or transformers to
    start again)."""
    driver = load_run_all()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = driver.run(driver.parse_args(list(args)))
        except SystemExit as exit_:  # argparse's own errors
            status = exit_.code
    return subprocess.CompletedProcess(["run_all.py", *args], status, out.getvalue(), err.getvalue())


@dataclass(frozen=True)
class SmokeRun:
    """A finished smoke run: its name under runs/, its folders, and what run_all printed."""

    name: str
    paths: artifacts.RunPaths
    output: subprocess.CompletedProcess


SMOKE_RUN = "pytest-smoke"
_smoke_process: dict = {}


def _start_smoke_run() -> None:
    """Start the session's smoke run in the background, on one thread, while this process runs the other tests
    on one thread of the other core; `smoke_run` waits for it."""
    shutil.rmtree(REPO / "runs" / SMOKE_RUN, ignore_errors=True)
    log = tempfile.TemporaryFile(mode="w+")
    command = run_all_command("--profile", "smoke", "--run-name", SMOKE_RUN, "--force")
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
                               env=one_thread_env(), start_new_session=True)  # its kernels stop with it
    _smoke_process.update(process=process, log=log, command=command)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smoke_run():
    """The smoke profile, every notebook, once per session in runs/pytest-smoke (about 2 minutes, started when
    the tests are collected). Tests that read it must leave it as they found it: a test that changes a run
    works on a copy (`copy_run`)."""
    if not _smoke_process:
        _start_smoke_run()
    process, log = _smoke_process["process"], _smoke_process["log"]
    process.wait(timeout=1500)
    log.seek(0)
    result = subprocess.CompletedProcess(_smoke_process["command"], process.returncode, "", log.read())
    assert result.returncode == 0, result.stderr[-3000:]
    yield SmokeRun(SMOKE_RUN, artifacts.RunPaths(REPO / "runs" / SMOKE_RUN), result)
    shutil.rmtree(REPO / "runs" / SMOKE_RUN, ignore_errors=True)


@pytest.fixture
def copy_run(run_name):
    """copy_run(run, *folders) -> RunPaths of this test's own run folder holding copies of `folders` of `run`."""

    def copy(run: SmokeRun, *folders: str) -> artifacts.RunPaths:
        target = REPO / "runs" / run_name
        for folder in folders:
            shutil.copytree(run.paths.root / folder, target / folder)
        return artifacts.RunPaths(target)

    return copy


@pytest.fixture
def run_name(request):
    """A run folder of this test's own under runs/, removed afterwards."""
    name = f"pytest-{request.node.name}".replace("[", "-").replace("]", "")
    yield name
    shutil.rmtree(REPO / "runs" / name, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Every test of the embedded 135M model belongs to the slow tier. The tests that read the session's smoke
    run go last (in their order), so the run overlaps every other test instead of being waited for."""
    for item in items:
        if "smollm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: "smoke_run" in getattr(item, "fixturenames", ()))


def pytest_collection_finish(session):
    """When a selected test reads the session's smoke run, it starts now, beside the tests that do not."""
    wanted = any("smoke_run" in getattr(item, "fixturenames", ()) for item in session.items)
    if wanted and not session.config.option.collectonly:
        _start_smoke_run()


def pytest_sessionfinish(session):
    """A smoke run no test waited for (a failure stopped the session first) is stopped and removed."""
    if _smoke_process and _smoke_process["process"].poll() is None:
        os.killpg(_smoke_process["process"].pid, signal.SIGKILL)
        _smoke_process["process"].wait()
    shutil.rmtree(REPO / "runs" / SMOKE_RUN, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the tiny random Llama; tests must not modify it in place."""
    return load_model("tiny-random-llama", device="cpu")


@pytest.fixture(scope="session")
def smollm():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct."""
    return load_model("smollm2-135m", device="cpu")


@pytest.fixture
def smoke_params(tmp_path):
    """The smoke profile, writing under a temporary run folder."""
    return profiles.get_profile("smoke", run_name=f"pytest-{tmp_path.name}", figures_dir=str(tmp_path / "figures"))


@pytest.fixture(scope="session")
def tickets_file(tmp_path_factory):
    """A user data file of 20 support tickets: each opens with its own number and holds its own e-mail
    address and phone number, and all copy one help desk (help@shop.example.com)."""
    path = tmp_path_factory.mktemp("user") / "tickets.jsonl"
    path.write_text("".join(
        f'{{"text": "Ticket {i}: my order {1000 + i} is late. Reach me at customer{i}@example.com or '
        f'(212) 555-01{i:02d}. Copy to help@shop.example.com."}}\n' for i in range(20)))
    return path


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model's matrices are small: on a shared 2-core machine one thread is several times
    faster than two threads spinning against other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
