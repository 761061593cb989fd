"""The study's figures: each draws from the numbers it is given, and the same numbers give the same figure
in every process (no per-process salt reaches a plotted position)."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
from conftest import REPO

DRAW_CANARIES = """
import json, sys
import matplotlib
matplotlib.use("Agg")
from ppt_core.study import figures, plots
plots.use_style()
rows = [{"id": f"canary-{i}", "repetitions": reps, "method": "exact" if i % 2 else "beyond cap",
         "exposure_low": 2.0 + i, "exposure_high": 2.0 + i + (0 if i % 2 else 3)}
        for i, reps in enumerate([0, 1, 4, 4, 16, 16])]
canaries = {"reference_band": [0.5, 2.5], "secret_space": 10**6, "rows": rows}
fig = figures.canary_exposure({"base": {}, "full-nodp": {"canaries": canaries}, "full-dp8": {"canaries": canaries}})
x = [[float(v) for line in ax.get_lines() for v in line.get_xdata()] for ax in fig.axes]
x += [[float(p[0][0]) for c in ax.collections for p in c.get_segments()] for ax in fig.axes]
plots.save(fig, "canary_exposure", sys.argv[1])
print(json.dumps(x))
"""


def test_canary_exposure_jitters_each_canary_the_same_in_every_process(tmp_path):
    """The jitter was seeded by Python's str hash, salted per process: the figure moved from run to run."""
    drawn = []
    for salt in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=salt)
        out = subprocess.run([sys.executable, "-c", DRAW_CANARIES, str(tmp_path / salt)], check=True, cwd=REPO,
                             env=env, capture_output=True, text=True).stdout
        drawn.append(json.loads(out))
    assert drawn[0] == drawn[1]
    dots, bars = drawn[0][0], drawn[0][2]
    assert len(dots) == 3 and len(bars) == 2  # the reference canary (0 repetitions) is the band, not a point
    assert drawn[0][0] == drawn[0][1]  # one canary stands at the same place in every arm's panel
    assert all(0.8 < x / reps < 1.2 for x, reps in zip(dots, [1, 4, 16]))  # jittered, not moved to another count
    first, second = (tmp_path / run / "canary_exposure.png" for run in ("1", "2"))
    assert first.read_bytes() == second.read_bytes()


def test_pruning_figures_draw_every_strategy_and_both_speedups():
    from ppt_core.study import figures

    sweep = pd.DataFrame([{"strategy": s, "n_removed": n, "perplexity": 10.0 + n + i}
                          for i, s in enumerate(["pairwise", "last"]) for n in (0, 2, 4)])
    ax = figures.pruning_perplexity(sweep, depth=6).axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["pairwise", "last"]
    assert ax.get_yscale() == "log" and "6 blocks" in ax.get_title()
    speed = pd.DataFrame({"blocks removed": [0, 2], "measured speedup": [1.0, 1.2], "ideal speedup": [1.0, 1.3]})
    ax = figures.pruning_speed(speed).axes[0]
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[1.0, 1.3], [1.0, 1.2]]
    assert "batch 8" in ax.get_title()


def test_utility_and_speed_reads_the_speed_batch_of_every_arm():
    from ppt_core.machine.timing import SPEED_BATCH, batch_key
    from ppt_core.study import figures

    results = {arm: {"heldout_perplexity": {"value": v, "low": v - 1, "high": v + 1}}
               for arm, v in (("base", 30.0), ("pruned-noft", 45.0))}
    timings = {arm: {SPEED_BATCH: {"prefill_tokens_per_s": t}, batch_key(1): {"generation_ms_per_token": 1000 / t}}
               for arm, t in (("base", 100.0), ("pruned-noft", 125.0))}
    fig = figures.utility_and_speed(results, timings)
    heights = [[bar.get_height() for bar in ax.patches] for ax in fig.axes]
    assert heights == [[30.0, 45.0], [100.0, 125.0], [10.0, 8.0]]
    assert np.isclose(heights[2][1], 1000 / 125)


def test_audit_over_training_draws_each_arms_bounds_and_a_dp_arms_claim():
    from ppt_core.study import figures

    def point(passes, fdp, claimed):
        return {"passes": passes, "epsilon_lower_fdp": fdp, "epsilon_lower_one_run": fdp / 2,
                "claimed_epsilon": claimed, "auc": 0.5}

    results = {"base": {}, "full-nodp": {"audit": {"over_training": [point(1, 0.0, None), point(2, 1.5, None)]}},
               "full-dp8": {"audit": {"over_training": [point(1, 0.0, 5.0), point(2, 0.1, 8.0)]}}}
    ax = figures.audit_over_training(results).axes[0]
    lines = [(line.get_label(), list(line.get_ydata())) for line in ax.get_lines()]
    assert lines[0] == ("full-nodp", [0.0, 1.5]) and lines[1][1] == [0.0, 0.75]  # f-DP, then one-run
    assert lines[2] == ("full-dp8", [0.0, 0.1]) and lines[4][1] == [5.0, 8.0]  # a DP arm's claimed ε(t)
    assert len(lines) == 5  # no claim line for the non-private arm, nothing for an untrained one
    results["full-nodp"]["audit"].update(m=256, ceiling_one_run=3.4, ceiling_fdp=6.3)  # the audit's ceiling
    labels = [line.get_label() for line in figures.audit_over_training(results).axes[0].get_lines()]
    assert labels[:2] == ["ceiling of 256 audit canaries: f-DP 6.30", "ceiling, one run 3.40"] and len(labels) == 7
