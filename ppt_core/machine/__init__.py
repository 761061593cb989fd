"""The machine a run computes on: the precision it picks (bf16 only where native and faster), peak memory of a
block of work, wall-clock inference speed, and the measured machine kinds of the cost model
(`machine_kinds.json`, written by bench/machine_kinds.py).

Public API, by module: `precision` (the machine's kind and precision), `memory` (`PeakMemory`), `timing`
(inference speed)."""
