"""ppt_core.launch, the way notebook 03 reaches torchrun: one DP arm of the session's smoke run trained again in
2 processes has the single-process guarantee, saves its adapter, and keeps a DP arm's training statistics
with the trainer; a bad command line stops with one line."""

import json

from ppt_core import arm_training, artifacts, launch, profiles

GUARANTEE = ("private", "epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "expected_batch_size",
             "max_grad_norm")


def test_an_arm_trained_by_torchrun_in_2_processes_has_the_single_process_guarantee(smoke_run, copy_run):
    paths = copy_run(smoke_run, "data")  # full-dp8 starts from the base model: the data is all it reads
    params = profiles.get_profile("smoke", run_name=paths.root.name)
    result = launch.launch(params, "full-dp8", nproc=2)
    single = json.loads(smoke_run.paths.results.read_text())["training"]["full-dp8"]
    two = arm_training.result_record(result)
    assert {key: two[key] for key in GUARANTEE} == {key: single[key] for key in GUARANTEE}
    assert (paths.model("full-dp8") / "adapter" / "adapter_config.json").exists()
    written = artifacts.read_json(paths.model("full-dp8") / launch.RESULT_FILE)["result"]
    assert written["losses"] == [] and written["batch_sizes"] == []  # computed from private records, no noise


def test_a_bad_arm_or_a_run_without_data_stops_with_one_line(smoke_run, copy_run, capsys):
    assert launch.main(["--run-name", smoke_run.name, "--profile", "smoke", "--arm", "base"]) == 2
    assert "is not a fine-tuned arm" in capsys.readouterr().err
    empty = copy_run(smoke_run)  # a run folder with nothing in it
    assert launch.main(["--run-name", empty.root.name, "--profile", "smoke", "--arm", "full-nodp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist: build the run's data first" in err[0]
