"""TrainConfig from a profile: the quick profile's values are the defaults, a DP arm's DPConfig carries the
profile's guarantee, and a setting that cannot train or cannot keep its promise is named with its fix."""

import pytest

from ppt_core import errors, privacy, profiles, train_config


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
    params = dict(smoke_params, nodp_learning_rate=1e-3, dp_learning_rate=4e-3)
    assert train_config.config_from_params(params).learning_rate == 1e-3
    assert train_config.config_from_params(params, 8).learning_rate == 4e-3
    assert train_config.config_from_params(params, 8, learning_rate=2e-2).learning_rate == 2e-2  # an override wins
