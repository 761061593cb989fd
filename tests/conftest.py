"""Shared fixtures: the tiny random Llama (seconds) and the embedded SmolLM2 (loaded once)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from ppt_core import profiles  # noqa: E402
from ppt_core.models import load_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def run_all(*args, timeout=1500):
    """run_all.py in a subprocess from the repository root, as a user runs it."""
    return subprocess.run([sys.executable, "run_all.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def run_name(request):
    """A run folder of this test's own under runs/, removed afterwards."""
    name = f"pytest-{request.node.name}".replace("[", "-").replace("]", "")
    yield name
    shutil.rmtree(REPO / "runs" / name, ignore_errors=True)


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
