#!/usr/bin/env python
"""Benchmark: this machine's kind, its float32 and bf16 matmul peaks, the precision `bf16: auto` picks here and
why, and what each notebook of a measured run reaches; with --record, that run's notebook seconds enter
ppt_core/machine_kinds.json under this machine's kind and the run's precision, for the cost model
(ppt_core/cost.py) to project every profile onto every kind measured so far.

Measure alone: two torch processes on two cores slow each other down.

  python bench/machine_kinds.py                                   # this machine; the kinds known so far
  python bench/machine_kinds.py --record runs/quick --command "make study (fresh clone, empty model cache)"
  python bench/machine_kinds.py --record runs/quick-float32 --command "python run_all.py --set bf16=false ..."
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ppt_core import artifacts, cost, precision, profiles  # noqa: E402

TRAINING_NOTEBOOK = "03_dp_lora_finetuning"


def notebook_shares(params: dict, seconds: dict, peak_gflops: float, parameters: float) -> dict[str, float]:
    """Each notebook's share of the peak: its FLOPs (cost.notebook_tokens times 2 per weight forward, 6 in
    training: the cost model's count, an upper end for 03) per second, over the peak."""
    tokens = cost.notebook_tokens(params)
    shares = {}
    for notebook, spent in seconds.items():
        per_token = cost.TRAINING_FLOPS_PER_PARAM if notebook == TRAINING_NOTEBOOK else cost.FORWARD_FLOPS_PER_PARAM
        if tokens.get(notebook) and spent > 0 and not notebook.startswith("00"):
            shares[notebook] = tokens[notebook] * per_token * parameters / spent / (peak_gflops * 1e9)
    return shares


def record(run: Path, command: str, profile: str, path: Path = cost.KINDS_FILE) -> dict:
    """Enter the run's notebook seconds (timings.json, measured with its machine record) into the kinds file."""
    timings = artifacts.read_json(run / "timings.json")
    machine, seconds = timings["machine"], timings["notebooks"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    kinds = json.loads(path.read_text()) if path.exists() else {}
    entry = kinds.setdefault(machine["kind"], {"peak_gflops": machine["peak_gflops"], "precision": "",
                                               "profile": profile, "notebook_seconds": {}, "source": {}})
    if entry["profile"] != profile:
        raise SystemExit(f"the kinds file holds {entry['profile']!r} runs for {machine['kind']!r}; this run is "
                         f"{profile!r}: record a {entry['profile']!r} run")
    entry["peak_gflops"] = machine["peak_gflops"]
    entry["precision"] = machine["auto_precision"]
    entry["notebook_seconds"][machine["precision"]] = seconds
    entry["source"][machine["precision"]] = f"{command} at {commit}, {datetime.date.today().isoformat()}"
    artifacts.write_text(path, json.dumps(kinds, indent=2, sort_keys=True) + "\n")
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", type=Path, help="a measured run folder (runs/<run>) to enter into the kinds file")
    parser.add_argument("--command", default="python run_all.py", help="how that run was made, for the record")
    parser.add_argument("--profile", default=profiles.DEFAULT_PROFILE, help="the profile that run ran")
    args = parser.parse_args(argv)
    chosen = precision.choose("cpu")
    peaks = precision.measured_peaks()
    print(f"machine kind: {chosen.machine} ({precision.cpu_name()})")
    print(f"matmul peaks ({precision.PEAK_SIZE}²): float32 {peaks.float32:,.0f} GFLOP/s, "
          f"bf16 {peaks.bf16:,.0f} GFLOP/s")
    print(f"bf16: auto -> {chosen}")
    if args.record:
        entry = record(args.record, args.command, args.profile)
        timings = artifacts.read_json(args.record / "timings.json")
        machine = timings["machine"]
        params = profiles.get_profile(entry["profile"])
        table = artifacts.read_json(args.record / "results.json")["summary"]["table"]
        parameters = next(row["parameters_M"] for row in table if row["arm"] == "base") * 1e6
        shares = notebook_shares(params, timings["notebooks"], machine["peak_gflops"][machine["precision"]],
                                 parameters)
        print(f"recorded {args.record} ({machine['precision']}) under {machine['kind']!r}; each notebook's share "
              f"of the {machine['precision']} peak (the cost model's FLOPs per second):")
        for notebook, share in shares.items():
            print(f"  {notebook}: {timings['notebooks'][notebook]:.0f} s, {100 * share:.1f}%")
    print("\nkinds measured so far (ppt_core/machine_kinds.json):")
    for kind in cost.machine_kinds().values():
        measured = ", ".join(f"{p}: {sum(s.values()) / 60:.1f} min over {len(s)} notebooks"
                             for p, s in kind.notebook_seconds.items())
        print(f"  {kind.name}: peaks {kind.peak_gflops}, auto picks {kind.precision}; {measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
