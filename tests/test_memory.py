"""PeakMemory on CPU: the highest resident-set reading of the block, memory freed before it ends included.

The process's readings are replaced by a fixed sequence: a real allocation may reuse memory the process
already holds, so its resident set need not grow at all."""

import time
import types

import torch

from ppt_core.machine import memory


def test_peak_memory_keeps_the_highest_reading_of_the_block(monkeypatch):
    readings_mb = [100, 300, 200]  # a spike freed before the block ends
    taken = []

    class Readings:
        def memory_info(self):
            taken.append(1)
            return types.SimpleNamespace(rss=readings_mb[min(len(taken), len(readings_mb)) - 1] * 2**20)

    monkeypatch.setattr(memory.psutil, "Process", Readings)
    with memory.PeakMemory(torch.device("cpu")) as peak:
        deadline = time.monotonic() + 10
        while len(taken) < len(readings_mb) and time.monotonic() < deadline:  # the sampler reads every 50 ms
            time.sleep(0.01)
    assert len(taken) >= len(readings_mb) and peak.peak_mb == 300
