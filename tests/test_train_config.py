"""TrainConfig from a profile: the quick profile's values are the defaults, a DP arm's DPConfig carries the
profile's guarantee, and a setting that cannot train or cannot keep its promise is named with its fix."""

import pytest

from ppt_core.dp import privacy, train_config
from ppt_core.run import errors, profiles


def test_profile_checks(smoke_params):
    train_config.check_params(smoke_params)
    with pytest.raises(errors.TrainingConfigError, match="delta must be in"):
        train_config.check_params(dict(smoke_params, delta=0.5))
    with pytest.raises(errors.TrainingConfigError, match="target_epsilon must be > 0"):
        train_config.check_params(dict(smoke_params, epsilons=[8, 0]))
    with pytest.raises(errors.TrainingConfigError, match="loss_curve_records"):
        train_config.check_params(dict(smoke_params, loss_curve_records=smoke_params["n_heldout"] + 1))
    with pytest.raises(errors.TrainingConfigError, match="lr_schedule must be one of"):
        train_config.check_params(dict(smoke_params, lr_schedule="step"))
    config = train_config.config_from_params(smoke_params, 8)
    assert config.dp.target_epsilon == 8 and config.dp.delta == smoke_params["delta"]
    assert train_config.config_from_params(smoke_params).dp is None


def test_train_config_defaults_are_the_quick_profiles():
    quick = profiles.get_profile("quick")
    assert train_config.config_from_params(quick) == train_config.TrainConfig()
    assert train_config.config_from_params(quick, 8).dp == privacy.DPConfig(target_epsilon=8.0, delta=quick["delta"])
    with pytest.raises(errors.TrainingConfigError, match=r"unknown TrainConfig setting\(s\) \['learning_rat'\]"):
        train_config.config_from_params(quick, learning_rat=1e-3)


def test_each_family_trains_at_its_own_learning_rate(smoke_params):
    params = dict(smoke_params, nodp_learning_rate=1e-3, dp_learning_rates={1: 2e-3, 8: 4e-3})
    assert train_config.config_from_params(params).learning_rate == 1e-3
    assert train_config.config_from_params(params, 8).learning_rate == 4e-3
    assert train_config.config_from_params(params, 100_000).learning_rate == 4e-3  # the largest tuned ε below
    assert train_config.config_from_params(params, 3).learning_rate == 2e-3  # the cautious step of ε = 1
    assert train_config.config_from_params(params, 1).learning_rate == 2e-3
    as_recorded = dict(params, dp_learning_rates={"1": 2e-3, "8": 4e-3})  # settings.json's string keys
    assert train_config.config_from_params(as_recorded, 3).learning_rate == 2e-3
    assert train_config.learning_rate_choices(params, ["full-nodp", "pruned-dp3"]) == (
        "full-nodp: learning rate 0.001 (the non-private rate)\npruned-dp3: learning rate 0.002 (tuned at ε = 1)")
    assert train_config.config_from_params(params, 8, learning_rate=2e-2).learning_rate == 2e-2  # an override wins


def test_an_epsilon_below_every_tuned_rate_stops_before_any_work_naming_the_fix(smoke_params):
    params = dict(smoke_params, epsilons=[0.5], dp_learning_rates={1: 2e-3, 8: 4e-3})
    with pytest.raises(errors.TrainingConfigError, match=r"ε = 0.5 is below every ε with a tuned DP rate .*"
                                                         r"--dp-epsilons 0.5"):
        train_config.check_params(params)
    for bad in ({}, 0.01, {"eight": 0.01}, {8: -1e-2}):
        with pytest.raises(errors.TrainingConfigError, match="dp_learning_rates must map"):
            train_config.check_params(dict(smoke_params, dp_learning_rates=bad))
