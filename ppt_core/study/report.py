"""What the study reports, in Markdown: the arms' table with its intervals, the paper's claims with
their verdicts (ppt_core.study.verdicts decides them), what the DP guarantee covers, and where and when a run
was produced (the commit stamp), as figures/results.md and the README's block of a committed run.

The numbers are summary's table and verdicts' claims; this module only writes them out.
"""

from __future__ import annotations

import datetime
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from ppt_core.leakage import audit
from ppt_core.machine.timing import SPEED_BATCH_SIZE
from ppt_core.run import arms, artifacts, profiles
from ppt_core.study import summary, verdicts
from ppt_core.uncertainty import power
from ppt_core.uncertainty.stats import format_interval


def _fmt(value, low=np.nan, high=np.nan, digits=3) -> str:
    return format_interval({"value": value, "low": low, "high": high}, digits)


def _canaries(r) -> str:
    """"k of n at R× (p = …)": of the n canaries inserted R times, k gain more than every reference canary, and
    the rank test of their gains against the references' gives p."""
    if np.isnan(r.canaries_highest):
        return "–"
    p = "–" if np.isnan(r.canary_p_value) else f"{r.canary_p_value:.2g}"
    return f"{_fmt(r.canaries_above_null)} of {int(r.canaries_highest)} at {int(r.canary_repetitions)}× (p = {p})"


def _share_cell(table: pd.DataFrame, arm: str, column: str) -> str:
    """A counted share with its exact interval; where the arm's twin reads no hit (summary.with_positive_controls)
    the attack has not shown it can fire: the twin's cell says so, and a DP arm's 0 is not shown as evidence."""
    if column not in table.columns:
        return "–"
    r = table.loc[arm]
    text = _fmt(r[column], r[f"{column}_low"], r[f"{column}_high"], 2)
    if r.get(f"{column}_positive_control") is not False:
        return text
    twin = arms.parse(arm).twin
    if twin:
        return f"no positive control (twin {twin}: {_fmt(table.loc[twin, column], digits=2)})"
    return f"{text} (no positive control)"


def markdown_table(table: pd.DataFrame) -> str:
    """The summary table as Markdown, intervals in brackets (95%: bootstrap over records, exact for shares)."""
    header = ("| arm | blocks | params (M) | ε | held-out perplexity | prefill tok/s (speedup) | membership AUC "
              "| ΔAUC vs start | canaries above null, highest reps (rank test) | audit ε ≥ (one run / f-DP) "
              "| extraction exact-suffix hits | synthetic PII leak | canary secrets extracted (greedy) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for arm, r in table.iterrows():
        auc = _fmt(r.membership_auc, r.membership_auc_low, r.membership_auc_high, 2)
        perplexity = _fmt(r.perplexity, r.perplexity_low, r.perplexity_high)
        if isinstance(r.get("diverged_seeds"), str) and r.diverged_seeds:
            perplexity += f" (diverged, left out: seed {r.diverged_seeds})"
        audit = f"{_fmt(r.audit_epsilon_one_run)} / {_fmt(r.audit_epsilon_fdp)}"
        if isinstance(r.get("audit_epsilon_fdp_seeds"), str):  # over seeds: the smallest, and each seed's
            audit += f" (seeds: {r.audit_epsilon_one_run_seeds} / {r.audit_epsilon_fdp_seeds})"
        lines.append("| " + " | ".join([
            f"`{arm}`", _fmt(r.blocks), _fmt(r.parameters_M), _fmt(r.epsilon),
            perplexity,
            f"{_fmt(r.prefill_tokens_per_s, digits=4)} ({_fmt(r.speedup)}×)",
            f"{auc} ({r.membership_signal})" if r.membership_signal else auc,
            _fmt(r.delta_auc, r.delta_auc_low, r.delta_auc_high, 2),
            _canaries(r),
            audit,
            _share_cell(table, arm, "extraction_hits"),
            _share_cell(table, arm, "synthetic_pii_leak"),
            _share_cell(table, arm, "canary_extraction"),
        ]) + " |")
    return "\n".join(lines)


def commit() -> str:
    """The short git commit of the code that ran, with "+changes" when the code differs from it."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=artifacts.REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        # figures/ and the README's results are this run's own outputs, not changes to the code that made them.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!figures",
                                ":!README.md"], cwd=artifacts.REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


VACUOUS_EPSILON = 10.0  # above this an (ε, δ) bound allows a likelihood ratio of e^10 ≈ 22026: it promises nothing


def guarantee_markdown(params: dict, group_privacy: dict | None) -> str:
    """What the DP arms' guarantee covers and what it does not, from the accountant's numbers (notebook 03's
    group-privacy and composition table, results.json["group_privacy"])."""
    if not group_privacy:
        return ""
    rows, vacuous = [], False
    for row, values in group_privacy.items():
        sizes = sorted((int(k[2:]), v) for k, v in values.items() if k.startswith("k="))
        cells = [_fmt(v) + (" (vacuous)" if v is not None and v > VACUOUS_EPSILON else "") for _, v in sizes]
        vacuous |= any(v is not None and v > VACUOUS_EPSILON for _, v in sizes)
        rows.append(f"| {row} | " + " | ".join(cells) + f" | {values.get('accountant', '')} |")
    header = "| ε at δ = " + f"{params['delta']:g} | " + " | ".join(f"k = {k}" for k, _ in sizes) + " | accountant |"
    secure = ("off: the Poisson draws and the noise follow the public seed, so this is a reproducible study, "
              "not a release" if not params.get("secure_mode") else "on: cryptographic randomness")
    return "\n".join([
        "**What the guarantee covers.** Each DP arm is (ε, δ)-DP for one training record — a note, one canary "
        "copy or one audit canary — with the ε of the table above. For a secret held by k records (a canary "
        "inserted k times, a patient with k notes) the guarantee is certified at most at the group ε below, and "
        "releasing several DP arms trained on the same records composes (the row of the claimed DP arms together; "
        "a dose arm is an instrument, never released). Each value is an upper "
        f"bound from the accountant (notebook 03), not a measured leak. `secure_mode` is {secure}."
        + (f" A bound above ε = {VACUOUS_EPSILON:g} (a likelihood ratio above e^{VACUOUS_EPSILON:g} ≈ "
           f"{np.exp(VACUOUS_EPSILON):.0f}) is vacuous: it certifies nothing for that group, marked below."
           if vacuous else ""),
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
        *rows,
    ])


def implementation_audit_markdown(record: dict | None) -> str:
    """The implementation audit (results.json["implementation_audit"], notebook 03) as Markdown: per DP arm and
    per planted-bug control, the claimed ε, the audit's lower bound, its ratios to the claim and to the ideal
    simulation, the ceiling, the scores' KS p against the simulation, and whether it was flagged."""
    if not record:
        return ""
    rows = []
    for name, r in [*((arm, a) for arm, a in record.items() if arm != "controls"),
                    *((f"control: {row}", c) for row, c in record.get("controls", {}).items())]:
        low, high = r["simulation_range"]
        rows.append("| " + " | ".join([
            name, _fmt(r["claimed_epsilon"]), _fmt(r["epsilon_lower"]), _fmt(r["ratio_to_claim"]),
            f"{_fmt(r['simulation_epsilon_lower'])} ({_fmt(low)}–{_fmt(high)})", _fmt(r["ratio_to_simulation"]),
            f"{r['simulations_below']} of {r['simulation_runs']}", _fmt(r["ceiling"]),
            f"{r['scores_ks_pvalue']:.2g}", "**yes**" if r["flagged"] else "no", f"{r['canaries']:,}"]) + " |")
    header = ("| | claimed ε | audit ε ≥ | ÷ claim | simulation ε ≥ (range) | ÷ simulation | simulations below the "
              "audit | ceiling | scores vs simulation (KS p) | flagged | canaries |")
    return "\n".join([
        *_noise_check_markdown(record),
        "**Implementation audit.** White-box gradient canaries in each DP arm's own optimizer (its clipping, its "
        "noise, its sampler's rate), scored by the claimed mechanism's likelihood ratio; the bound is jax-privacy's "
        "one-run f-DP bound (95%, threshold on a pre-specified split), beside the ideal simulation at the same "
        "(q, σ, T, m): the median of its runs, their range, and how many of them fall below the audit (a correct "
        "implementation is a run like them: inside their range with probability (n − 1)/(n + 1)); and the ceiling "
        "of m canaries. A correct arm is flagged (the study stops) when its bound "
        "exceeds its claim or its scores fail the KS test; each planted bug (claiming ε = 8) must be flagged.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
        *rows,
        *_ratio_by_epsilon(record),
    ])


def _ratio_by_epsilon(record: dict) -> list[str]:
    """The DP arms' implementation audits pooled per claimed ε (over families and seeds) as Markdown lines: the
    bound and its ratios to the claim and to the ideal simulation, mean and range; nothing with one arm per ε."""
    by_epsilon: dict = {}
    for arm, a in record.items():
        if arm != "controls":
            by_epsilon.setdefault(round(a["claimed_epsilon"], 1), []).append(a)
    if all(len(arms) == 1 for arms in by_epsilon.values()):
        return []

    def spread(arms, key):
        values = [a[key] for a in arms if a[key] is not None]
        return f"{_fmt(np.mean(values))} ({_fmt(min(values))}–{_fmt(max(values))})" if values else "–"

    return ["", "Per claimed ε, over the arms above: mean (min–max); the simulations' range spans every arm's.", "",
            "| claimed ε | arms | audit ε ≥ | ÷ claim | simulation ε ≥, range | ÷ simulation | audits inside the "
            "simulations' range | flagged |", "|---|---|---|---|---|---|---|---|",
            *(f"| {epsilon:g} | {len(arms)} | {spread(arms, 'epsilon_lower')} | {spread(arms, 'ratio_to_claim')} | "
              f"{_fmt(min(a['simulation_range'][0] for a in arms))}–"
              f"{_fmt(max(a['simulation_range'][1] for a in arms))} | {spread(arms, 'ratio_to_simulation')} | "
              f"{sum(_inside_simulations(a) for a in arms)} of {len(arms)} | "
              f"{sum(bool(a['flagged']) for a in arms)} |"
              for epsilon, arms in sorted(by_epsilon.items()))]


def _inside_simulations(audited: dict) -> bool:
    """Whether an implementation audit's bound lies within the range of its ideal simulations' bounds."""
    low, high = audited["simulation_range"]
    return low <= audited["epsilon_lower"] <= high


def _noise_check_markdown(record: dict) -> list[str]:
    """The per-matrix noise check of each DP arm and its planted control (a matrix left without noise) as lines of
    Markdown: a paragraph and a table, or nothing when no arm ran it."""
    checked = {arm: a for arm, a in record.items() if arm != "controls" and a.get("noise_per_matrix")}
    if not checked:
        return []
    rows = []
    for arm, a in checked.items():
        ratios, control = a["noise_per_matrix"].values(), a.get("noise_control")
        rows.append("| " + " | ".join([
            arm, str(len(ratios)), f"{_fmt(min(ratios))}–{_fmt(max(ratios))}",
            *((control["matrix"], _fmt(control["ratio"]), "**yes**" if control["flagged"] else "no")
              if control else ("–", "–", "–"))]) + " |")
    tolerance = next((a["noise_control"]["tolerance"] for a in checked.values() if a.get("noise_control")), None)
    return [
        "**Noise per LoRA matrix.** Opacus's noise-level test on a copy of each DP arm's optimizer before it trains: "
        "each matrix's summed squared noised gradient over zero-gradient steps, divided by its expectation k·d·(σC/B)²"
        + (f" (a matrix outside 1 ± {tolerance:.0%} stops the study)" if tolerance is not None else "")
        + "; and its planted control, the same optimizer forgetting the noise of one matrix, which must be flagged.",
        "",
        "| arm | matrices | ratio, min–max | control: matrix without noise | its ratio | flagged |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def results_markdown(params: dict, table: pd.DataFrame, claims: list[verdicts.Verdict],
                     notebook_seconds: dict, group_privacy: dict | None = None, seeds: list[int] | None = None,
                     estimate: str = "", notebook_tokens: dict | None = None,
                     implementation_audit: dict | None = None, machine: dict | None = None,
                     audit_ceiling: dict | None = None) -> str:
    """figures/results.md: the table, the claims with their verdicts, what the guarantee covers, and where
    and when it was produced (over several `seeds`: the table's intervals are over seeds, and say so);
    `estimate`: projected costs (cost.study_estimate), if any; `notebook_tokens` (cost.notebook_tokens) goes
    beside the notebooks' seconds, and `machine` (timings.json's, precision.describe) says where they ran;
    `implementation_audit`: notebook 03's, if any; `audit_ceiling` (audit.ceiling_of): the most the one-run
    audit's canaries can show."""
    seeds = list(seeds or [params["seed"]])
    over = ("Intervals: 95%, bootstrap over records; exact (Clopper–Pearson) for shares." if len(seeds) == 1 else
            f"Over {len(seeds)} seeds ({', '.join(map(str, seeds))}): perplexity is the geometric mean of the seeds' "
            "with a 95% Student-t interval on log perplexity; a seed above "
            f"{summary.DIVERGED_FACTOR:g}× the arm's median perplexity diverged and is left out, named beside it. "
            "Shares (extraction hits, synthetic PII): the seeds' counts pooled, exact interval. Audit ε: the "
            "smallest of the seeds' lower bounds (itself a lower bound for every seed's model; a mean of lower "
            "bounds is not one), each seed's in brackets. Other numbers: the mean of the seeds' with a 95% "
            "Student-t interval over the seeds (wide for few seeds); canaries above the null: the mean of the "
            "seeds'; the rank test's p: one test on every seed's canaries together. The verdicts pool the seeds' "
            "records (a bootstrap over seeds, then records).")
    return "\n".join([
        f"Profile `{params['profile']}` (model `{params['model']}`), commit `{commit()}`, "
        f"produced {datetime.date.today().isoformat()} by `run_all.py`"
        + (f", {len(seeds)} seeds." if len(seeds) > 1 else "."),
        "",
        markdown_table(table),
        "",
        over + " ε = ∞: non-private; "
        "audit ε: empirical lower bounds (one-run audit), never above the claimed ε"
        + (f"; the most its {audit_ceiling['m']} canaries can show is {audit_ceiling['one_run']:.2f} (one run) and "
           f"{audit_ceiling['fdp']:.2f} (f-DP), so a claimed ε above that is not tested by it" if audit_ceiling else "")
        + ". Speed: prefill of a batch "
        f"of {SPEED_BATCH_SIZE} on the machine that produced this run. Membership AUC: the attack calibrated by the "
        "arm's starting model (`reference`), the plain loss attack for the untrained arms. Canaries: of those "
        "inserted most often, how many gain more log-likelihood over the starting model on their secret than "
        "every never-inserted reference canary, and the one-sided Mann–Whitney p of their gains against the "
        "references'. ΔAUC: at "
        f"{params['n_membership']} members and as many non-members, an arm that leaks nothing reads \"no leak above "
        f"{power.MINIMAL_AUC_EFFECT:g}\" (the interval's upper end at most that) "
        f"{power.null_exclusion_power(params['n_membership']):.0%} of the time per seed; "
        f"{power.null_support_sample_size(power.MINIMAL_AUC_EFFECT)} a side would make it 80%, so an interval "
        "reaching past it is what a private arm reads too. Canary secrets extracted: of the inserted canaries (every "
        "repetition count), how many a greedy continuation of the canary's prefix writes out verbatim, secret "
        "included (exact extraction; by chance about never). Extraction, synthetic PII and canary extraction: an "
        "attack that reads no hit on the non-private twin, the arm that memorises, has no positive control, and a "
        "DP arm's 0 on it is no evidence of privacy.",
        "",
        verdicts.claims_markdown(claims),
        "",
        guarantee_markdown(params, group_privacy),
        "",
        *([implementation_audit_markdown(implementation_audit), ""] if implementation_audit else []),
        wall_time_markdown(notebook_seconds, notebook_tokens, len(seeds), machine) if notebook_seconds else "",
        *([""] + [estimate] if estimate else []),
    ]) + "\n"


def machine_sentence(machine: dict) -> str:
    """Where a run's seconds were measured: the machine's kind, its matmul peaks, and the precision bf16: auto
    settled to there, with why (precision.describe's record in timings.json)."""
    peaks = machine.get("peak_gflops")
    measured = (f" (matmul peaks {peaks['float32']:,.0f} GFLOP/s in float32, {peaks['bf16']:,.0f} in bf16)"
                if peaks else "")
    return (f"Measured on an {machine['kind']}{measured}, {machine['threads']} threads, computing in "
            f"{machine['precision']}: {machine['precision_reason']}.")


def wall_time_markdown(notebook_seconds: dict, notebook_tokens: dict | None = None, n_seeds: int = 1,
                       machine: dict | None = None) -> str:
    """Each notebook's measured seconds (summed over `n_seeds` seeds) beside the tokens one seed of it pushes
    through the model (cost.notebook_tokens): where the run's time goes, and what a token costs in each stage.
    The notebook writing the table is left out: its own time is not measured yet (timings.json may hold an
    earlier run's), and run_all records it once it ends."""
    tokens = {name: n * n_seeds for name, n in (notebook_tokens or {}).items()
              if not name.startswith("00")}  # notebook 00 writes records; no model runs
    measured = {name: seconds for name, seconds in notebook_seconds.items() if name != artifacts.SUMMARY_NOTEBOOK}
    total = sum(measured.values())
    lines = [f"Notebook wall time{' summed over the seeds' if n_seeds > 1 else ''} (total {total / 60:.1f} min, "
             f"without {artifacts.SUMMARY_NOTEBOOK}, which writes this table) and the tokens each pushes through the "
             "model."
             + (f" {machine_sentence(machine)}" if machine else ""),
             "", "| notebook | tokens | seconds | ms per 1k tokens |", "|---|---|---|---|"]
    for name, seconds in sorted(measured.items()):
        n = tokens.get(name)
        per = f"{1e6 * seconds / n:,.0f}" if n else "–"
        lines.append(f"| {name} | {f'{n:,.0f}' if n else '–'} | {seconds:.0f} | {per} |")
    return "\n".join(lines)


def study_markdown(params: dict, study, claims: list[verdicts.Verdict], estimate: str = "",
                   notebook_tokens: dict | None = None) -> str:
    """results_markdown of a study (summary.load_study's Study): its table, the claims, its group-privacy
    table, seeds, notebook wall times and the machine that measured them; `estimate` and `notebook_tokens` as in
    results_markdown."""
    machine = artifacts.read_timings(artifacts.run_paths(params)).get("machine")
    return results_markdown(params, study.table, claims, study.notebook_seconds, study.results.get("group_privacy"),
                            study.seeds, estimate, notebook_tokens, study.results.get("implementation_audit"),
                            machine, audit.ceiling_of(study.results.get("attacks")))


def readme_markers(run_name: str = "quick") -> tuple[str, str]:
    """The README's markers around a committed run's results: `results` for the default profile's run,
    `results-<run>` for another committed run (the paper profile's)."""
    name = "results" if run_name == profiles.DEFAULT_PROFILE else f"results-{run_name}"
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def update_readme(results_md: str, readme: Path | None = None, run_name: str = profiles.DEFAULT_PROFILE) -> bool:
    """Replace the README's results section of `run_name` (between its markers) with results.md; True if it
    changed."""
    readme = readme or artifacts.REPO_ROOT / "README.md"
    start, end = readme_markers(run_name)
    text = readme.read_text()
    if start not in text or end not in text:
        return False
    new = re.sub(f"{re.escape(start)}.*?{re.escape(end)}", lambda _: f"{start}\n{results_md}{end}", text, flags=re.S)
    if new != text:
        artifacts.write_text(readme, new)
    return new != text


def render_notebooks(executed: list[Path], folder: Path) -> list[Path]:
    """Each executed notebook as a standalone HTML page in `folder` (<name>.html, its figures inline), to read
    without running anything; pages of notebooks no longer rendered are removed. Returns the pages written."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    pages = []
    for notebook in executed:
        body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
        pages.append(folder / f"{notebook.stem}.html")
        artifacts.write_text(pages[-1], body)
    for stale in set(folder.glob("*.html")) - set(pages):
        stale.unlink()
    return pages
