"""The study's table, read from the session's smoke run: one row per arm, each number the one its notebook
wrote to results.json, and the records every verdict pairs on."""

import json

import numpy as np
import pytest

from ppt_core.run import arms, profiles
from ppt_core.study import summary


def test_the_study_of_a_run_is_its_results_in_one_row_per_arm(smoke_run):
    params = profiles.get_profile("smoke", run_name=smoke_run.name)
    study = summary.load_study(params)
    results = json.loads(smoke_run.paths.results.read_text())
    assert list(study.table.index) == arms.arm_names(params) and study.seeds == [params["seed"]]
    for arm in study.table.index:
        perplexity = results["utility"][arm]["heldout_perplexity"]
        assert study.table.loc[arm, "perplexity"] == pytest.approx(perplexity["value"])
        assert study.table.loc[arm, "perplexity_low"] == pytest.approx(perplexity["low"])
    for arm, trained in results["training"].items():
        assert study.table.loc[arm, "epsilon"] == (trained["epsilon"] if trained["private"] else np.inf)
    assert {"pruning", "utility", "attacks"} <= set(study.records)
    assert set(study.notebook_seconds) >= {"00_data", "07_summary"}
