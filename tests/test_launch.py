"""ppt_core.stages.launch, the way notebook 03 reaches torchrun: one DP arm of the session's smoke run trained again in
2 processes has the single-process guarantee, saves its adapter, and keeps a DP arm's training statistics
with the trainer; a bad command line stops with one line."""

import json

from ppt_core.run import artifacts, profiles
from ppt_core.stages import arm_training, launch

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
    written = artifacts.read_json(paths.model("full-dp8") / arm_training.RESULT_FILE)["result"]
    assert written["losses"] == [] and written["batch_sizes"] == []  # computed from private records, no noise


def test_a_bad_arm_or_a_run_without_data_stops_with_one_line(smoke_run, copy_run, capsys):
    assert launch.main(["--run-name", smoke_run.name, "--profile", "smoke", "--arm", "base"]) == 2
    assert "is not a fine-tuned arm" in capsys.readouterr().err
    empty = copy_run(smoke_run)  # a run folder with nothing in it
    assert launch.main(["--run-name", empty.root.name, "--profile", "smoke", "--arm", "full-nodp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist: build the run's data first" in err[0]


def smoke_inputs(paths):
    from ppt_core import data

    splits = data.load_splits(paths.data)
    return splits.texts("train"), splits.texts("heldout", kind="note"), splits.audit


def test_an_arm_trained_on_the_same_inputs_is_read_back_with_the_same_numbers(smoke_run):
    params = profiles.get_profile("smoke", run_name=smoke_run.name)
    texts, heldout, audit = smoke_inputs(smoke_run.paths)
    published = json.loads(smoke_run.paths.results.read_text())["training"]
    for arm in ("full-nodp", "pruned-dp8"):
        finished = arm_training.finished_arm(params, arm, texts, heldout, audit)
        assert finished is not None, arm
        assert artifacts.rounded(arm_training.result_record(finished)) == published[arm]
    assert finished.implementation_audit is not None  # a DP arm's audit comes back with it
    assert finished.sample_counts == arm_training.load_sample_counts(params, "pruned-dp8").tolist()
    # any input the training reads, changed, and the arm must train again
    for changed in (dict(params, lora_rank=2), dict(params, max_grad_norm=0.5), dict(params, seed=1),
                    dict(params, implementation_audit_canaries=100)):
        assert arm_training.finished_arm(changed, "pruned-dp8", texts, heldout, audit) is None
    assert arm_training.finished_arm(params, "pruned-dp8", texts[:-1], heldout, audit) is None
    assert arm_training.finished_arm(params, "pruned-dp8", texts, heldout[1:], audit) is None


def test_notebook_03_run_again_after_one_change_trains_only_the_arms_it_reaches(smoke_run, copy_run, monkeypatch,
                                                                               capsys):
    paths = copy_run(smoke_run, "data", "models")
    params = profiles.get_profile("smoke", run_name=paths.root.name, epsilons=[3])
    trained = []
    monkeypatch.setattr(arm_training, "train_arm", lambda params, arm, *a, **k: trained.append(arm) or arm)
    results = launch.train_arms(params, ["full-nodp", "full-dp3", "pruned-nodp", "pruned-dp3"], *smoke_inputs(paths))
    assert trained == ["full-dp3", "pruned-dp3"]  # the twins, untouched by ε, come back from the finished run
    assert results["full-dp3"] == "full-dp3" and results["full-nodp"].epsilon is None
    assert "full-nodp: read back from" in capsys.readouterr().out
    (paths.model("pruned-nodp") / "training.json").unlink()  # a save that never finished: trained again
    trained.clear()
    launch.train_arms(params, ["pruned-nodp"], *smoke_inputs(paths))
    assert trained == ["pruned-nodp"]
