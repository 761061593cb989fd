"""results.md: the table's intervals and canary counts as Markdown, the claims, and what the guarantee covers."""

import numpy as np
import pandas as pd
import pytest

from ppt_core.run import artifacts, profiles
from ppt_core.stages import cost
from ppt_core.study import report, verdicts


def one_row_table():
    return pd.DataFrame([{
        "arm": "pruned-dp8", "blocks": 4, "parameters_M": 1.5, "epsilon": 7.9, "perplexity": 31.2,
        "perplexity_low": 29.0, "perplexity_high": 33.5, "prefill_tokens_per_s": 1234.5, "speedup": 1.25,
        "membership_signal": "reference", "membership_auc": 0.51, "membership_auc_low": 0.44,
        "membership_auc_high": 0.58, "delta_auc": 0.01, "delta_auc_low": -0.06, "delta_auc_high": 0.08,
        "exposure_highest_low": 3.0, "exposure_highest_high": 9.5, "canary_repetitions": 16,
        "canaries_highest": 4, "canaries_above_null": 1, "canary_p_value": 0.0312, "audit_epsilon_one_run": 0.0,
        "audit_epsilon_fdp": np.nan, "extraction_hits": 0.0, "extraction_hits_low": 0.0,
        "extraction_hits_high": 0.21, "synthetic_pii_leak": np.nan, "synthetic_pii_leak_low": np.nan,
        "synthetic_pii_leak_high": np.nan}]).set_index("arm")


def test_markdown_table_writes_intervals_exposures_and_nothing_for_the_unmeasured():
    row = report.markdown_table(one_row_table()).splitlines()[2]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "`pruned-dp8`" and cells[4] == "31.2 [29, 33.5]"
    assert cells[5] == "1234 (1.25×)"
    assert cells[6] == "0.51 [0.44, 0.58] (reference)"
    assert cells[8] == "1 of 4 at 16× (p = 0.031)"  # above every reference canary's gain; the rank test's p
    unmeasured = report.markdown_table(one_row_table().assign(canary_p_value=np.nan)).splitlines()[2]
    assert "1 of 4 at 16× (p = –)" in unmeasured
    assert cells[9] == "0 / –" and cells[11] == "–"


def test_results_markdown_holds_the_table_the_claims_and_the_guarantee():
    params = profiles.get_profile("smoke")
    claim = verdicts.Verdict(verdicts.SUPPORTED, "ratio 0.9 [0.8, 0.95]", key="speedup", claim="Pruning is fast",
                             criterion="above 1")
    group = {"pruned-dp8": {"k=1": 7.9, "k=4": 40.0, "accountant": "prv"}}
    text = report.results_markdown(params, one_row_table(), [claim], {"02_pruning": 60.0}, group, estimate="A guess.",
                                   notebook_tokens=cost.notebook_tokens(params))
    assert "| Pruning is fast | above 1 | ratio 0.9 [0.8, 0.95] | supported (1 seed) |" in text
    assert "| pruned-dp8 | 7.9 | 40 (vacuous) | prv |" in text and "k = 4" in text  # an upper bound above 10
    assert "certified at most at the group ε" in text and "is vacuous: it certifies nothing" in text
    assert "prefill of a batch of 8" in text and text.endswith("A guess.\n")
    assert "(total 1.0 min, without 07_summary, which writes this table)" in text
    tokens = cost.notebook_tokens(params)["02_pruning"]
    assert f"| 02_pruning | {tokens:,.0f} | 60 | {60e6 / tokens:,.0f} |" in text  # seconds beside the model's tokens


def test_the_wall_time_table_leaves_out_the_notebook_that_writes_it():
    """timings.json can hold the summary notebook's time from an earlier run: the table must not show it as this
    run's, nor count it in the total."""
    seconds = {"01_layer_similarity": 60.0, "03_dp_lora_finetuning": 120.0, "07_summary": 999.0}
    table = report.wall_time_markdown(seconds, {"03_dp_lora_finetuning": 1000})
    assert "total 3.0 min" in table and "07_summary |" not in table and "999" not in table
    assert "| 03_dp_lora_finetuning | 1,000 | 120 | 120,000 |" in table


def test_the_wall_time_says_which_machine_and_precision_measured_it():
    machine = {"kind": "x86-64 CPU with AVX-512, no bf16", "threads": 2, "precision": "float32",
               "precision_reason": "this CPU has no native bf16", "peak_gflops": {"float32": 225.0, "bf16": 60.0}}
    table = report.wall_time_markdown({"01_layer_similarity": 60.0}, machine=machine)
    assert ("Measured on an x86-64 CPU with AVX-512, no bf16 (matmul peaks 225 GFLOP/s in float32, 60 in bf16), "
            "2 threads, computing in float32: this CPU has no native bf16.") in table


def markdown_tables(text: str) -> list[list[str]]:
    """Every table of a Markdown text: its rows, header first."""
    tables, rows = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def test_every_readme_table_row_has_its_headers_cells():
    """A separator or row with more cells than its header stops the table from rendering."""
    readme = (artifacts.REPO_ROOT / "README.md").read_text()
    broken = [rows[0] for rows in markdown_tables(readme) if len({row.count("|") for row in rows}) > 1]
    assert broken == [], f"README tables whose rows differ from their header in cell count: {broken}"
    assert markdown_tables("| a | b |\n|---|---|---|\n") != [] and len({r.count("|") for r in markdown_tables(
        "| a | b |\n|---|---|---|\n")[0]}) > 1  # the check itself sees a broken separator


@pytest.mark.parametrize("run_name", sorted(artifacts.COMMITTED_FIGURES))
def test_the_readme_results_blocks_are_the_committed_results_md(run_name):
    """A README results block is only ever written by report.update_readme from its run's results.md."""
    results_md = artifacts.REPO_ROOT / artifacts.COMMITTED_FIGURES[run_name] / "results.md"
    start, end = report.readme_markers(run_name)
    readme = (artifacts.REPO_ROOT / "README.md").read_text()
    assert readme.split(start, 1)[1].split(end, 1)[0] == "\n" + results_md.read_text()


def test_executed_notebooks_render_to_html_pages_that_hold_their_outputs(smoke_run, tmp_path):
    executed = sorted(smoke_run.paths.notebooks.glob("[0-9][0-9]_*.ipynb"))
    (tmp_path / "99_gone.html").write_text("a page of a notebook that no longer exists")
    pages = report.render_notebooks(executed, tmp_path)
    assert [page.name for page in pages] == [f"{notebook.stem}.html" for notebook in executed]
    assert sorted(tmp_path.iterdir()) == pages  # the stale page is gone
    html = (tmp_path / "03_dp_lora_finetuning.html").read_text()
    assert "Healing privately" in html and "noise_multiplier" in html  # the prose and the executed table
    assert "data:image/png;base64" in (tmp_path / "07_summary.html").read_text()  # figures inline
