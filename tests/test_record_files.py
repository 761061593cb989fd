"""The per-record files: what a stage writes is what the verdicts read back, key for key and bit for bit."""

import numpy as np
import pytest

from ppt_core.run import artifacts, record_files


def test_pruning_rows_round_trip_through_their_file(tmp_path):
    paths = artifacts.RunPaths(tmp_path)
    rng = np.random.default_rng(0)
    sweep = [{"strategy": strategy, "n_removed": n, "logprob_rows": rng.normal(size=(5, 2)), "perplexity": 1.0}
             for strategy in ("pairwise", "last") for n in (0, 4, 12)]
    record_files.save_pruning(paths, sweep)
    assert (tmp_path / "records" / "pruning.npz").exists()
    saved = record_files.load_records(paths)["pruning"]
    assert list(saved) == ["pairwise/0", "pairwise/4", "pairwise/12", "last/0", "last/4", "last/12"]
    at_4 = record_files.pruning_rows(saved, 4)
    assert list(at_4) == ["pairwise", "last"]  # that level only, in the order the sweep saved it
    np.testing.assert_array_equal(at_4["last"], sweep[4]["logprob_rows"])
    assert record_files.pruning_rows(record_files.pruning_arrays(sweep), 4).keys() == at_4.keys()


def test_a_stage_that_saved_nothing_reads_as_empty_and_an_unknown_stage_is_refused(tmp_path):
    paths = artifacts.RunPaths(tmp_path)
    record_files.save(paths, "utility", {"base": np.ones((3, 2))})
    records = record_files.load_records(paths)
    assert records["pruning"] == {} and records["attacks"] == {} and records["utility"]["base"].shape == (3, 2)
    with pytest.raises(ValueError, match="unknown records stage 'synthetic'"):
        record_files.records_file(paths, "synthetic")
