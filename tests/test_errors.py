"""The shared setting errors: each is a ValueError, which run_all.py reports as one line naming the value
and the fix, before anything runs."""

import inspect

import pytest
from conftest import REPO, run_all_in_process

from ppt_core.run import errors

ERRORS = [cls for _, cls in inspect.getmembers(errors, inspect.isclass) if cls.__module__ == errors.__name__]


@pytest.mark.parametrize("error", ERRORS, ids=lambda cls: cls.__name__)
def test_every_setting_error_is_a_value_error(error):
    assert issubclass(error, ValueError)


def test_a_training_setting_error_reaches_the_user_as_one_line(run_name):
    result = run_all_in_process("--profile", "smoke", "--set", "delta=0.5", "--run-name", run_name)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: delta must be in (0, 1/N_train)")
    assert not (REPO / "runs" / run_name).exists()
