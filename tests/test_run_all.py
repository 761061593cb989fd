"""run_all.py as a user runs it: bad input stops at once with one line and writes nothing;
the smoke profile runs every notebook end to end, deterministically, and resumes."""

import json
import shutil

import pytest
from conftest import REPO, run_all

from ppt_core import artifacts



def assert_one_line_error(result, *fragments):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_data_file(run_name):
    result = run_all("--data", "/nonexistent.jsonl", "--run-name", run_name)
    assert_one_line_error(result, "/nonexistent.jsonl", "does not exist")
    assert not (REPO / "runs" / run_name).exists()


def test_empty_data_file(run_name, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run_all("--data", str(empty), "--run-name", run_name)
    assert_one_line_error(result, "empty.jsonl", "is empty")
    assert not (REPO / "runs" / run_name).exists()


@pytest.mark.parametrize("args,fragment", [
    (["--model", "no-such-org/no-such-model"], "no-such-org/no-such-model"),
    (["--profile", "huge"], "unknown profile 'huge'"),
    (["--only", "42"], "--only '42'"),
])
def test_bad_arguments(run_name, args, fragment):
    result = run_all(*args, "--run-name", run_name)
    assert_one_line_error(result, fragment)
    assert not (REPO / "runs" / run_name).exists()


def test_help_explains_the_options():
    result = run_all("--help")
    assert result.returncode == 0
    for option in ("--profile", "--only", "--from", "--model", "--data", "--device", "--force"):
        assert option in result.stdout


@pytest.mark.smoke
def test_smoke_profile_end_to_end_is_deterministic_and_resumes():
    """Two smoke runs give identical results.json; a third run without --force skips everything."""
    names = ["pytest-smoke-a", "pytest-smoke-b"]
    try:
        for name in names:
            result = run_all("--profile", "smoke", "--run-name", name, "--force")
            assert result.returncode == 0, result.stderr[-3000:]
        notebooks = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
        first, second = (artifacts.RunPaths(REPO / "runs" / n) for n in names)
        assert sorted(p.name for p in first.notebooks.glob("*.ipynb")) == notebooks
        assert first.results.read_text() == second.results.read_text()
        stages = json.loads(first.results.read_text())
        assert "data" in stages
        assert list((first.root / "figures").glob("*.png")), "smoke figures go under runs/<run>/figures"
        again = run_all("--profile", "smoke", "--run-name", names[0])
        assert again.returncode == 0
        assert again.stderr.count("inputs unchanged, skipped") + again.stdout.count("inputs unchanged, skipped") == len(notebooks)
    finally:
        for name in names:
            shutil.rmtree(REPO / "runs" / name, ignore_errors=True)
