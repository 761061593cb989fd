"""The precision a run computes in: bf16 only where the machine multiplies it natively and faster.

The flags are faked both ways: an AVX-512 CPU without bf16 (oneDNN calls bf16 "supported" there and emulates
it) must get float32 without a measurement, a CPU with native flags gets what the measurement says, and the
measurement is made once per machine and kept."""

import pytest
import torch

from ppt_core.machine import precision


@pytest.fixture
def fresh_choice(monkeypatch, tmp_path):
    """choose() with nothing decided yet in this process and an empty cache."""
    monkeypatch.setenv("PPT_CACHE_DIR", str(tmp_path))
    precision._choose.cache_clear()
    yield
    precision._choose.cache_clear()


def fake_cpu(monkeypatch, flags, *, x86=True, speedup=None):
    """A CPU with `flags`; measured_speedup returns `speedup`, or fails the test when it is asked for."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(precision, "is_x86", lambda: x86)
    asked = []

    def measured():
        if speedup is None:
            pytest.fail("the CPU's flags decide here: nothing should be timed")
        asked.append(speedup)
        return speedup

    monkeypatch.setattr(precision, "measured_speedup", measured)
    return asked


ICE_LAKE = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni")


def test_avx512_without_bf16_runs_float32_whatever_onednn_says(fresh_choice, monkeypatch):
    # oneDNN's own flag is True on any AVX-512 CPU: the choice must not read it
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    fake_cpu(monkeypatch, ICE_LAKE)
    chosen = precision.choose("cpu")
    assert chosen.bf16 is False and chosen.dtype == "float32"
    assert "no native bf16" in str(chosen) and chosen.machine == "x86-64 CPU with AVX-512, no bf16"
    assert precision.resolve_bf16("auto", torch.device("cpu")) is False


@pytest.mark.parametrize("flag", precision.NATIVE_BF16_FLAGS)
def test_native_bf16_is_chosen_where_it_measures_faster(fresh_choice, monkeypatch, flag):
    asked = fake_cpu(monkeypatch, (*ICE_LAKE, flag), speedup=4.0)
    chosen = precision.choose("cpu")
    assert chosen.bf16 is True and chosen.speedup == 4.0 and flag in chosen.reason and asked == [4.0]


def test_native_flags_with_kernels_held_back_run_float32(fresh_choice, monkeypatch):
    """Flags say native, but the kernels are capped (ONEDNN_MAX_CPU_ISA=AVX2, say): the measurement decides."""
    fake_cpu(monkeypatch, (*ICE_LAKE, "avx512_bf16", "amx_bf16"), speedup=0.3)
    chosen = precision.choose("cpu")
    assert chosen.bf16 is False and "measured" in chosen.reason


def test_another_architecture_is_measured(fresh_choice, monkeypatch):
    asked = fake_cpu(monkeypatch, ("fp", "asimd", "bf16"), x86=False, speedup=2.0)
    assert precision.choose("cpu").bf16 is True and asked == [2.0]
    precision._choose.cache_clear()
    fake_cpu(monkeypatch, ("fp", "asimd"), x86=False, speedup=1.0)
    assert precision.choose("cpu").bf16 is False


def test_the_measurement_is_made_once_per_machine_and_kept(fresh_choice, monkeypatch):
    asked = fake_cpu(monkeypatch, (*ICE_LAKE, "amx_bf16"), speedup=5.0)
    assert precision.choose("cpu").bf16
    precision._choose.cache_clear()  # a new process on the same machine reads the kept measurement
    assert precision.choose("cpu").bf16 and asked == [5.0]
    assert precision.cache_path().exists()
    # kernels capped by an environment variable: another machine, as far as the measurement goes
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    precision._choose.cache_clear()
    precision.choose("cpu")
    assert asked == [5.0, 5.0]


def test_a_damaged_cache_entry_is_measured_again(fresh_choice, monkeypatch):
    asked = fake_cpu(monkeypatch, (*ICE_LAKE, "amx_bf16"), speedup=3.0)
    path = precision.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert precision.choose("cpu").bf16 and asked == [3.0]


def test_a_cache_that_cannot_be_written_still_gives_an_answer(fresh_choice, monkeypatch, tmp_path):
    fake_cpu(monkeypatch, (*ICE_LAKE, "amx_bf16"), speedup=3.0)
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("PPT_CACHE_DIR", str(blocker))  # a file where the cache folder would be
    assert precision.choose("cpu").bf16


def test_the_real_measurement_compares_the_two_dtypes():
    seconds = precision.product_seconds((64, 64, 64), torch.float32, repeats=3)
    assert 0 < seconds < 1
    peaks = precision.measured_peaks(size=128, repeats=1)
    assert peaks.float32 > 0 and peaks.bf16 > 0 and peaks.of(True) == peaks.bf16


def test_the_machine_of_a_run_is_described(fresh_choice, monkeypatch):
    fake_cpu(monkeypatch, (*ICE_LAKE, "amx_bf16"), speedup=5.0)
    record = precision.describe("cpu", peaks=False)
    assert record["precision"] == record["auto_precision"] == "bf16" and "amx_bf16" in record["precision_reason"]
    assert record["kind"] == precision.machine_kind("cpu") == "x86-64 CPU with AMX" and "peak_gflops" not in record
    forced = precision.describe("cpu", False, peaks=False)  # a profile that sets bf16 computes as it says
    assert forced["precision"] == "float32" and forced["auto_precision"] == "bf16"
    assert forced["precision_reason"].startswith("set by the profile (bf16=False)")


def test_a_bf16_setting_must_be_auto_or_a_bool():
    assert precision.resolve_bf16(True, "cpu") is True and precision.resolve_bf16(False, "cpu") is False
    with pytest.raises(ValueError, match="'auto', True or False"):
        precision.resolve_bf16("yes", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_follows_the_gpus_own_bf16(fresh_choice):
    chosen = precision.choose("cuda")
    assert chosen.bf16 == torch.cuda.is_bf16_supported(including_emulation=False)
