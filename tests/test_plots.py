"""Figures: one style, saved as PNG and PDF with the same bytes every time the same figure is drawn."""

import subprocess
import sys

from conftest import REPO

DRAW = """
import sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from ppt_core.study import plots
plots.use_style()
fig, ax = plt.subplots()
ax.plot([0, 1, 2], [2, 0, 1], color=plots.arm_color("pruned-dp8"), label="pruned-dp8")
ax.set(title="A figure", xlabel="x")
ax.legend()
assert plots.save(fig, "figure", sys.argv[1]) is None  # a notebook cell ending in save() shows the figure, not paths
"""


def test_the_same_figure_gives_the_same_bytes_in_two_processes(tmp_path):
    """No dates, producer strings or per-process salts in the files: regenerating an unchanged figure changes
    nothing."""
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        subprocess.run([sys.executable, "-c", DRAW, str(folder)], check=True, cwd=REPO)
    for name in ("figure.png", "figure.pdf"):
        first, second = ((folder / name).read_bytes() for folder in folders)
        assert first == second and len(first) > 1000, name
    assert b"CreationDate" not in (folders[0] / "figure.pdf").read_bytes()
