"""One place to change a setting: the notebook that owns a setting records it in the run's settings.json; a later
notebook left at the profile's default takes the run's value; one set to a third value stops, naming both."""

import json

import pytest

from ppt_core.run import artifacts, profiles, run_settings


@pytest.fixture
def run(tmp_path, monkeypatch):
    """The smoke profile's parameters in a run folder under a temporary runs/."""
    monkeypatch.setattr(artifacts, "REPO_ROOT", tmp_path)
    return profiles.get_profile("smoke", run_name="hand")


def recorded(params):
    return json.loads(artifacts.run_paths(params).settings.read_text())


def test_a_setting_changed_where_it_is_owned_reaches_the_later_notebooks(run, capsys):
    default = run["epsilons"]
    run_settings.reconcile(dict(run, epsilons=[1]), ["epsilons", "lora_rank"], "03")
    assert recorded(run)["epsilons"] == {"value": [1], "set_by": "03"}
    later = run_settings.reconcile(dict(run), ["epsilons"], "04")  # its cell left at the profile's default
    assert later["epsilons"] == [1] != default
    assert "epsilons = [1]: runs/hand's, set in notebook 03" in capsys.readouterr().out
    # the owner changes it back: its value is the run's again, default or not
    assert run_settings.reconcile(dict(run), ["epsilons"], "03")["epsilons"] == default
    assert run_settings.reconcile(dict(run), ["epsilons"], "06")["epsilons"] == default
    assert recorded(run)["epsilons"] == {"value": default, "set_by": "03"}


def test_a_third_value_stops_with_one_line_and_writes_nothing(run):
    run_settings.reconcile(dict(run, epsilons=[1]), ["epsilons"], "03")
    before = artifacts.run_paths(run).settings.read_bytes()
    with pytest.raises(run_settings.SettingMismatch) as stop:
        run_settings.reconcile(dict(run, epsilons=[3], lora_rank=4), ["lora_rank", "epsilons"], "05")
    message = str(stop.value)
    assert message == ("epsilons = [3] in notebook 05, but runs/hand was made with epsilons = [1], set in notebook "
                       "03: change it there and run on from that notebook, or give this notebook a run_name of its own")
    assert isinstance(stop.value, ValueError)  # run_all.py prints a ValueError as its one line
    assert artifacts.run_paths(run).settings.read_bytes() == before  # lora_rank not recorded by a stopped notebook


def test_the_earliest_notebook_owns_a_setting_and_equal_values_compare_equal(run):
    run_settings.reconcile(dict(run, lora_rank=4), ["lora_rank"], "06")  # run by hand before 03 ever ran
    run_settings.reconcile(dict(run, lora_rank=8), ["lora_rank"], "03")  # 03 comes first in the study: it owns it
    assert recorded(run)["lora_rank"] == {"value": 8, "set_by": "03"}
    run_settings.reconcile(dict(run, epsilons=(1, 3)), ["epsilons"], "03")
    assert run_settings.reconcile(dict(run, epsilons=[1.0, 3.0]), ["epsilons"], "07")["epsilons"] == [1.0, 3.0]


def test_a_notebook_namespace_records_what_it_declares_but_not_where_it_runs(run):
    namespace = {"profile": "smoke", "run_name": "hand", "device": "cpu", "nproc": 1, "epsilons": [2], "seed": 0,
                 "pd": object()}  # an import beside the parameters: not a setting
    params = run_settings.for_notebook(namespace, "03")
    assert params["epsilons"] == [2] and params["device"] == "cpu"
    assert set(recorded(run)) == {"epsilons", "seed"}
