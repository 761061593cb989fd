"""The pins: pyproject.toml is the one source; environment.yml must repeat exactly the same versions."""

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def pins(lines):
    return {m.group(1).lower(): m.group(2) for m in (re.match(r"\s*(?:- )?\"?([A-Za-z0-9_.-]+)==([^\"\s,]+)", line)
                                                      for line in lines) if m}


def test_environment_yml_repeats_the_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = pins(project["dependencies"] + project["optional-dependencies"]["test"])
    conda = pins((REPO / "environment.yml").read_text().splitlines())
    assert declared and conda == declared


def test_every_dependency_is_pinned_exactly():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
        assert "==" in requirement, requirement
