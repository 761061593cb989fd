"""Several seeds: each seed is a whole run, the summary pools them (a mean and a Student-t interval over
seeds per arm; verdicts from the seeds' records, resampling seeds, then records), every verdict states
how many seeds it rests on; the frontier figure; the projected cost of a profile; run_all --seeds."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from conftest import REPO, run_all, run_all_in_process

from ppt_core.leakage import audit
from ppt_core.run import artifacts, profiles
from ppt_core.study import checks, figures, pooling, report, summary, verdicts
from ppt_core.study.verdicts import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from ppt_core.uncertainty import stats

N, TOKENS = 60, 40


def rows_of(loss):
    """Per-record rows [sum log-prob, tokens] for per-token losses `loss` (nats)."""
    return np.c_[-np.asarray(loss) * TOKENS, np.full(len(loss), TOKENS)].astype(float)


def utility_records(seed, pruned_gap):
    """One seed's records/utility.npz: its own held-out records (difficulty), base and pruned-noft on them,
    the pruned model `pruned_gap` nats per token worse."""
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(1.0, 5.0, N)
    return {"utility": {"base": rows_of(difficulty),
                        "pruned-noft": rows_of(difficulty + pruned_gap + rng.normal(0, 0.01, N))}}


def keeps_performance(gaps, n_boot=300):
    """The keeps_performance verdict over one seed per gap, as notebook 07 reaches it."""
    seeds = list(range(len(gaps)))
    records = pooling.pool_records({s: utility_records(s, gap) for s, gap in zip(seeds, gaps)})
    params = profiles.get_profile("smoke", seeds=seeds, n_bootstrap=n_boot)
    claims = verdicts.paper_claims(params, {}, {}, records)
    return next(c for c in claims if c.key == "keeps_performance"), claims


# --- pooling the verdicts -------------------------------------------------------------------------------
def test_pooled_verdicts_reach_every_outcome_and_say_how_many_seeds():
    # perplexity ratio exp(gap): 1.02 (within 10%), 1.5 (far outside), and seeds that disagree
    within, claims = keeps_performance([0.02, 0.02, 0.02])
    assert within.outcome == SUPPORTED and within.seeds == 3
    assert all(c.seeds == 3 for c in claims) and "(3 seeds)" in verdicts.claims_markdown(claims)
    assert keeps_performance([0.4, 0.4, 0.4])[0].outcome == CONTRADICTED
    split, _ = keeps_performance([-0.1, 0.4, 0.02])
    assert split.outcome == INCONCLUSIVE  # each seed alone is decisive, but they do not agree
    one_seed = [verdicts.paper_claims(profiles.get_profile("smoke", n_bootstrap=300), {}, {},
                                      pooling.pool_records({0: utility_records(0, gap)}))
                for gap in (-0.1, 0.4)]
    assert [c[1].outcome for c in one_seed] == [SUPPORTED, CONTRADICTED] and one_seed[0][1].seeds == 1


def test_pool_records_labels_every_record_with_its_seed():
    per_seed = {3: utility_records(3, 0.1), 7: utility_records(7, 0.1)}
    per_seed[3]["attacks"] = {"members/ids": np.array(["a", "b"]), "x/members/reference": np.array([1.0, 2.0])}
    per_seed[7]["attacks"] = {"members/ids": np.array(["c"]), "x/members/reference": np.array([3.0])}
    pooled = pooling.pool_records(per_seed)
    assert pooled["utility"]["base"].shape == (2 * N, 2)
    assert list(np.unique(pooled["utility"]["runs"], return_counts=True)[1]) == [N, N]
    assert list(pooled["attacks"]["members/runs"]) == [3, 3, 7]
    assert list(pooled["attacks"]["x/members/reference"]) == [1.0, 2.0, 3.0] and pooled["pruning"] == {}


def test_membership_auc_is_computed_within_each_seed():
    """Seed 1's scores sit far above seed 0's: an AUC over the mixed scores would read that offset as
    membership; within each seed both arms' AUCs are exact and their difference is averaged."""
    from ppt_core.uncertainty.roc import roc_auc

    rng = np.random.default_rng(0)
    records, per_seed_difference = {}, []
    for seed, offset in ((0, 0.0), (1, 10.0)):
        m, n = rng.normal(offset + 0.5, 1, 50), rng.normal(offset, 1, 50)
        a_m, a_n = m + rng.normal(0, 0.3, 50), n + rng.normal(0, 0.3, 50)
        part = {"members/ids": np.arange(50), "nonmembers/ids": np.arange(50),
                "p/members/reference": a_m, "p/nonmembers/reference": a_n,
                "f/members/reference": m, "f/nonmembers/reference": n}
        records[seed] = {"attacks": part}
        per_seed_difference.append(roc_auc(a_m, a_n) - roc_auc(m, n))
    pooled = pooling.pool_records(records)["attacks"]
    difference = verdicts.membership_auc_difference(pooled, "p", "f", n_boot=100)
    assert difference["value"] == pytest.approx(np.mean(per_seed_difference)) and difference["seeds"] == 2
    auc = pooling.pooled_membership_auc(pooled, "f", "reference", n_boot=100)
    assert auc["value"] < 0.75  # the 10-unit offset between seeds would give about 0.9 if mixed


def test_pooled_attacks_take_every_canary_and_the_lowest_audit_bound():
    def attacks(audit, exposure):
        return {"full-dp8": {"membership": {"signals": {"reference": {}}},
                             "canaries": {"reference_band": [0.5, 3.0 + audit],
                                          "rows": [{"repetitions": 4, "exposure_low": exposure,
                                                    "exposure_high": exposure}]},
                             "audit": {"epsilon_lower_one_run": audit, "epsilon_lower_fdp": audit + 0.1,
                                       "claimed_epsilon": 8.0}}}

    pooled = pooling.pool_attacks({0: attacks(0.4, 2.0), 1: attacks(0.0, 1.0)}, {})["full-dp8"]
    assert [r["exposure_low"] for r in pooled["canaries"]["rows"]] == [2.0, 1.0]
    assert pooled["canaries"]["reference_band"] == [0.5, 3.4]
    assert pooled["audit"] == {"epsilon_lower_one_run": 0.0, "epsilon_lower_fdp": 0.1, "claimed_epsilon": 8.0}
    assert "membership" not in pooled  # no per-record scores given: nothing to pool, never a guess
    ceilings = {"m": 256, "ceiling_one_run": 3.02, "ceiling_fdp": 6.27}
    seeds = {seed: attacks(0.1, 1.0) for seed in (0, 1)}
    for seed in seeds:
        seeds[seed]["full-dp8"]["audit"].update(ceilings)
    assert audit.ceiling_of(pooling.pool_attacks(seeds, {})) == {"m": 256, "one_run": 3.02, "fdp": 6.27}


# --- pooling the table ----------------------------------------------------------------------------------
def seed_table(perplexity, exposure, speedup):
    return pd.DataFrame([
        {"arm": "base", "epsilon": np.inf, "perplexity": perplexity, "perplexity_low": perplexity - 1,
         "perplexity_high": perplexity + 1, "exposure_highest_low": exposure, "exposure_highest_high": exposure + 1,
         "membership_signal": "loss", "speedup": 1.0},
        {"arm": "pruned-nodp", "epsilon": np.inf, "perplexity": perplexity * 2, "perplexity_low": np.nan,
         "perplexity_high": np.nan, "exposure_highest_low": exposure + 5, "exposure_highest_high": exposure + 6,
         "membership_signal": "reference", "speedup": speedup},
    ]).set_index("arm")


def test_pooled_table_gives_the_mean_and_a_t_interval_over_seeds():
    table = summary.pooled_table({0: seed_table(10.0, 2.0, 1.1), 1: seed_table(12.0, 4.0, 1.3),
                                  2: seed_table(14.0, 3.0, 1.2)})
    logs = np.log([10, 12, 14])
    half = scipy.stats.t.ppf(0.975, 2) * np.std(logs, ddof=1) / np.sqrt(3)
    base = table.loc["base"]
    assert base.perplexity == pytest.approx(np.exp(logs.mean()))  # perplexity pools on the log scale
    assert (base.perplexity_low, base.perplexity_high) == pytest.approx(np.exp([logs.mean() - half,
                                                                               logs.mean() + half]))
    assert (base.exposure_highest_low, base.exposure_highest_high) == (2.0, 5.0)  # the seeds' envelope
    assert table.loc["pruned-nodp", "speedup"] == pytest.approx(1.2)
    assert table.loc["pruned-nodp", "membership_signal"] == "reference" and base.seeds == 3
    two = summary.pooled_table({0: seed_table(10.0, 2.0, 1.1), 1: seed_table(12.0, 4.0, 1.3)})
    assert two.loc["base", "perplexity_high"] - two.loc["base", "perplexity_low"] > 20  # t with 1 df: honest, wide
    smoke = profiles.get_profile("smoke")
    empty = summary.pooled_table({0: summary.summary_table(smoke, {}, {}), 1: summary.summary_table(smoke, {}, {})})
    assert "Over 2 seeds (0, 1)" in report.results_markdown(smoke, empty, [], {}, seeds=[0, 1])


def planted_seed(seed, perplexity, hits, trials, audit_fdp):
    """One seed's row of an arm: its perplexity, extraction hits of `trials`, and audit bound."""
    share = stats.proportion(hits, trials)
    row = summary.summary_table(profiles.get_profile("smoke"), {}, {}).loc[["full-nodp"]].copy()  # every column
    row.loc["full-nodp", ["perplexity", "perplexity_low", "perplexity_high"]] = perplexity * np.array([1, 0.9, 1.1])
    row.loc["full-nodp", ["extraction_hits", "extraction_hits_low", "extraction_hits_high"]] = (
        share["value"], share["low"], share["high"])
    row.loc["full-nodp", ["extraction_hits_trials", "audit_epsilon_one_run", "audit_epsilon_fdp"]] = (
        trials, audit_fdp / 2, audit_fdp)
    return row


def test_a_diverged_seed_is_flagged_not_averaged_and_no_interval_goes_below_zero():
    """The committed paper run's full-nodp: seeds at 51.1, 5538 (diverged) and 21 read 1.87e+03 [-6.02e+03,
    9.76e+03] as a mean over seeds; on the log scale without the diverged seed it is positive and flagged."""
    table = summary.pooled_table({0: planted_seed(0, 51.1, 0, 8, 4.35), 1: planted_seed(1, 5538.0, 0, 8, 3.9),
                                  2: planted_seed(2, 21.0, 0, 8, np.nan)})
    row = table.loc["full-nodp"]
    assert row.diverged_seeds == "1 (5.54e+03)" and row.seeds == 3
    assert row.perplexity == pytest.approx(np.sqrt(51.1 * 21.0))  # the geometric mean of the two kept
    assert 0 < row.perplexity_low < 21 < 51.1 < row.perplexity_high
    markdown = report.markdown_table(table)
    assert "(diverged, left out: seed 1 (5.54e+03))" in markdown
    together = summary.pooled_table({0: planted_seed(0, 51.1, 0, 8, 4.35), 2: planted_seed(2, 21.0, 0, 8, 4.0)})
    assert together.loc["full-nodp", "diverged_seeds"] == ""  # two seeds: none can be told apart


def test_shares_pool_their_counts_and_audit_bounds_their_smallest():
    table = summary.pooled_table({0: planted_seed(0, 20.0, 0, 8, 4.35), 1: planted_seed(1, 22.0, 0, 8, 3.9),
                                  2: planted_seed(2, 21.0, 0, 8, np.nan)})
    row = table.loc["full-nodp"]
    assert (row.extraction_hits, row.extraction_hits_low) == (0.0, 0.0) and row.extraction_hits_trials == 24
    assert row.extraction_hits_high == pytest.approx(0.1425, abs=1e-4)  # Clopper-Pearson of 0 of 24, not [0, 0]
    assert row.audit_epsilon_fdp == 3.9 and row.audit_epsilon_fdp_seeds == "4.35, 3.9, –"  # not their mean
    assert "1.95 / 3.9 (seeds: 2.17, 1.95, – / 4.35, 3.9, –)" in report.markdown_table(table)
    hits = summary.pooled_table({0: planted_seed(0, 20.0, 1, 8, 1.0), 1: planted_seed(1, 22.0, 2, 8, 1.0)})
    assert hits.loc["full-nodp", "extraction_hits"] == pytest.approx(3 / 16)


def test_the_pooled_canary_p_value_is_one_test_on_every_seeds_canaries():
    """Three seeds, each 2 canaries inserted 32× against 20 references: the table's p is the rank test on the 6
    and the 60 together (what the leak verdict reads), not the mean of three p-values."""
    rng = np.random.default_rng(3)
    rows = {seed: [{"repetitions": 32 if i < 2 else 0, "secret_gain": float(rng.normal(1.0 if i < 2 else 0.0))}
                   for i in range(22)] for seed in range(3)}
    tables = {seed: planted_seed(seed, 20.0, 0, 8, 1.0) for seed in rows}
    for seed, table in tables.items():
        table["canary_p_value"] = verdicts.canary_rank_test({"rows": rows[seed]})["p_value"]
    pooled_rows = [row for seed_rows in rows.values() for row in seed_rows]
    table = summary.with_pooled_rank_tests(summary.pooled_table(tables), {"full-nodp": {"canaries": {
        "rows": pooled_rows}}})
    inserted = [r["secret_gain"] for r in pooled_rows if r["repetitions"]]
    reference = [r["secret_gain"] for r in pooled_rows if not r["repetitions"]]
    pooled = scipy.stats.mannwhitneyu(inserted, reference, alternative="greater").pvalue
    assert table.loc["full-nodp", "canary_p_value"] == pytest.approx(pooled)
    assert summary.pooled_table(tables).loc["full-nodp", "canary_p_value"] != pytest.approx(pooled)


def test_an_auc_interval_over_seeds_stays_inside_what_an_auc_can_be():
    """The paper run's pruned-nodp: membership AUCs near 1 on three seeds read 0.92 [0.78, 1.1] as a plain
    Student-t interval; an AUC cannot pass 1, and cutting the interval there keeps its coverage."""
    seeds = {}
    for seed, auc, delta in ((0, 0.99, 0.5), (1, 0.97, 0.45), (2, 0.80, 0.3)):
        row = planted_seed(seed, 7.0, 0, 8, 4.0)
        row.loc["full-nodp", ["membership_auc", "membership_auc_low", "membership_auc_high"]] = (auc, auc - 0.05,
                                                                                                min(auc + 0.05, 1))
        row.loc["full-nodp", ["delta_auc", "delta_auc_low", "delta_auc_high"]] = (delta, delta - 0.1, delta + 0.1)
        seeds[seed] = row
    row = summary.pooled_table(seeds).loc["full-nodp"]
    plain = stats.mean_interval(np.array([0.99, 0.97, 0.80]))
    assert plain["high"] > 1  # what the table would say without the range
    assert row.membership_auc == pytest.approx(plain["value"])
    assert row.membership_auc_low == pytest.approx(plain["low"])
    assert row.membership_auc_high == 1.0
    assert row.delta_auc_low == pytest.approx(stats.mean_interval(np.array([0.5, 0.45, 0.3]))["low"])


# --- the frontier figure --------------------------------------------------------------------------------
def frontier_table():
    rows = []
    for family, worse, speed in (("full", 1.0, 1.0), ("pruned", 1.3, 1.25)):
        for name, eps, ppl in ((f"{family}-nodp", np.inf, 9), (f"{family}-dp1", 0.98, 40), (f"{family}-dp8", 7.9, 25)):
            rows.append({"arm": name, "epsilon": eps, "perplexity": ppl * worse, "perplexity_low": ppl * worse - 2,
                         "perplexity_high": ppl * worse + 2, "speedup": speed,
                         "audit_epsilon_one_run": 0.0 if np.isfinite(eps) else 2.5,
                         "audit_epsilon_fdp": 0.2 if np.isfinite(eps) else 4.3,
                         "delta_auc": 0.02 * eps if np.isfinite(eps) else 0.4, "delta_auc_low": 0.0,
                         "delta_auc_high": 0.5})
    rows += [{"arm": "base", "epsilon": np.inf, "perplexity": 34.0, "speedup": 1.0},
             {"arm": "pruned-noft", "epsilon": np.inf, "perplexity": 55.0, "speedup": 1.25}]
    return pd.DataFrame(rows).set_index("arm")


def test_frontier_figure_builds_from_a_table(tmp_path):
    from ppt_core.study import plots

    fig = figures.frontier(frontier_table())
    left, middle, right = fig.axes
    labels = left.get_legend_handles_labels()[1]
    assert "pruned (speedup 1.25×)" in labels and "full" in labels
    assert {"base (not fine-tuned)", "pruned-noft (not fine-tuned)"} <= set(labels)
    assert [t.get_text() for t in left.get_xticklabels()][-1] == "∞"
    assert [line.get_ydata()[0] for line in left.get_lines() if line.get_linestyle() == "--"] == [34.0]
    points = [(line.get_xdata()[0], line.get_ydata()[0]) for line in right.get_lines() if line.get_marker() in "o^"]
    infinity = right.get_xticks()[-1]
    assert [t.get_text() for t in right.get_xticklabels()][-1] == "∞"
    private = [(x, y) for x, y in points if x < infinity]
    assert len(private) == 8 and all(y <= x for x, y in private)  # every DP arm's audit bound under its claim
    assert sorted(y for x, y in points if x == infinity) == [2.5, 2.5, 4.3, 4.3]  # the twins: a leak, found
    two_seeds = figures.frontier(frontier_table(), {0: frontier_table(), 1: frontier_table()})
    assert len([line for line in two_seeds.axes[2].get_lines() if line.get_marker() in "o^"]) == 24  # per seed
    with_ceiling = figures.frontier(frontier_table(), ceiling={"m": 256, "one_run": 3.4, "fdp": 6.3}).axes[2]
    assert [line.get_ydata()[0] for line in with_ceiling.get_lines() if line.get_color() == "0.5"] == [6.3, 3.4]
    plots.save(fig, "frontier", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frontier.pdf", "frontier.png"]


def test_a_dose_arm_stands_between_the_claims_and_infinity_and_its_claim_runs_off_the_top():
    dose = pd.DataFrame([{"arm": "full-dp100000", "epsilon": 1e5, "perplexity": 9.5, "perplexity_low": 8.0,
                          "perplexity_high": 11.0, "speedup": 1.0, "audit_epsilon_one_run": 1.4,
                          "audit_epsilon_fdp": 2.3}]).set_index("arm")
    right = figures.frontier(pd.concat([frontier_table(), dose])).axes[2]
    ticks = dict(zip([t.get_text() for t in right.get_xticklabels()], right.get_xticks()))
    assert ticks["∞"] == pytest.approx(10 * ticks["1e+05"])  # a decade apart: the two ticks stay readable
    points = {(line.get_xdata()[0], line.get_ydata()[0]) for line in right.get_lines() if line.get_marker() in "o^"}
    assert {(1e5, 1.4), (1e5, 2.3)} <= points
    assert right.get_ylim()[1] < 10  # the bounds and the claims they could reach (7.9), not the dose arm's claim


def test_the_frontier_shows_each_attack_climbing_with_epsilon_and_the_white_box_audit_with_its_ceiling():
    """Middle: each family's membership gain at its DP arms and its twin (∞), in the order of ε. Right: the
    implementation audit's bound at each claimed DP arm's ε and its ceiling; one legend entry per family and audit,
    not per arm."""
    white_box = {f"{arm} (seed {seed})": {"epsilon_lower": 0.5 * seed + 0.7, "ceiling": 16.0}
                 for arm in ("full-dp1", "full-dp8", "pruned-dp8") for seed in (0, 1)}
    white_box["controls"] = {"full-dp8: half noise (seed 0)": {"epsilon_lower": 12.0, "ceiling": 16.0}}
    _, middle, right = figures.frontier(frontier_table(), implementation=white_box).axes
    climbs = {label: line.get_ydata() for line, label in zip(*middle.get_legend_handles_labels())
              for line in [line.lines[0] if hasattr(line, "lines") else line]}
    assert list(climbs["full: membership ΔAUC vs start"]) == pytest.approx([0.0196, 0.158, 0.4])
    diamonds = sorted((line.get_xdata()[0], line.get_ydata()[0]) for line in right.get_lines()
                      if line.get_marker() == "D")
    assert diamonds == [(0.98, 0.7), (0.98, 1.2), (7.9, 0.7), (7.9, 0.7), (7.9, 1.2), (7.9, 1.2)]  # no control
    assert [line.get_ydata()[0] for line in right.get_lines() if line.get_color() == "0.3"] == [16.0]
    assert right.get_ylim()[1] > 16.0
    labels = right.get_legend_handles_labels()[1]
    assert len(labels) == len(set(labels)) <= 10 and "full: white-box" in labels


# --- profiles and run_all -------------------------------------------------------------------------------
def test_paper_profile_is_the_quick_study_over_the_epsilon_sweep_and_three_seeds():
    quick, paper = profiles.get_profile("quick"), profiles.get_profile("paper")
    assert paper["seeds"] == [0, 1, 2] and paper["epsilons"] == [1, 3, 8]
    checks.check_params(paper)
    # record for record quick's study (its memorisation regime, its positive controls, its sample sizes): what
    # differs is the epsilon sweep, its dose arms, the seeds, pruning's sweep (the studied level only) and the
    # profile's own tuned rates (figures/tuning/paper.json)
    own = {"profile", "epsilons", "dose_epsilons", "seeds", "prune_strategies", "prune_sweep", "dp_learning_rates",
           "nodp_learning_rate"}
    assert {k for k in quick if paper[k] != quick[k]} <= own
    assert set(paper["prune_sweep"]) >= {0, paper["n_remove"]}
    assert set(paper["prune_strategies"]) <= set(quick["prune_strategies"]) and paper["prune_strategy"] in \
        paper["prune_strategies"]
    assert paper["attack_prefix_tokens"] + paper["attack_suffix_tokens"] <= paper["max_length"]
    # a notebook run by hand (the profile alone) writes under runs/; run_all regenerating a committed run, to figures/
    assert artifacts.figures_dir(paper) == REPO / "runs" / "paper" / "figures"
    assert artifacts.figures_dir(quick) == REPO / "runs" / "quick" / "figures"
    assert artifacts.committed_figures_dir("paper") == REPO / "figures" / "paper"
    assert artifacts.committed_figures_dir("quick") == REPO / "figures"
    assert artifacts.committed_figures_dir("smoke") is None
    runs = artifacts.seed_runs(paper)
    assert [p.root for p in runs.values()] == [REPO / "runs" / "paper" / f"seed-{s}" for s in (0, 1, 2)]
    assert artifacts.figures_dir(artifacts.seed_params(paper, 1)) == REPO / "runs" / "paper" / "seed-1" / "figures"
    assert artifacts.seed_runs(quick) == {0: artifacts.run_paths(quick)}  # one seed: today's layout


@pytest.mark.parametrize("value,fragment", [("0,x", "--seeds '0,x'"), ("1,1", "distinct")])
def test_bad_seeds_on_the_command_line_stop_at_once(run_name, value, fragment):
    result = run_all_in_process("--profile", "smoke", "--seeds", value, "--run-name", run_name)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], result.stderr
    assert not (REPO / "runs" / run_name).exists()


@pytest.mark.slow
def test_smoke_profile_with_two_seeds_runs_each_seed_and_pools_them():
    name = "pytest-smoke-seeds"
    try:
        result = run_all("--profile", "smoke", "--seeds", "0,1", "--run-name", name, "--force")
        assert result.returncode == 0, result.stderr[-3000:]
        root = REPO / "runs" / name
        notebooks = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
        for seed in (0, 1):
            seed_run = artifacts.RunPaths(root / f"seed-{seed}")
            assert sorted(p.name for p in seed_run.notebooks.glob("*.ipynb")) == notebooks[:-1]
            assert json.loads(seed_run.results.read_text())["data"]
        train = [(root / f"seed-{s}" / "data" / "train.jsonl").read_text() for s in (0, 1)]
        assert train[0] != train[1], "each seed draws its own data"
        pooled = json.loads((root / "results.json").read_text())["summary"]
        assert pooled["seeds"] == [0, 1] and all(c["seeds"] == 2 for c in pooled["claims"])
        assert all(row["seeds"] == 2 for row in pooled["table"])
        assert sorted(p.name for p in (root / "notebooks").glob("*.ipynb")) == notebooks[-1:]
        results_md = (root / "figures" / "results.md").read_text()
        assert "2 seeds" in results_md and "(2 seeds)" in results_md
        assert (root / "figures" / "frontier.png").exists() and (root / "figures" / "summary.png").exists()
        assert (root / "figures" / "audit_over_training_seed-0.png").exists()  # the first seed's, beside the pooled
        again = run_all("--profile", "smoke", "--seeds", "0,1", "--run-name", name)
        assert again.returncode == 0
        assert (again.stdout + again.stderr).count("inputs unchanged, skipped") == 2 * (len(notebooks) - 1) + 1
    finally:
        shutil.rmtree(REPO / "runs" / name, ignore_errors=True)



def test_each_committed_run_refreshes_only_its_own_block_of_the_readme(tmp_path):
    readme = tmp_path / "README.md"
    quick_start, quick_end = report.readme_markers("quick")
    paper_start, paper_end = report.readme_markers("paper")
    readme.write_text(f"intro\n{quick_start}\nold quick\n{quick_end}\nmiddle\n{paper_start}\nold paper\n{paper_end}\n")
    assert report.update_readme("new paper\n", readme, run_name="paper")
    assert readme.read_text() == (f"intro\n{quick_start}\nold quick\n{quick_end}\nmiddle\n"
                                  f"{paper_start}\nnew paper\n{paper_end}\n")
    assert not report.update_readme("new paper\n", readme, run_name="paper")  # unchanged: nothing written
    assert not report.update_readme("x\n", readme, run_name="full")  # no block for it: left alone
