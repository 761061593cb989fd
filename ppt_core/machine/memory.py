"""Peak memory of a block of work, in MB: what a training step costs besides time.

On CUDA it is the allocator's peak (tensors only); on CPU the process's resident set, sampled every
50 ms by a background thread (so a spike shorter than that can be missed).
"""

from __future__ import annotations

import threading

import psutil
import torch


class PeakMemory:
    """Context manager: `.peak_mb` after the block is its peak memory in MB (CUDA allocations, or CPU resident set)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, process.memory_info().rss / 2**20)
            self._stop.wait(0.05)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, psutil.Process().memory_info().rss / 2**20)
