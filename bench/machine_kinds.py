#!/usr/bin/env python
"""Benchmark: this machine's kind, its float32 and bf16 matmul peaks, the precision `bf16: auto` picks here and
why, and what each notebook of a measured run costs per token; with --record, that run's notebook seconds enter
ppt_core/machine/machine_kinds.json under this machine's kind and the run's precision, for the cost model
(ppt_core/stages/cost.py) to project every profile onto every kind measured so far.

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

from ppt_core.machine import precision  # noqa: E402
from ppt_core.run import artifacts, profiles  # noqa: E402
from ppt_core.stages import cost  # noqa: E402


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
        tokens = cost.notebook_tokens(profiles.get_profile(entry["profile"]))
        print(f"recorded {args.record} ({machine['precision']}) under {machine['kind']!r}: each notebook's seconds and "
              "milliseconds per 1,000 tokens it pushes through the model (cost.notebook_tokens)")
        for notebook, seconds in timings["notebooks"].items():
            per = (f", {1e6 * seconds / tokens[notebook]:,.0f} ms per 1k tokens"
                   if tokens.get(notebook) and not notebook.startswith("00") else "")  # 00 writes records only
            print(f"  {notebook}: {seconds:.0f} s{per}")
    print("\nkinds measured so far (ppt_core/machine/machine_kinds.json):")
    for kind in cost.machine_kinds().values():
        measured = ", ".join(f"{p}: {sum(s.values()) / 60:.1f} min over {len(s)} notebooks"
                             for p, s in kind.notebook_seconds.items())
        print(f"  {kind.name}: peaks {kind.peak_gflops}, auto picks {kind.precision}; {measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
