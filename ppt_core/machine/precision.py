"""The precision a run computes in: bf16 only where this machine multiplies bf16 natively and faster.

Why this module exists: a library's "supported" flag answers "can it run", not "is it fast". oneDNN
reports bf16 as supported on every AVX-512 CPU and converts to and from float32 in software where the
CPU has no bf16 instructions; on such a CPU (Intel Xeons from Skylake to Ice Lake, Ice Lake and Tiger
Lake laptops) a bf16 product runs at about a quarter of float32's rate, and a study chosen to run in
bf16 there takes three times as long as in float32.

What it promises: `choose(device)` settles a profile's `bf16: "auto"` on the facts of the machine,
the same way in every process of a run, and says why in one line (`Precision.reason`):

- CUDA: bf16 where the GPU computes it natively (compute capability 8.0 and up), else float32.
- An x86 CPU without `avx512_bf16` or `amx_bf16` among its own flags: float32, without a measurement
  (bf16 can only be emulated there).
- Any other CPU (native bf16 flags, another architecture, or an instruction set held back by
  ONEDNN_MAX_CPU_ISA and the like): one product of the study's size timed in both dtypes, bf16 only
  where it runs at least MIN_BF16_SPEEDUP times faster. The measurement is made once per machine and
  kept in the model cache (`artifacts.cache_dir()`), keyed by what decides it (the CPU, its flags, torch's
  version, the variables that cap its kernels, the thread count), so every later process and run agrees.

`measured_peaks` is the machine's side of the cost model (ppt_core.stages.cost): the GFLOP/s of a square
matmul in each dtype, measured once per run while nothing else of the run is computing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ppt_core.run import artifacts

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # x86 flags whose instructions multiply bf16 (AMX tiles, VDPBF16PS)
MIN_BF16_SPEEDUP = 1.3  # bf16 must beat float32 by this much: it also rounds every product to 8 bits of mantissa,
#                         so a tie is not worth it; native bf16 is several times faster, emulated several slower
SPEEDUP_SHAPE = (512, 576, 1536)  # (rows, in, out) of the timed product: a study training step's MLP projection
PEAK_SIZE = 2048  # the side of the square matmul whose rate is a machine's peak in the cost model
# Variables that cap torch's, oneDNN's and MKL's kernels: a cached decision holds only under the same values.
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                    "MKL_CBWR", "OMP_NUM_THREADS")


@dataclass(frozen=True)
class Precision:
    """What `bf16: "auto"` settles to on one device, and why (one line for the run's log and results.md)."""

    bf16: bool
    reason: str
    machine: str  # the kind of machine, in words: "x86-64 CPU with AMX", "x86-64 CPU with AVX-512, no bf16", ...
    speedup: float | None = None  # float32 time / bf16 time of the timed product; None where nothing was timed

    @property
    def dtype(self) -> str:
        return "bf16" if self.bf16 else "float32"

    def __str__(self) -> str:
        return f"{self.dtype}: {self.reason}"


# --- what the machine is --------------------------------------------------------------------------


def _cpuinfo(*keys: str) -> str | None:
    """The first /proc/cpuinfo value under one of `keys` (Linux), else None."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in keys:
                return value.strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's own feature flags (Linux: /proc/cpuinfo; elsewhere the few torch's cpuinfo reports)."""
    flags = _cpuinfo("flags", "Features")  # x86, ARM
    if flags is not None:
        return frozenset(flags.split())
    found = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported",
             "avx512f": "_is_avx512_supported", "avx2": "_is_avx2_supported"}
    return frozenset(flag for flag, check in found.items() if getattr(torch.cpu, check, lambda: False)())


def cpu_name() -> str:
    """The CPU's model name as the system reports it ("" where it does not)."""
    return _cpuinfo("model name") or platform.processor()


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def machine_kind(device: torch.device | str = "cpu") -> str:
    """The kind of machine in words, by what decides its speed: the GPU's name, or the CPU's widest vector and
    matrix units ("x86-64 CPU with AMX", "x86-64 CPU with AVX-512 BF16", "x86-64 CPU with AVX-512, no bf16")."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"CUDA GPU {torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    if device.type != "cpu":
        return device.type
    if not is_x86():
        return f"{platform.machine()} CPU"
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "x86-64 CPU with AMX"
    if "avx512_bf16" in flags:
        return "x86-64 CPU with AVX-512 BF16"
    if "avx512f" in flags:
        return "x86-64 CPU with AVX-512, no bf16"
    return "x86-64 CPU with AVX2" if "avx2" in flags else "x86-64 CPU"


# --- the choice -------------------------------------------------------------------------------------


def choose(device: torch.device | str = "cpu") -> Precision:
    """bf16 or float32 for `device`, and why (see the module's docstring); decided once per process and device."""
    device = torch.device(device)
    return _choose(device.type, device.index if device.type == "cuda" else None)


@functools.cache
def _choose(device_type: str, index: int | None) -> Precision:
    if device_type == "cuda":
        device = torch.device("cuda", index or 0)
        kind = machine_kind(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision(True, "this GPU computes bf16 natively", kind)
        return Precision(False, "this GPU has no native bf16 (compute capability below 8.0)", kind)
    kind = machine_kind("cpu")
    if device_type != "cpu":
        return Precision(False, f"bf16 autocast is not used on {device_type}", kind)
    native = sorted(set(NATIVE_BF16_FLAGS) & cpu_flags())
    if is_x86() and not native:
        return Precision(False, "this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16 among its flags): "
                                "bf16 would be converted in software, slower than float32", kind)
    speedup = cached_speedup()
    rows, inner, out = SPEEDUP_SHAPE
    measured = f"a [{rows}, {inner}] x [{inner}, {out}] product runs {speedup:.1f}x as fast in bf16 as in float32"
    having = f"this CPU has {' and '.join(native)}" if native else "this CPU's bf16 was measured"
    if speedup >= MIN_BF16_SPEEDUP:
        return Precision(True, f"{having}; {measured} (measured)", kind, speedup)
    return Precision(False, f"{having}, but {measured} (measured; bf16 needs {MIN_BF16_SPEEDUP}x)", kind, speedup)


def resolve_bf16(setting, device: torch.device | str) -> bool:
    """A profile's bf16 setting ("auto", True or False) for `device`: "auto" means choose(device).bf16."""
    if setting == "auto":
        return choose(device).bf16
    if not isinstance(setting, bool):
        raise ValueError(f"a bf16 setting must be 'auto', True or False (got {setting!r})")
    return setting


# --- measurements -----------------------------------------------------------------------------------


def product_seconds(shape: tuple[int, int, int], dtype: torch.dtype, *, repeats: int = 5) -> float:
    """Median wall seconds of one [rows, in] x [in, out] product in `dtype` on the CPU (after one warm-up)."""
    rows, inner, out = shape
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=generator).to(dtype)
    b = torch.randn(inner, out, generator=generator).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def measured_speedup() -> float:
    """float32 seconds / bf16 seconds of the SPEEDUP_SHAPE product on this CPU (above 1: bf16 is faster)."""
    return product_seconds(SPEEDUP_SHAPE, torch.float32) / product_seconds(SPEEDUP_SHAPE, torch.bfloat16)


def machine_key(*, threads: bool = True) -> str:
    """What a cached measurement holds for: the CPU, its flags, torch's version, the kernel caps, and with
    `threads` the thread count (a timing depends on it; a trained arm's numbers hardly do)."""
    caps = [name for name in KERNEL_VARIABLES if threads or name != "OMP_NUM_THREADS"]
    facts = [cpu_name(), platform.machine(), " ".join(sorted(cpu_flags())), torch.__version__,
             str(torch.get_num_threads()) if threads else "", *(f"{name}={os.environ.get(name, '')}" for name in caps)]
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


def cache_path() -> Path:
    return artifacts.cache_dir() / "precision" / f"{machine_key()}.json"


def cached_speedup() -> float:
    """measured_speedup, measured on this machine's first run and read from the cache after it."""
    path = cache_path()
    if path.exists():
        try:
            return float(json.loads(path.read_text())["speedup"])
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache entry: measure again and replace it
    speedup = measured_speedup()
    try:
        artifacts.write_json(path, {"speedup": speedup, "cpu": cpu_name(), "torch": torch.__version__,
                                    "shape": list(SPEEDUP_SHAPE)})
    except OSError:  # a read-only cache: this process keeps its answer (choose's), the next one measures again
        pass
    return speedup


@dataclass(frozen=True)
class Peaks:
    """A machine's matmul rates (GFLOP/s of a PEAK_SIZE² product), the denominators of the cost model."""

    float32: float
    bf16: float

    def of(self, bf16: bool) -> float:
        return self.bf16 if bf16 else self.float32


def measured_peaks(size: int = PEAK_SIZE, repeats: int = 3) -> Peaks:
    """This CPU's float32 and bf16 GFLOP/s on a size x size x size product (2 size³ FLOPs), measured now."""
    flops = 2.0 * size**3
    return Peaks(*(round(flops / product_seconds((size, size, size), dtype, repeats=repeats) / 1e9, 1)
                   for dtype in (torch.float32, torch.bfloat16)))


def describe(device: torch.device | str = "cpu", setting="auto", *, peaks: bool = True) -> dict:
    """The machine of a run for timings.json: its kind, CPU and threads; the precision the run computes in under
    its bf16 `setting` and why, beside what "auto" picks here; and (CPU, `peaks`) its measured matmul peaks."""
    chosen = choose(device)
    bf16 = resolve_bf16(setting, device)
    record = {"kind": chosen.machine, "cpu": cpu_name(), "threads": torch.get_num_threads(),
              "precision": "bf16" if bf16 else "float32", "auto_precision": chosen.dtype,
              "precision_reason": chosen.reason if setting == "auto" else f"set by the profile (bf16={setting}); "
                                                                         f"auto would pick {chosen}"}
    if peaks and torch.device(device).type == "cpu":
        record["peak_gflops"] = asdict(measured_peaks())
    return record
