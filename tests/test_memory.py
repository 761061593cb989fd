"""PeakMemory on CPU: the resident set's peak inside the block, including memory freed before it ends."""

import time

import torch

from ppt_core.memory import PeakMemory


def test_peak_memory_sees_an_allocation_freed_inside_the_block():
    with PeakMemory(torch.device("cpu")) as idle:
        time.sleep(0.12)
    with PeakMemory(torch.device("cpu")) as busy:
        block = torch.ones(64 * 2**20 // 4 * 4)  # 256 MB, touched
        time.sleep(0.12)  # longer than the sampling interval
        del block
    assert busy.peak_mb - idle.peak_mb > 128
