"""One place to change a setting: a run folder remembers the settings its notebooks ran with.

Each notebook's parameters cell declares the settings it reads, and several notebooks read the same one (`epsilons`
in 03 to 07). The first notebook of the study that declares a setting owns it: the value in its cell is the run's,
recorded in runs/<run>/settings.json with the notebook's number when it runs. A later notebook reads the run's
value: left at the profile's default in its cell, it takes the run's and says so; set to a third value, it stops
with one line naming both values and where to change it, before any work, instead of mixing two settings in one
results.json. So a learner who sets `epsilons = [1]` in notebook 03 changes it for 04 to 07 too, and `run_all.py
--set`, which gives every notebook the same value, never meets the stop.
"""

from __future__ import annotations

import json

from ppt_core.run import artifacts, profiles

# Where and how a run runs, not what it computes: never recorded, never compared
PLUMBING = ("profile", "run_name", "figures_dir", "device", "nproc")


class SettingMismatch(ValueError):
    """A notebook's setting disagrees with the one its run was made with, in a notebook that does not own it."""


def for_notebook(namespace: dict, notebook: str) -> dict:
    """The parameters of `notebook` (its number, "03"), its parameters cell's values reconciled with its run's
    settings (`reconcile`)."""
    params = profiles.from_notebook(namespace)
    return reconcile(params, [key for key in params if key in namespace and key not in PLUMBING], notebook)


def reconcile(params: dict, declared: list[str], notebook: str) -> dict:
    """`params` with each `declared` setting reconciled with the run's settings.json: the notebook that owns a
    setting (the earliest that declares it) records its value; another notebook takes the run's value where
    its own is the profile's default, and stops (SettingMismatch) where it is a third value. Writes the
    settings the notebook owns and prints each setting it took from the run."""
    path = artifacts.run_paths(params).settings
    run = f"runs/{params.get('run_name') or params['profile']}"
    recorded = artifacts.read_json(path) if path.exists() else {}
    defaults = profiles.get_profile(params["profile"])
    params, taken = dict(params), []
    for key in declared:
        value, entry = _plain(params[key]), recorded.get(key)
        if entry is None or notebook <= entry["set_by"]:
            recorded[key] = {"value": value, "set_by": notebook}
        elif value != entry["value"]:
            if value != _plain(defaults[key]):
                raise SettingMismatch(
                    f"{key} = {value!r} in notebook {notebook}, but {run} was made with {key} = "
                    f"{entry['value']!r}, set in notebook {entry['set_by']}: change it there and run on from that "
                    f"notebook, or give this notebook a run_name of its own")
            params[key] = entry["value"]
            taken.append(key)
    artifacts.write_json(path, recorded)
    for key in taken:
        print(f"{key} = {params[key]!r}: {run}'s, set in notebook {recorded[key]['set_by']} ({path.name})")
    return params


def _plain(value):
    """A setting as settings.json holds it (a tuple as a list), so equal settings compare equal."""
    return json.loads(json.dumps(value))
