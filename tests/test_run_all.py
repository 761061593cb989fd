"""run_all.py as a user runs it: bad input stops at once with one line and writes nothing;
the smoke profile runs every notebook end to end (the session's one smoke run), deterministically, and resumes."""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, load_run_all, one_thread_env, run_all, run_all_command, run_all_in_process

from ppt_core.run import arms, artifacts, profiles


def assert_one_line_error(result, *fragments):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def assert_quiet(executed):
    """An executed notebook shows results: no warnings, no stale progress widgets, no lists of saved paths."""
    for number, cell in enumerate(json.loads(executed.read_text())["cells"]):
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", ""))
            where = f"{executed.name} cell {number}: {text[:300]!r}"
            assert "Warning" not in text and "PosixPath" not in text, where
            assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {}), where


def test_missing_data_file(run_name):
    result = run_all_in_process("--data", "/nonexistent.jsonl", "--run-name", run_name)
    assert_one_line_error(result, "/nonexistent.jsonl", "does not exist")
    assert not (REPO / "runs" / run_name).exists()


def test_empty_data_file(run_name, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run_all_in_process("--data", str(empty), "--run-name", run_name)
    assert_one_line_error(result, "empty.jsonl", "is empty")
    assert not (REPO / "runs" / run_name).exists()


@pytest.mark.parametrize("args,fragment", [
    (["--model", "no-such-org/no-such-model"], "no-such-org/no-such-model"),
    (["--profile", "huge"], "unknown profile 'huge'"),
    (["--only", "42"], "--only '42'"),
])
def test_bad_arguments(run_name, args, fragment):
    result = run_all_in_process(*args, "--run-name", run_name)
    assert_one_line_error(result, fragment)
    assert not (REPO / "runs" / run_name).exists()


def test_help_explains_the_options():
    result = run_all("--help")
    assert result.returncode == 0
    for option in ("--profile", "--only", "--from", "--model", "--data", "--device", "--force"):
        assert option in result.stdout


def test_smoke_run_executes_every_notebook_quietly(smoke_run):
    notebooks = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(p.name for p in smoke_run.paths.notebooks.glob("*.ipynb")) == notebooks
    assert "without encryption" not in smoke_run.output.stderr  # kernels talk over local sockets
    for executed in smoke_run.paths.notebooks.glob("*.ipynb"):
        assert_quiet(executed)
    stages = json.loads(smoke_run.paths.results.read_text())
    assert {"data", "training", "summary"} <= set(stages)
    assert list((smoke_run.paths.root / "figures").glob("*.png")), "smoke figures go under runs/<run>/figures"


def test_a_second_run_resumes_and_a_forced_notebook_gives_the_same_results(smoke_run):
    """Without --force nothing re-runs; notebook 03 (DP training) forced again, one DP arm deleted, trains that
    arm again and reads the others back: the same results.json and the same adapters, bit for bit."""
    notebooks = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    again = run_all("--profile", "smoke", "--run-name", smoke_run.name)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stderr + again.stdout).count("inputs unchanged, skipped") == len(notebooks)

    adapters = sorted(smoke_run.paths.models.glob("*/adapter/adapter_model.safetensors"))
    before = [smoke_run.paths.results.read_bytes()] + [path.read_bytes() for path in adapters]
    shutil.rmtree(smoke_run.paths.model("pruned-dp8"))
    forced = run_all("--profile", "smoke", "--run-name", smoke_run.name, "--only", "03", "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    executed = (smoke_run.paths.notebooks / "03_dp_lora_finetuning.ipynb").read_text()
    assert executed.count("read back from") == 3 and "pruned-dp8: read back" not in executed
    trained = arms.trained_arm_names(profiles.get_profile("smoke"))  # the twins and the DP arms
    assert len(adapters) == len(trained) == 4
    assert [smoke_run.paths.results.read_bytes()] + [p.read_bytes() for p in adapters] == before


@pytest.mark.slow
def test_two_whole_smoke_runs_give_identical_results(smoke_run, run_name):
    result = run_all("--profile", "smoke", "--run-name", run_name, "--force")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (REPO / "runs" / run_name / "results.json").read_text() == smoke_run.paths.results.read_text()


def test_fingerprint_follows_the_content_of_the_data_file_and_the_model_folder(tmp_path):
    """Resume compares what the files hold, not their names: the same path with other records is another run."""
    driver = load_run_all()
    data_file, model_dir = tmp_path / "tickets.csv", tmp_path / "model"
    data_file.write_text("text\nfirst\nsecond\nthird\n")
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    params = {"data_path": str(data_file), "model": str(model_dir)}
    before = driver.inputs_fingerprint(params)
    assert driver.inputs_fingerprint(params) == before
    data_file.write_text("text\nother\nrecords\nentirely\n")
    after_data = driver.inputs_fingerprint(params)
    (model_dir / "config.json").write_text('{"num_hidden_layers": 3}')
    after_model = driver.inputs_fingerprint(params)
    assert len({before, after_data, after_model}) == 3
    assert driver.inputs_fingerprint({"data_path": None, "model": "tiny-random-llama"}) == \
        driver.inputs_fingerprint({"data_path": None, "model": "smollm2-135m"})


@pytest.mark.slow
def test_replaced_data_file_reruns_notebook_00(run_name, tmp_path):
    """Same path, other records: notebook 00 runs again and writes the new records; unchanged, it is skipped."""
    data_file = tmp_path / "tickets.csv"

    def write_tickets(word):
        data_file.write_text("text\n" + "".join(f"{word} ticket {i}: my order is late.\n" for i in range(30)))

    args = ("--profile", "smoke", "--data", str(data_file), "--run-name", run_name, "--only", "00")
    write_tickets("first")
    assert run_all(*args).returncode == 0
    write_tickets("second")
    again = run_all(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "skipped" not in again.stdout + again.stderr
    train = artifacts.read_jsonl(REPO / "runs" / run_name / "data" / "train.jsonl")
    assert any(r["text"].startswith("second ticket") for r in train)
    unchanged = run_all(*args)
    assert "inputs unchanged, skipped" in unchanged.stdout + unchanged.stderr


def test_model_folder_without_tokenizer_stops_before_notebook_00(run_name, tmp_path, tiny):
    """A checkpoint copied without its tokenizer files stops at the check, naming the folder and the fix."""
    folder = tmp_path / "model"
    tiny[0].save_pretrained(folder)
    result = run_all_in_process("--profile", "smoke", "--model", str(folder), "--run-name", run_name)
    assert_one_line_error(result, str(folder), "has no usable tokenizer", "save_pretrained(FOLDER)")
    assert not (REPO / "runs" / run_name).exists()


@pytest.mark.parametrize("argv, figures", [
    ([], REPO / "figures"),
    (["--profile", "paper"], REPO / "figures" / "paper"),
    (["--profile", "smoke"], REPO / "runs" / "smoke" / "figures"),
])
def test_only_run_all_regenerating_a_committed_run_writes_the_committed_figures(argv, figures):
    driver = load_run_all()
    assert artifacts.figures_dir(driver.study_params(driver.parse_args(argv))) == figures


def test_interrupted_run_names_the_notebook_and_how_to_resume(run_name):
    """Ctrl-C during a notebook: one line saying which one, and that the same command resumes; exit status 130."""
    command = run_all_command("--profile", "smoke", "--run-name", run_name, "--only", "00", "--force")
    # Ctrl-C's default action in the run, even where the tests run as a background job, whose SIGINT the shell
    # ignores (and Python then leaves ignored): `make test &`, a CI runner.
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=one_thread_env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stamps = REPO / "runs" / run_name / "notebooks" / ".stamps.json"
    deadline = time.monotonic() + 120
    while not stamps.exists() and time.monotonic() < deadline:  # written just before the notebook starts
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted in 00_data.ipynb" in stderr and "run the same command again to resume" in stderr


def test_set_overrides_a_profile_value_and_refuses_unknown_keys():
    driver = load_run_all()
    params = driver.study_params(driver.parse_args(["--profile", "smoke", "--set", "n_train=40",
                                                    "--set", "epsilons=[1, 8]"]))
    assert params["n_train"] == 40 and params["epsilons"] == [1, 8]
    with pytest.raises(ValueError, match=r"unknown profile parameter\(s\) \['n_trian'\]"):
        driver.study_params(driver.parse_args(["--profile", "smoke", "--set", "n_trian=40"]))
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        driver.parse_setting("n_train")


def test_a_notebook_executed_again_re_runs_every_notebook_after_it(run_name, tmp_path, monkeypatch):
    """`--only 02 --force` replaces 02's outputs: the next plain run re-runs 03, which read the old ones, and
    skips 01 before it; a run with nothing executed since skips everything."""
    import papermill

    driver = load_run_all()
    notebooks = []
    for name in ("01_a.ipynb", "02_b.ipynb", "03_c.ipynb"):
        notebooks.append(tmp_path / name)
        notebooks[-1].write_text(json.dumps({"cells": [], "name": name}))
    executed = []

    def execute_notebook(source, output, **kwargs):
        executed.append(Path(source).name)
        Path(output).write_text(Path(source).read_text())

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    monkeypatch.setattr(driver, "notebook_parameters", lambda notebook, params: {})
    monkeypatch.setattr(driver, "drop_progress_widgets", lambda output: None)
    params = {"profile": "smoke", "run_name": run_name}
    (REPO / "runs" / run_name / "notebooks").mkdir(parents=True)

    class Bar:
        def set_postfix_str(self, text): ...
        def update(self): ...
        def close(self): ...

    def run(selected, force=False):
        executed.clear()
        status, chain = driver.execute(params, notebooks, selected, "code", force, Bar(), {})
        assert status == 0
        return list(executed), chain

    assert run(notebooks)[0] == ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb"]
    assert run(notebooks)[0] == []  # nothing changed
    before = run(notebooks)[1]
    assert run([notebooks[1]], force=True)[0] == ["02_b.ipynb"]  # 02 alone, forced
    executed_after, after = run(notebooks)
    assert executed_after == ["03_c.ipynb"]  # 03 read what 02 replaced; 01 is upstream of it
    assert run(notebooks)[0] == [] and after != before  # the chain handed to pooling notebooks follows it too
