"""The projected cost of a profile: measured seconds scaled by the tokens each notebook reads, and by seeds."""

import pytest

from ppt_core.run import profiles
from ppt_core.stages import cost


def test_projection_scales_measured_seconds_by_tokens_and_seeds():
    quick = profiles.get_profile("quick")
    measured = {"03_dp_lora_finetuning": 600.0, "04_utility_and_inference": 60.0}
    assert cost.projected_seconds(quick, measured, quick) == pytest.approx(measured)
    twice = profiles.get_profile("quick", epochs=2 * quick["epochs"], n_eval=2 * quick["n_eval"])
    projected = cost.projected_seconds(quick, measured, twice)
    assert projected["04_utility_and_inference"] == pytest.approx(120.0)
    assert 1000 < projected["03_dp_lora_finetuning"] < 1200  # twice the steps; the loss curve stays
    paper = profiles.get_profile("paper")
    line = cost.estimate_markdown(quick, measured, 1, 135e6, [paper, profiles.get_profile("smoke")])
    assert "`paper` profile (3 seeds, 12 arms each)" in line and "smoke" not in line and "assumed" in line
    with pytest.raises(ValueError, match="same model"):
        cost.projected_seconds(quick, measured, profiles.get_profile("smoke"))


def _kind(name, float32, bf16, precision, seconds=None):
    return cost.MachineKind(name, {"float32": float32, "bf16": bf16}, precision, "quick", seconds or {}, {})


# one seed of the quick profile, every notebook (07, which writes the table, is left out of every projection)
QUICK_SECONDS = {"00_data": 20.0, "01_layer_similarity": 10.0, "02_pruning": 30.0, "03_dp_lora_finetuning": 400.0,
                 "04_utility_and_inference": 40.0, "05_synthetic_data": 30.0, "06_extraction_attack": 100.0,
                 "07_summary": 9.0}
TOTAL = 630.0  # seconds of QUICK_SECONDS without 07
AMX_FLOAT32 = {"kind": "amx", "precision": "float32", "auto_precision": "float32",
               "peak_gflops": {"float32": 400.0, "bf16": 2400.0}}


def test_a_kind_in_the_runs_precision_is_projected_from_the_run_calibrated_on_what_both_measured():
    quick = profiles.get_profile("quick")
    ice_lake = _kind("ice", 225, 60, "float32", {"float32": {"01_layer_similarity": 15.0, "02_pruning": 45.0}})
    projected = cost.project_onto_kind(quick, ice_lake, {"ice": ice_lake}, QUICK_SECONDS, AMX_FLOAT32)
    # 01 and 02 took 1.5 times as long there: every notebook is taken to
    assert projected.minutes == pytest.approx(TOTAL * 1.5 / 60) and projected.how == "calibrated on 01, 02"
    assert projected.precision == "float32" and projected.peak_gflops == 225
    unmeasured = _kind("ice", 225, 60, "float32")
    by_peak = cost.project_onto_kind(quick, unmeasured, {"ice": unmeasured}, QUICK_SECONDS, AMX_FLOAT32)
    assert by_peak.minutes == pytest.approx(TOTAL * 400 / 225 / 60) and by_peak.how == "by peak"


def test_a_kind_in_another_precision_is_projected_from_a_complete_measurement_in_it():
    quick = profiles.get_profile("quick")
    amx = _kind("amx", 400, 2400, "bf16", {"bf16": dict(QUICK_SECONDS, **{"03_dp_lora_finetuning": 100.0})})
    epyc = _kind("epyc", 190, 800, "bf16", {"bf16": {"02_pruning": 60.0}})
    # the run is float32, both kinds pick bf16: the kinds file's complete bf16 measurement is the reference
    own = cost.project_onto_kind(quick, amx, {"amx": amx, "epyc": epyc}, QUICK_SECONDS, AMX_FLOAT32)
    assert own.minutes == pytest.approx(330 / 60) and own.how == "measured"
    other = cost.project_onto_kind(quick, epyc, {"amx": amx, "epyc": epyc}, QUICK_SECONDS, AMX_FLOAT32)
    assert other.minutes == pytest.approx(330 * 2 / 60) and other.how == "calibrated on 02"
    # a partial measurement (a few notebooks) is no reference: nothing to project from
    assert cost.project_onto_kind(quick, epyc, {"epyc": epyc}, QUICK_SECONDS, AMX_FLOAT32) is None
    partial_run = {nb: s for nb, s in QUICK_SECONDS.items() if nb != "06_extraction_attack"}
    ice = _kind("ice", 225, 60, "float32")
    assert cost.project_onto_kind(quick, ice, {"ice": ice}, partial_run, AMX_FLOAT32) is None


def test_the_kinds_table_has_this_runs_machine_measured_and_every_row_its_headers_cells():
    quick = profiles.get_profile("quick")
    text = cost.kinds_markdown(quick, QUICK_SECONDS, AMX_FLOAT32, kinds={})
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) == 3 and "| amx | float32 | 400 | 10.5 | measured |" in rows
    assert {row.count("|") for row in rows} == {6}
    assert cost.kinds_markdown(quick, QUICK_SECONDS, None, kinds={}) == ""


def test_the_kinds_file_holds_what_the_cost_model_reads():
    kinds = cost.machine_kinds()
    assert kinds, "ppt_core/machine/machine_kinds.json is missing or empty"
    for kind in kinds.values():
        assert kind.precision in ("bf16", "float32") and set(kind.peak_gflops) == {"float32", "bf16"}
        assert set(kind.notebook_seconds) <= {"bf16", "float32"} and set(kind.source) == set(kind.notebook_seconds)
        assert kind.profile in profiles.PROFILES
