"""The per-record arrays each stage saves for the verdicts: which file, which keys, and how they are
read back. The one place that writes and parses these files.

Why per record: the verdicts pair arms on the same records (ppt_core.study.verdicts), so a stage keeps every
record's number, not only their mean. One .npz per stage (`RECORD_FILES`), under the run folder:

- records/pruning.npz  f"{strategy}/{blocks removed}" -> per held-out record [summed log-prob, tokens]
                       (notebook 02; `pruning_arrays` makes the keys, `pruning_rows` reads them)
- records/utility.npz  f"{arm}" -> the same rows for every arm, on the same held-out records (notebook 04)
- attacks/records.npz  which records were attacked (`ATTACK_GROUPS`: members/ids, nonmembers/ids,
                       canaries/ids with canaries/repetitions, audit/included), and per arm
                       f"{arm}/{members|nonmembers}/{signal}" membership scores, f"{arm}/members/sampled"
                       Poisson draws, f"{arm}/canaries/exposure_{low|high}", f"{arm}/canaries/secret_gain" and
                       f"{arm}/audit/scores"
                       (notebook 06, attacks.save_records)

Several seeds' arrays pooled (ppt_core.study.pooling) carry the seed of each record beside them: `RUN_LABELS`
for the pruning and utility rows, f"{group}/{RUN_LABELS}" for each group of the attack records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ppt_core.run import artifacts

RECORD_FILES = {"pruning": "records/pruning.npz", "utility": "records/utility.npz", "attacks": "attacks/records.npz"}
ATTACK_GROUPS = {"members": "members/ids", "nonmembers": "nonmembers/ids", "canaries": "canaries/ids",
                 "audit": "audit/included"}  # record groups of attacks/records.npz, and the array that lists each
RUN_LABELS = "runs"  # beside pooled per-record arrays: the seed each record comes from


def records_file(paths: artifacts.RunPaths, stage: str) -> Path:
    """Where a stage saves the per-record arrays the verdicts read (see RECORD_FILES)."""
    if stage not in RECORD_FILES:
        raise ValueError(f"unknown records stage {stage!r}: choose one of {', '.join(RECORD_FILES)}")
    return paths.root / RECORD_FILES[stage]


def save(paths: artifacts.RunPaths, stage: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write one stage's per-record arrays, by key, to its records_file (atomically)."""
    artifacts.write_npz(records_file(paths, stage), **arrays)


def pruning_key(strategy: str, n_removed: int) -> str:
    """The key of one strategy's rows at one level in records/pruning.npz: "pairwise/4"."""
    return f"{strategy}/{n_removed}"


def pruning_arrays(sweep: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """records/pruning.npz's arrays of pruning.sweep's records: each (strategy, blocks removed)'s logprob_rows."""
    return {pruning_key(r["strategy"], r["n_removed"]): r["logprob_rows"] for r in sweep}


def save_pruning(paths: artifacts.RunPaths, sweep: Sequence[Mapping]) -> None:
    """Write records/pruning.npz from pruning.sweep's records (pruning_arrays)."""
    save(paths, "pruning", pruning_arrays(sweep))


def pruning_rows(arrays: Mapping[str, np.ndarray], n_removed: int) -> dict[str, np.ndarray]:
    """{strategy: rows} of records/pruning.npz's arrays (without RUN_LABELS) at `n_removed` blocks removed."""
    return {key.split("/")[0]: rows for key, rows in arrays.items() if key.split("/")[1] == str(n_removed)}


def load_stage(paths: artifacts.RunPaths, stage: str) -> dict[str, np.ndarray]:
    """Every per-record array one stage saved, by key; {} if it saved none."""
    path = records_file(paths, stage)
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as arrays:
        return {key: arrays[key] for key in arrays.files}


def load_records(paths: artifacts.RunPaths) -> dict[str, dict[str, np.ndarray]]:
    """{"pruning", "utility", "attacks"} -> that stage's per-record arrays ({} where not saved)."""
    return {stage: load_stage(paths, stage) for stage in RECORD_FILES}
