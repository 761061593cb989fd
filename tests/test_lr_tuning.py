"""Hyperparameter tuning never reads the study's records: it trains on an independent draw."""

import shutil

import pytest

from ppt_core import data
from ppt_core.run import artifacts, profiles
from ppt_core.study import lr_tuning


@pytest.fixture
def params(smoke_params):
    yield smoke_params
    shutil.rmtree(artifacts.run_paths(lr_tuning.tuning_params(smoke_params)).root, ignore_errors=True)


def test_tuning_draw_has_its_own_seed_and_run_folder(params):
    tuned = lr_tuning.tuning_params(params)
    assert tuned["seed"] == lr_tuning.TUNING_SEED_OFFSET + params["seed"]
    assert tuned["run_name"] == f"tuning-{params['run_name']}"
    assert artifacts.run_paths(tuned).root != artifacts.run_paths(params).root


def test_tuning_refuses_user_data_and_colliding_seeds(params, tmp_path):
    with pytest.raises(lr_tuning.TuningError, match="data_path"):
        lr_tuning.tuning_params(dict(params, data_path=str(tmp_path / "notes.jsonl")))
    with pytest.raises(lr_tuning.TuningError, match="tuning range"):
        lr_tuning.tuning_params(dict(params, seeds=[0, lr_tuning.TUNING_SEED_OFFSET]))
    with pytest.raises(lr_tuning.TuningError, match="pruned arms use their family"):
        lr_tuning.tune_learning_rate(params, "pruned-dp8", [1e-2])
    with pytest.raises(lr_tuning.TuningError, match="positive"):
        lr_tuning.tune_learning_rate(params, "full-dp8", [0.0])


def test_check_disjoint_catches_a_shared_text(tiny, params, tmp_path):
    study = data.build_dataset(params, tmp_path / "study", tokenizer=tiny[1])
    drawn = data.build_dataset(lr_tuning.tuning_params(params), tmp_path / "tuning", tokenizer=tiny[1])
    lr_tuning.check_disjoint(study, drawn)  # independent draws share no text
    drawn.heldout.append(study.train[0])
    with pytest.raises(lr_tuning.TuningError, match="shares 1 texts"):
        lr_tuning.check_disjoint(study, drawn)


def test_the_draw_is_checked_against_every_seed_of_a_multi_seed_study(tiny, params, tmp_path):
    study = dict(params, seeds=[0, 1])
    drawn = data.build_dataset(lr_tuning.tuning_params(study), tmp_path / "tuning", tokenizer=tiny[1])
    lr_tuning.check_disjoint_from_every_seed(study, drawn, tiny[1])
    second = data.build_dataset(dict(params, seed=1, seeds=[1]), tmp_path / "seed-1", tokenizer=tiny[1])
    drawn.train.append(second.train[0])  # a record only the second seed's study trains on
    lr_tuning.check_disjoint_from_every_seed(params, drawn, tiny[1])  # one seed: that record is not its
    with pytest.raises(lr_tuning.TuningError, match="study seed 1: the tuning draw shares 1 texts"):
        lr_tuning.check_disjoint_from_every_seed(study, drawn, tiny[1])


def test_tuning_picks_a_rate_per_family_on_the_draw_each_by_its_lowest_heldout_loss(params, one_thread):
    families = lr_tuning.families_to_tune(params, [1e-3, 3e-1], [1e-3, 3e-1], [8])
    assert families == {"nodp": [1e-3, 3e-1], "dp8": [1e-3, 3e-1]}
    record = lr_tuning.tune_families(params, families, n_eval=8, progress=False)
    assert record["profile"] == "smoke" and set(record["families"]) == {"nodp", "dp8"}
    nodp, dp = record["families"]["nodp"], record["families"]["dp8"]
    assert (nodp["arm"], dp["arm"]) == ("full-nodp", "full-dp8")
    assert nodp["profile_learning_rate"] == params["nodp_learning_rate"]
    assert dp["profile_learning_rate"] == params["dp_learning_rates"][8]
    for family in (nodp, dp):
        assert family["learning_rates"] == [1e-3, 3e-1]
        best = min(range(2), key=family["heldout_loss"].__getitem__)
        assert family["chosen_learning_rate"] == family["learning_rates"][best]
        assert family["heldout_loss"][0] != family["heldout_loss"][1]
        assert family["tuning_seed"] == lr_tuning.TUNING_SEED_OFFSET + params["seed"]
    assert nodp["epsilon"] == [None, None]
    assert all(0 < eps <= 8 for eps in dp["epsilon"])  # the DP arm's own accountant, not a guess
    assert nodp["heldout_loss"] != dp["heldout_loss"]  # clipping and noise change the outcome of a rate
    assert (artifacts.run_paths(lr_tuning.tuning_params(params)).data / "train.jsonl").exists()
    assert not artifacts.run_paths(params).root.exists()  # the study's run folder is never written
    with pytest.raises(lr_tuning.TuningError, match="unknown family 'private'"):
        lr_tuning.tune_families(params, {"private": [1e-3]})


def test_families_follow_the_profiles_tuned_epsilons_and_a_new_one_keeps_the_others(params):
    assert set(lr_tuning.families_to_tune(params, [1e-3], [1e-2])) == (
        {"nodp"} | {f"dp{eps:g}" for eps in params["dp_learning_rates"]})
    assert lr_tuning.families_to_tune(params, [], [1e-2], [0.5]) == {"dp0.5": [1e-2]}
    earlier = {"profile": "smoke", "families": {"nodp": {"arm": "full-nodp"}, "dp8": {"arm": "full-dp8", "old": 1}}}
    record = {"profile": "smoke", "families": {"dp8": {"arm": "full-dp8"}, "dp1": {"arm": "full-dp1"}}}
    assert lr_tuning.merged(record, earlier)["families"] == {
        "nodp": {"arm": "full-nodp"}, "dp8": {"arm": "full-dp8"}, "dp1": {"arm": "full-dp1"}}
    assert lr_tuning.merged(record, dict(earlier, profile="quick")) == record


@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_every_rate_a_profile_uses_is_the_one_its_tuning_record_chose(profile):
    params = profiles.get_profile(profile)
    families = artifacts.read_json(lr_tuning.record_path(profile))["families"]
    assert families["nodp"]["chosen_learning_rate"] == params["nodp_learning_rate"]
    for epsilon, rate in params["dp_learning_rates"].items():
        tuned = families[f"dp{epsilon:g}"]
        assert tuned["arm"] == f"full-dp{epsilon:g}" and tuned["chosen_learning_rate"] == rate
        assert tuned["n_train_records"] > 0 and len(tuned["heldout_loss"]) == len(tuned["learning_rates"]) >= 3
